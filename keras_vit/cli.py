"""The `keras-vit` command: `keras-vit train | export | predict | explain | quickstart ...`."""

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "train": ("keras_vit.training.cli", "Train a ViT (see `keras-vit train --help`)."),
    "export": ("keras_vit.export.cli", "Export and verify a trained ViT (see `keras-vit export --help`)."),
    "predict": ("keras_vit.predict", "Top-k classes of image files from a run, a .keras file, an exported artifact or named weights."),
    "explain": ("keras_vit.explain", "Attention-rollout heat maps of image files, one PNG each (see `keras-vit explain --help`)."),
    "quickstart": ("keras_vit.quickstart", "Train the default model on the offline digits data, then export it."),
}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        parser = argparse.ArgumentParser(prog="keras-vit", description="Vision Transformers for Keras.")
        parser.add_argument("command", choices=sorted(SUBCOMMANDS), help="; ".join(f"{k}: {v[1]}" for k, v in SUBCOMMANDS.items()))
        parser.parse_args(argv[:1])
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
