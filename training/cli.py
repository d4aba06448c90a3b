"""`keras-vit train`: the command line of `keras_vit.training.train`.

    keras-vit train                                   # the digits default (offline)
    keras-vit train --model ViTTi16 --dataset cifar100 --epochs 100 --out runs/cifar100
    keras-vit train --config run.yaml --epochs 10     # flags override the file
    keras-vit train --model ViT --model-option hidden_dim=128 --model-option num_layers=6

Every `TrainConfig` field is a flag (`--batch-size`, `--learning-rate`, `--precision`,
`--strategy`, ...). Bad options, data or run folders exit with one clear line (status 2).
"""

import argparse
import ast
import dataclasses
import sys
import types
import typing

from keras_vit import console
from keras_vit.training.config import MODEL_NAMES, TrainConfig, read_config_file
from keras_vit.training.recipe import OPTIMIZERS, PRECISIONS, STRATEGIES

CHOICES = {"model": MODEL_NAMES, "optimizer": OPTIMIZERS, "precision": PRECISIONS, "strategy": STRATEGIES}
HELP = {
    "model": "a named variant, or ViT (configured by --model-option)",
    "model_options": "KEY=VALUE model override (repeatable), e.g. hidden_dim=128, patch_size=4, drop_path_rate=0.1",
    "weights": "checkpoint to fine-tune from (needs keras_vit.weights)",
    "image_size": "model input side (default: 16 for ViT, 224 for variants)",
    "dataset": "'digits' (offline), a TFDS name ('cifar10', 'tfds:NAME'), 'folder:PATH' or a folder",
    "data_dir": "TFDS data directory",
    "batch_size": "global batch size (split across replicas)",
    "test_fraction": "the test share of train for an image folder without test/ or a TFDS dataset without a labelled test or validation split",
    "validation_fraction": "hold out this share of train for validation when the dataset has no validation split (0: none)",
    "validate_on_test": "choose the checkpoint on the test split (its accuracy is then optimistic; the run folder says so)",
    "crop_scale_min": "smallest area share of the random resized crop",
    "randaugment": "keras-cv RandAugment magnitude in [0, 1]",
    "mixup": "keras-cv MixUp alpha",
    "cutmix": "keras-cv CutMix alpha",
    "warmup_epochs": "linear warm-up length (then cosine decay)",
    "clipnorm": "global-norm gradient clipping (0: off)",
    "jit_compile": "XLA for the whole training step; auto (default): the faster path for the backend",
    "ema_momentum": "keep an EMA of the weights (e.g. 0.998); the final model gets the average",
    "precision": "mixed_bfloat16 on CPU/TPU, mixed_float16 on GPU",
    "strategy": "multi_worker reads TF_CONFIG",
    "early_stopping": "patience in epochs on the validation loss",
    "verbose": "0 silent, 1 progress bars, 2 one line per epoch; 3: as 1, and TensorFlow's start-up log lines",
    "steps_per_epoch": "cap the steps per epoch (quick checks)",
    "out": "run folder",
    "overwrite": "replace a finished run in --out",
}


def _bool(text):
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _optional_bool(text):
    return None if text.lower() in ("auto", "none") else _bool(text)


def _optional(kind):
    def parse(text):
        return None if text.lower() in ("none", "null", "off") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _model_option(text):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass  # a plain string, e.g. pooling=gap
    return key, value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-vit train", description="Train a Vision Transformer; writes one run folder."
    )
    parser.add_argument("--config", help="YAML or JSON file of options (flags override it)")
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kwargs = {"dest": field.name, "default": argparse.SUPPRESS, "help": HELP.get(field.name)}
        if field.name == "model_options":
            parser.add_argument("--model-option", action="append", type=_model_option, **kwargs)
            continue
        kind = hints[field.name]
        optional = typing.get_origin(kind) in (typing.Union, types.UnionType)  # Optional[X] or X | None
        base = typing.get_args(kind)[0] if optional else kind
        if base is bool:
            kwargs["type"] = _optional_bool if optional else _bool
            kwargs["nargs"] = "?"
            kwargs["const"] = True
            kwargs["metavar"] = "BOOL|auto" if optional else "BOOL"
        else:
            kwargs["type"] = _optional(base) if optional else base
        if field.name in CHOICES:
            kwargs["choices"] = CHOICES[field.name]
        parser.add_argument(flag, **kwargs)
    return parser


def config_from_args(argv):
    """A `TrainConfig` from command-line arguments (and the --config file they name)."""
    args = vars(build_parser().parse_args(argv))
    values = read_config_file(args.pop("config")) if args.get("config") else {}
    args.pop("config", None)
    if "model_options" in args:
        values["model_options"] = {**(values.get("model_options") or {}), **dict(args.pop("model_options"))}
    values.update(args)
    if "model" in args and args["model"] != "ViT" and "model_options" not in values:
        values["model_options"] = {}
    return TrainConfig.from_dict(values)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        config = config_from_args(argv)
        from keras_vit.training.train import train  # imports TensorFlow: after parsing

        result = train(config)
    except ValueError as error:
        console.error("train", error)
        return 2
    metrics = result["metrics"]
    if "test_accuracy" in metrics:
        print(f"test accuracy {metrics['test_accuracy']:.4f} ({metrics['model']}); run folder {result['run_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
