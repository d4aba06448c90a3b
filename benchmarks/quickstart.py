"""Runs the quickstart (`keras-vit quickstart`, training + export) in a fresh process and
records its test accuracy, wall time and training images/s in docs/benchmarks.md.

    .venv/bin/python benchmarks/quickstart.py [--out runs/benchmark-quickstart] [--note TEXT]
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from report import facts_markdown, machine_facts, markdown_table, write_section  # noqa: E402

from keras_vit import run_files  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
RECORDED_OPTIONS = ("epochs", "batch_size", "learning_rate", "weight_decay", "label_smoothing", "crop_scale_min", "ema_momentum")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "runs" / "benchmark-quickstart"))
    parser.add_argument("--note", default="", help="e.g. the machine's load while it ran")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    keras_vit = pathlib.Path(sys.executable).with_name("keras-vit")
    command = [str(keras_vit), "quickstart", "--out", str(out)]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    wall = time.perf_counter() - start
    metrics = json.loads((out / run_files.METRICS_FILE).read_text())
    config = json.loads((out / "config.json").read_text())
    row = {
        "test accuracy": f"{metrics['test_accuracy']:.4f}",
        "chosen epoch": metrics["chosen_epoch"],
        "test images": metrics["num_test"],
        "epochs": metrics["epochs_run"],
        "fit time (s)": f"{metrics['fit_seconds_this_session']:.0f}",
        "quickstart wall time (s)": f"{wall:.0f}",
        "train images/s": f"{metrics['train_images_per_second']:.0f}",
        "export": "yes" if (out / "export").exists() else "not run",
        "load avg at start": f"{load_before:.1f}",
    }
    model = config["model_config"]
    markdown = "\n\n".join(
        [
            "## Quickstart (`keras-vit quickstart`, digits)",
            f"Made by `benchmarks/quickstart.py`: `{' '.join(command[1:])}` in a fresh process "
            "(install excluded; wall time includes TensorFlow start-up, data, training, evaluation "
            "of the run's model and the export step when present). Images/s: training images "
            "per second of the epochs after the first (tracing and XLA compilation excluded).",
            f"Model: ViT {model['num_layers']} layers, width {model['hidden_dim']}, {model['num_heads']} heads, "
            f"MLP {model['mlp_dim']}, {model['image_size'][0]}x{model['image_size'][1]} input, "
            f"patch {model['patch_size'][0]}, pooling {model['pooling']}, drop path {model['drop_path_rate']}; "
            f"options: {json.dumps({k: config['options'][k] for k in RECORDED_OPTIONS})}.",
            markdown_table([row], list(row)),
            (f"Note: {args.note}\n\n" if args.note else "") + facts_markdown(machine_facts()),
        ]
    )
    write_section("quickstart", markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
