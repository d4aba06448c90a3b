"""The int8 exports' accuracy on trained models: the quickstart model and a ViT-Ti-width model
trained on the digits at 32 px, each exported with every quantization and verified on the
digits test split. Writes the "quantized-accuracy" section of docs/benchmarks.md.

    python benchmarks/quantized.py [--runs runs]    # trains the two runs when they are missing

The speed of the same artifacts at 224 px (ViT-Ti/16, ViT-B/16) is in `benchmarks/run.py`'s
quantized-inference table.
"""

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from report import facts_markdown, machine_facts, markdown_table, write_section  # noqa: E402

from keras_vit import console, run_files  # noqa: E402
from keras_vit.export import formats  # noqa: E402

# The quickstart's own options, and a ViT-Ti-width model (the size) on the digits at 32 px.
RUNS = {
    "quickstart": {},
    "digits-ti32": dict(
        # 20 steps an epoch: the quickstart's average (0.998) would still hold 14% of the initial
        # weights after 1000 steps (`recipe.ema_too_slow`); 0.99 holds none.
        image_size=32, batch_size=64, epochs=50, ema_momentum=0.99,
        model_options=dict(patch_size=4, hidden_dim=192, num_layers=12, num_heads=3, mlp_dim=768, pooling="gap", drop_path_rate=0.1),
    ),
}
QUANTIZATIONS = ",".join(formats.QUANTIZATIONS)  # every one, full_int8 included


def log(message):
    console.log("benchmark", message)


def trained_run(folder, options):
    """The run folder, trained first when it holds no finished run."""
    from keras_vit.quickstart import QUICKSTART_OPTIONS
    from keras_vit.training.train import train

    if not (folder / run_files.METRICS_FILE).is_file():
        log(f"training {folder}")
        train({**QUICKSTART_OPTIONS, **options, "out": str(folder), "overwrite": True, "verbose": 2})
    return folder


def accuracy_rows(name, run):
    from keras_vit.export import pipeline

    log(f"exporting {run} with {QUANTIZATIONS}")
    report = pipeline.export(run, run / "export-quantized", quantizations=QUANTIZATIONS, latency_repeats=20)
    rows = {row["artifact"]: row for row in report["artifacts"]}
    keras_row, tflite_float = rows["keras"], rows["tflite_float32"]
    config = json.loads((run / "config.json").read_text())["model_config"]
    model = f"{name} ({config['num_layers']} x {config['hidden_dim']}, {config['image_size'][0]} px)"
    table = []
    for artifact, row in rows.items():
        if row["quantization"] in ("none", "float16") and artifact not in ("keras", "tflite_float32", "onnx_optimized"):
            continue
        table.append(
            {
                "model": model,
                "artifact": artifact,
                "accuracy": f"{row['accuracy']:.2%}" if row.get("accuracy") is not None else "-",
                "vs Keras (points)": f"{100 * (row['accuracy'] - keras_row['accuracy']):+.2f}" if row.get("accuracy") is not None else "-",
                "top-1 agreement": f"{row['top1_agreement']:.2%}" if row.get("top1_agreement") is not None else "-",
                "size vs float32 TFLite": f"{tflite_float['size_bytes'] / row['size_bytes']:.1f}x smaller" if artifact != "keras" else "-",
                "verified": "reference" if artifact == "keras" else ("yes" if row["passed"] else "**FAILED**"),
            }
        )
    return table, report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs", help="where the two runs are (trained when missing)")
    args = parser.parse_args(argv)
    rows, notes = [], []
    for name, options in RUNS.items():
        table, report = accuracy_rows(name, trained_run(pathlib.Path(args.runs) / name, options))
        rows += table
        speed = report["speed"]
        notes.append(
            f"- {name}: fastest verified artifact "
            + "; ".join(f"batch {key[5:]}: {value['artifact']}" for key, value in speed["fastest"].items())
            + (f"; slower than float32 of their runtime: {', '.join(speed['slower_than_float32'])}" if speed["slower_than_float32"] else "")
        )
    columns = ["model", "artifact", "accuracy", "vs Keras (points)", "top-1 agreement", "size vs float32 TFLite", "verified"]
    text = "\n\n".join(
        [
            "## Quantized exports: accuracy on trained models",
            "Made by `python benchmarks/quantized.py`: two runs trained on the digits (the quickstart; a ViT-Ti-width "
            "model, 12 blocks of width 192, at 32 px), each exported with every quantization "
            f"(`--quantize {QUANTIZATIONS}`) and verified on the 360 test digits (int8 rule: top-1 agreement >= 98%, "
            "accuracy at most 1 point below Keras'). Sizes of such small models include what does not shrink (position "
            "embedding, quantization parameters); at 224 px see the quantized-inference table.",
            markdown_table(rows, columns),
            "\n".join(notes),
            facts_markdown(machine_facts()),
        ]
    )
    write_section("quantized-accuracy", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
