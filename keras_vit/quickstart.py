"""`keras-vit quickstart`: train the default small ViT on the offline digits, then export it.

    keras-vit quickstart --out runs/quickstart [--overwrite] [--epochs N]

Needs no download: the data are the 8x8 handwritten digits that ship with scikit-learn.
The training options are `TrainConfig`'s defaults (see keras_vit/training/config.py) plus
an exponential moving average of the weights (`QUICKSTART_OPTIONS`): `keras-vit train
--ema-momentum 0.998` trains the same model.
"""

import argparse
import json
import pathlib
import sys
import time

from keras_vit import console

# On top of TrainConfig's defaults: a moving average of the weights steadies the run's
# accuracy over seeds (docs/benchmarks.md, "Quickstart").
QUICKSTART_OPTIONS = {"ema_momentum": 0.998}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="keras-vit quickstart", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/quickstart", help="run folder (default runs/quickstart)")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    parser.add_argument("--epochs", type=int, help="override the default number of epochs")
    parser.add_argument("--skip-export", action="store_true", help="train only")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up log lines")
    args = parser.parse_args(argv)

    from keras_vit.training.config import TrainConfig
    from keras_vit.training.train import train

    run_dir = pathlib.Path(args.out)
    options = {**QUICKSTART_OPTIONS, "out": str(run_dir), "overwrite": args.overwrite}
    if args.epochs:
        options["epochs"] = args.epochs
    start = time.perf_counter()
    try:
        result = train(TrainConfig(**options))
    except ValueError as error:
        console.error("quickstart", error)
        return 2
    train_seconds = time.perf_counter() - start

    export_status, export_accuracy = "skipped (--skip-export)", None
    if not args.skip_export:
        console.log("quickstart", "exporting the trained model")
        from keras_vit.export import cli as export_cli
        from keras_vit.export.formats import REPORT_FILE

        code = export_cli.main([str(run_dir), "--out", str(run_dir / "export")])
        export_status = f"written to {run_dir / 'export'}" if not code else f"failed (exit status {code})"
        report_path = run_dir / "export" / REPORT_FILE
        if report_path.is_file():  # the export's own measure of the model it read (the reference row)
            rows = json.loads(report_path.read_text())["artifacts"]
            export_accuracy = next(row["accuracy"] for row in rows if row["format"] == "keras")

    metrics = result["metrics"]
    exported = "" if export_accuracy is None else f"; the export measured {export_accuracy:.4f} for the same model"
    print(
        "\nQuickstart summary\n"
        f"  run folder:     {run_dir}\n"
        f"  model:          {run_dir / metrics['model']} (epoch {metrics['chosen_epoch']}, {metrics['chosen_by']})\n"
        f"  test accuracy:  {metrics['test_accuracy']:.4f} on {metrics['num_test']} held-out digits{exported}\n"
        f"  training time:  {train_seconds:.0f} s ({metrics['train_images_per_second']:.0f} images/s)\n"
        f"  export:         {export_status}\n"
        f"  total time:     {time.perf_counter() - start:.0f} s"
    )
    return 0 if export_status.startswith(("written", "skipped")) else 1


if __name__ == "__main__":
    sys.exit(main())
