"""Shared by every benchmark script: machine facts and one section of docs/benchmarks.md.

Each script owns one section, delimited by `<!-- BEGIN name -->` / `<!-- END name -->`, so
scripts can be re-run on their own without clobbering the others' tables.
"""

import datetime
import os
import pathlib
import re

from keras_vit.system import cpu_flags, cpu_model, package_versions

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nWritten by the scripts under `benchmarks/`; each section says how it was made.\n"


def machine_facts():
    """A dict of what a reader needs to compare figures: machine, versions, date."""
    import keras
    import numpy
    import tensorflow as tf

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        **package_versions(()),  # python
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or "default",
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads() or "default",
    }


def round_ratios(values, reference):
    """Per-round times of a path and of its reference (equal-length sequences) -> the median
    and (q25, q75) of their round-by-round ratios.

    Each round times both within seconds, so a slow spell of the (shared) host hits both
    sides of a round's ratio; the ratio of overall medians would mix rounds.
    """
    import numpy as np

    ratios = np.asarray(values, float) / np.asarray(reference, float)
    q25, median, q75 = np.percentile(ratios, [25, 50, 75])
    return float(median), (float(q25), float(q75))


def facts_markdown(facts):
    return "\n".join(f"- {key}: {value}" for key, value in facts.items())


def markdown_table(rows, columns):
    """rows: list of dicts; columns: list of keys (the header)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def write_section(name, markdown, doc=DOC):
    """Replaces (or appends) the section `name` of docs/benchmarks.md with `markdown`."""
    doc = pathlib.Path(doc)
    text = doc.read_text() if doc.exists() else HEADER
    block = f"<!-- BEGIN {name} -->\n{markdown.strip()}\n<!-- END {name} -->"
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    tmp = doc.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(doc)
