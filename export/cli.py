"""`keras-vit export RUN_DIR_OR_MODEL [--formats ...] [--quantize ...] [--out DIR]`.

With no --formats / --quantize, exports every format and the default quantizations, then
prints the report table. Exit codes: 0 all verified, 1 an artifact failed verification,
2 bad input (message on stderr, no trace).
"""

import argparse
import pathlib
import sys

from keras_vit import console
from keras_vit.export.formats import DEFAULT_QUANTIZATIONS, FORMATS, QUANTIZATIONS


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-vit export",
        description="Export a keras_vit model to SavedModel, TFLite/LiteRT and ONNX; verify every "
        "artifact against the Keras model and write export_report.json / .md.",
    )
    parser.add_argument("source", metavar="RUN_DIR_OR_MODEL", help="a training run folder or a .keras file")
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated, from {','.join(FORMATS)} (default: all)")
    parser.add_argument(
        "--quantize",
        default=",".join(DEFAULT_QUANTIZATIONS),
        help=f"comma-separated, from {','.join(QUANTIZATIONS)} (default: {','.join(DEFAULT_QUANTIZATIONS)}): "
        "the TFLite variants; int8 also gives model_int8.onnx; full_int8 (every op int8, for "
        "integer-only accelerators) is slow on a CPU; SavedModel is float32",
    )
    parser.add_argument("--out", default=None, help="output folder (default: RUN_DIR/export, or MODEL_export next to a .keras file)")
    parser.add_argument(
        "--calibration",
        default=None,
        help="int8 calibration images: a run folder, a .npy of uint8 [N,H,W,3] or an image folder "
        "(default: the run's train split; required for int8 from a bare .keras file)",
    )
    parser.add_argument("--num-images", type=int, default=1000, help="at most this many verification images (default 1000)")
    parser.add_argument("--latency-repeats", type=int, default=20, help="timed runs per latency figure (default 20)")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up and converter log lines")
    return parser


def default_out(source):
    source = pathlib.Path(source)
    return source / "export" if source.is_dir() else source.with_name(source.stem + "_export")


def main(argv=None):
    args = build_parser().parse_args(argv)
    from keras_vit.export import pipeline
    from keras_vit.export.report import markdown
    from keras_vit.export.source import ExportError

    if args.num_images < 8:
        console.error("export", "--num-images must be at least 8")
        return 2
    try:
        result = pipeline.export(
            args.source,
            args.out or default_out(args.source),
            formats=args.formats,
            quantizations=args.quantize,
            calibration=args.calibration,
            num_images=args.num_images,
            latency_repeats=args.latency_repeats,
        )
    except ExportError as error:
        console.error("export", error)
        return 2
    print()
    print(markdown(result))
    if not result["passed"]:
        print("keras-vit export: some artifacts failed verification (see above); they were not written.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
