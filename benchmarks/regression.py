"""The plain ViT at an earlier commit against the working tree: did new code slow it down?

    python benchmarks/regression.py --base 3cc2856    # 8 rounds, about 25 minutes
    python benchmarks/regression.py --base HEAD --quick

The base commit's `keras_vit/` is extracted (`git archive`) to a temporary folder, and the
working tree's copied next to it, so that the two sides differ only in their code. Each round
starts one child process per side, in alternating order (base first in odd rounds), and each
child builds the same plain ViT models with its side's code and times the same paths:
ViT-Ti/16 and ViT-B/16 inference at 224 (tf.function, and Ti with XLA) and the training step
of `peers.TRAINING_STEP` (train_on_batch, without and with XLA). The figure is the time ratio
working tree / base per round (median and IQR over rounds). The models are `peers.py`'s, built
by each side's model library (`keras_vit.VisionTransformer`, `keras_vit.config.MODEL_SIZES`),
so any commit with those two names can be the base. Writes the "regression" section of docs/benchmarks.md.
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = pathlib.Path(__file__).resolve().parents[1]
# (path name, model size, image size, patch size, batch, what is timed, XLA)
PATHS = [
    ("ViT-Ti/16 b1 tf.function", "Ti", 224, 16, 1, "inference", False),
    ("ViT-Ti/16 b1 tf.function+XLA", "Ti", 224, 16, 1, "inference", True),
    ("ViT-B/16 b8 tf.function", "B", 224, 16, 8, "inference", False),
    ("training step (Ti, 32 px, b64)", "Ti", 32, 4, 64, "training", False),
    ("training step + XLA", "Ti", 32, 4, 64, "training", True),
]
QUICK_PATHS = PATHS[:1]
# Per path and child, after a warm-up: timed calls for at least this long (and 5 calls).
MIN_SECONDS = {"inference": 1.5, "training": 3.0}


def log(message):
    print(f"[benchmark] {message}", file=sys.stderr, flush=True)


def child(path_names):
    """Runs in a child process: times each named path with whichever keras_vit is on the path;
    prints {"keras_vit": its file, "times": {path: [seconds]}, "parameters": {path: count}}."""
    import keras
    import numpy as np
    import peers  # builds the models with whichever keras_vit is on the path
    import tensorflow as tf

    import keras_vit

    times, parameters = {}, {}
    for name, size, image_size, patch, batch, kind, xla in PATHS:
        if name not in path_names:
            continue
        keras.utils.set_random_seed(0)
        if kind == "inference":
            model = peers.keras_vit_model(size, image_size, patch)
            images = np.random.RandomState(0).uniform(-1, 1, (batch, image_size, image_size, 3)).astype("float32")
            forward = tf.function(lambda x, model=model: model(x, training=False), jit_compile=xla)
            run = lambda forward=forward, images=images: forward(images).numpy()  # noqa: E731
        else:  # peers.TRAINING_STEP, with Keras' AdamW (a base commit may predate keras_vit's)
            step = peers.TRAINING_STEP
            assert (size, image_size, patch, batch) == (step["size"], step["image_size"], step["patch_size"], step["batch"]), name
            model, images, labels = peers.training_step("keras_vit", jit_compile=xla)
            run = lambda model=model, images=images, labels=labels: model.train_on_batch(images, labels)  # noqa: E731
        for _ in range(3):
            run()
        samples, started = [], time.perf_counter()
        while len(samples) < 5 or time.perf_counter() - started < MIN_SECONDS[kind]:
            start = time.perf_counter()
            run()
            samples.append(time.perf_counter() - start)
        times[name], parameters[name] = samples, model.count_params()
    print(json.dumps({"keras_vit": keras_vit.__file__, "times": times, "parameters": parameters}))


def extract(base, folder):
    """The base commit's keras_vit/ under `folder`; returns the commit's full hash."""
    commit = subprocess.run(["git", "rev-parse", base], cwd=REPO, capture_output=True, text=True)
    if commit.returncode != 0:
        raise SystemExit(f"Unknown commit {base!r}: {commit.stderr.strip()}")
    archive = subprocess.run(["git", "archive", base, "keras_vit"], cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return commit.stdout.strip()


def run_child(code_root, path_names):
    env = {**os.environ, "PYTHONPATH": str(code_root), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(path_names)],
        env=env, capture_output=True, text=True, cwd=code_root,
    )
    if result.returncode != 0:
        raise SystemExit(f"The child process for {code_root} failed:\n{result.stderr[-3000:]}")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    if not pathlib.Path(out["keras_vit"]).resolve().is_relative_to(pathlib.Path(code_root).resolve()):
        raise SystemExit(f"The child for {code_root} imported keras_vit from {out['keras_vit']}.")
    return out


def compare(samples):
    """{side: {path: [per-round medians]}} -> table rows of medians and per-round ratios."""
    import numpy as np
    from report import round_ratios

    rows = []
    for name in samples["base"]:
        base, head = samples["base"][name], samples["head"][name]
        median, (q25, q75) = round_ratios(head, base)
        rows.append({
            "path": name,
            "base ms": f"{np.median(base) * 1000:.1f}",
            "working tree ms": f"{np.median(head) * 1000:.1f}",
            "ratio": f"{median:.3f}",
            "ratio IQR": f"{q25:.3f}-{q75:.3f}",
        })
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="the commit to compare against (default: HEAD)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="one path (ViT-Ti/16 b1), 1 round")
    parser.add_argument("--doc", default=None, help="markdown file to write (default docs/benchmarks.md)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(json.loads(args.child))

    sys.path.insert(0, str(REPO / "benchmarks"))
    from report import DOC, facts_markdown, machine_facts, markdown_table, write_section

    paths = [p[0] for p in (QUICK_PATHS if args.quick else PATHS)]
    rounds = 1 if args.quick else args.rounds
    samples = {"base": {p: [] for p in paths}, "head": {p: [] for p in paths}}
    with tempfile.TemporaryDirectory() as folder:
        roots = {"base": pathlib.Path(folder) / "base", "head": pathlib.Path(folder) / "head"}
        roots["base"].mkdir()
        commit = extract(args.base, roots["base"])
        shutil.copytree(REPO / "keras_vit", roots["head"] / "keras_vit", ignore=shutil.ignore_patterns("__pycache__"))
        for round_index in range(rounds):
            order = ("base", "head") if round_index % 2 == 0 else ("head", "base")
            for side in order:
                log(f"round {round_index + 1}/{rounds}: {side}")
                out = run_child(roots[side], paths)
                for path, times in out["times"].items():
                    samples[side][path].append(sorted(times)[len(times) // 2])
                if side == "head":
                    head_parameters = out["parameters"]
                else:
                    base_parameters = out["parameters"]
    if head_parameters != base_parameters:
        raise SystemExit(f"The two sides built different models: {base_parameters} vs {head_parameters}.")
    rows = compare(samples)
    table = markdown_table(rows, ["path", "base ms", "working tree ms", "ratio", "ratio IQR"])
    print(table)
    markdown = (
        "## Regression check: the plain ViT against an earlier commit\n\n"
        f"`python benchmarks/regression.py --base {args.base}{' --quick' if args.quick else ''}`: base "
        f"`{commit[:7]}`, {rounds} round(s), each side in its own process per round (alternating "
        "order), the same models (equal parameter counts checked). ratio: working tree / base, "
        "per round.\n\n"
        f"{facts_markdown(machine_facts())}\n\n{table}\n"
    )
    write_section("regression", markdown, doc=args.doc or DOC)
    return 0


if __name__ == "__main__":
    sys.exit(main())
