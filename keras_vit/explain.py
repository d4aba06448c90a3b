"""`keras-vit explain`: where a ViT looks, one PNG per image.

    keras-vit explain runs/digits photos/ --out explained/ --top-k 3 --layers
    written, errors = keras_vit.explain.explain("runs/digits", ["photos/"], "explained/")

Each PNG shows the image as the model saw it (decoded and resized by the image path that
`keras-vit predict` uses), the attention rollout (Abnar & Zuidema, 2020; see
`keras_vit.attention`) normalised to [0, 1] per image and upsampled over it, and the top-k
classes with their probabilities. `--layers` adds one small map per block: its attention
from the class token to the patches, averaged over the heads (without a class token, the
mean of the patch tokens' rows).

Attention needs the Keras model: SOURCE is a run folder, a `.keras` file or
`--model/--weights`; an exported SavedModel / TFLite / ONNX artifact is refused (exit 2).
Unreadable files are reported and skipped (exit 1).
"""

import argparse
import os
import pathlib
import sys
import tempfile

import numpy as np

from keras_vit import console
from keras_vit.predict import (
    PredictError,
    Predictor,
    add_source_arguments,
    check_counts,
    image_batches,
    images_to_process,
    load_from_arguments,
    load_predictor,
    report_errors,
    source_runtime,
    summary,
)

COMMAND = "explain"
DEFAULT_BATCH_SIZE = 8  # attention maps are [B, heads, T, T] per block
# The figure, in inches at DPI dots per inch: two PANEL-wide panels (image, heat map over it),
# a text band above (a line per label), and with --layers a grid of BLOCK_COLUMNS block maps.
PANEL = 3.0
DPI = 100
LINE = 0.22
MARGIN = 0.15
BLOCK_COLUMNS = 4
BLOCK_LABEL = 0.25
FLAT = 1e-5  # relative spread below which a heat map counts as flat


# ----------------------------------------------------------------------------- heat maps


def normalise_maps(maps):
    """float [B, ...] -> float32 [B, ...] scaled to [0, 1] per image (min to 0, max to 1). A
    flat map (spread within FLAT of its size: round-off of equal values, which scaling
    would blow up into noise) becomes 0: nothing stands out."""
    maps = np.asarray(maps, np.float64)
    flat = maps.reshape(len(maps), -1)
    low, high = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    is_flat = (high - low) <= FLAT * np.maximum(np.abs(high), np.abs(low))
    scaled = np.where(is_flat, 0.0, (flat - low) / np.where(is_flat, 1.0, high - low))
    return scaled.reshape(maps.shape).astype(np.float32)


def block_maps(maps, num_prefix_tokens, class_token, grid_size):
    """Per-block attention maps (`keras_vit.attention_maps`) -> float32 [B, blocks, grid_h,
    grid_w]: the class token's attention to the patches, or without a class token the mean
    of the patch tokens' rows, averaged over the heads; each normalised to [0, 1]."""
    blocks = []
    for attention in maps:
        fused = np.asarray(attention, np.float64).mean(axis=1)  # [B, T, T]
        patches = fused[:, 0, num_prefix_tokens:] if class_token else fused[:, num_prefix_tokens:, num_prefix_tokens:].mean(axis=1)
        blocks.append(normalise_maps(patches.reshape(len(fused), *grid_size)))
    return np.stack(blocks, axis=1)


def heat_maps(model, images, head_fusion="mean", discard_ratio=0.0, layers=False):
    """Normalised images float32 [B, H, W, 3] -> (rollout float32 [B, grid_h, grid_w] in
    [0, 1] per image, block maps [B, blocks, grid_h, grid_w] (see `block_maps`) or None)."""
    from keras_vit.attention import attention_maps, rollout
    from keras_vit.config import config_of

    config = config_of(model)
    maps = attention_maps(model, images)
    relevance = rollout(maps, config.num_prefix_tokens, config.class_token, config.grid_size, head_fusion, discard_ratio)
    blocks = block_maps(maps, config.num_prefix_tokens, config.class_token, config.grid_size) if layers else None
    return normalise_maps(relevance), blocks


def upsample(heat, size):
    """float [grid_h, grid_w] -> float32 [height, width] (bilinear), `size` (height, width)."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.asarray(heat, np.float32)).resize(size[::-1], Image.BILINEAR), np.float32)


# ----------------------------------------------------------------------------- figures


def figure_size(num_lines, num_blocks=0):
    """(width, height) in inches of a figure with `num_lines` text lines and `num_blocks`
    block maps (0: no --layers)."""
    cell = 2 * PANEL / BLOCK_COLUMNS
    rows = -(-num_blocks // BLOCK_COLUMNS)
    return 2 * PANEL, MARGIN + num_lines * LINE + MARGIN + PANEL + rows * (cell + BLOCK_LABEL)


def draw(image, heat, lines, blocks=None):
    """A matplotlib `Figure` (Agg canvas): `lines` of text on top, `image` uint8 [H, W, 3] and
    `heat` [H, W] in [0, 1] over it; with `blocks` [L, grid_h, grid_w], their maps below."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    num_blocks = 0 if blocks is None else len(blocks)
    width, height = figure_size(len(lines), num_blocks)
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)

    def axes(left, top, size):  # in inches from the top-left corner
        ax = figure.add_axes([left / width, 1 - (top + size) / height, size / width, size / height])
        ax.set_axis_off()
        return ax

    for i, line in enumerate(lines):
        figure.text(MARGIN / width, 1 - (MARGIN + (i + 0.8) * LINE) / height, line, fontsize=9, family="monospace",
                    weight="bold" if i == 0 else "normal")
    top = MARGIN + len(lines) * LINE + MARGIN
    axes(0.05 * PANEL, top, 0.9 * PANEL).imshow(image)
    overlay = axes(1.05 * PANEL, top, 0.9 * PANEL)
    overlay.imshow(image)
    overlay.imshow(heat, cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
    cell = 2 * PANEL / BLOCK_COLUMNS
    for index in range(num_blocks):
        row, column = divmod(index, BLOCK_COLUMNS)
        ax = axes(column * cell + 0.05 * cell, top + PANEL + row * (cell + BLOCK_LABEL) + BLOCK_LABEL, 0.9 * cell)
        ax.imshow(blocks[index], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"block {index + 1}", fontsize=8)
    return figure


def write_png(figure, path):
    """Saves `figure` as a PNG at `path` atomically: a temporary file in the same folder,
    then renamed over `path` (a reader never sees half a file)."""
    path = pathlib.Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            figure.savefig(stream, format="png", dpi=DPI)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it private; give it a new file's mode
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def png_name(image_path, used):
    """`cat.png` for `photos/cat.jpg`, or `cat_2.png`, `cat_3.png`, ... when `used` (lower-case
    names already given) has it; the name is added to `used`."""
    stem = pathlib.Path(image_path).stem or "image"
    name, number = f"{stem}.png", 1
    while name.lower() in used:
        number += 1
        name = f"{stem}_{number}.png"
    used.add(name.lower())
    return name


# ----------------------------------------------------------------------------- explain


def refuse_artifact(source, runtime):
    """Raises `PredictError` unless `runtime` is "keras": attention needs the Keras model."""
    if runtime != "keras":
        raise PredictError(
            f"{source} is an exported {runtime} artifact: explain reads the attention of the Keras model; "
            "give the training run folder, its .keras file or --model/--weights."
        )


def explain(source, paths, out_dir, top_k=3, layers=False, head_fusion="mean", discard_ratio=0.0, batch_size=DEFAULT_BATCH_SIZE, log=None):
    """One PNG per readable image in `paths` (files and folders), written to `out_dir`.

    Args:
        source: a `Predictor` of a Keras model, a keras_vit model, or a run folder / `.keras`
            path (see `keras_vit.predict.load_predictor`).
        top_k: labels in each figure's text.
        layers: add the per-block attention maps.
        head_fusion, discard_ratio: the rollout's options (`keras_vit.attention.rollout`).
        log: None, or a function called with a line per file skipped and per batch.

    Returns:
        (written, errors): written, one per readable image, in order: `{"file", "png",
        "predictions"}` (predictions as `keras_vit.predict.predict` gives them); errors:
        `{"file", "error"}` per file that could not be read.

    Raises `PredictError` for bad input (an exported artifact, no images, bad options).
    """
    from keras_vit.attention import HEAD_FUSIONS
    from keras_vit.labels import decode_predictions

    check_counts(top_k=top_k, batch_size=batch_size)
    if head_fusion not in HEAD_FUSIONS:
        raise PredictError(f"unknown --head-fusion {head_fusion!r}: expected one of {', '.join(HEAD_FUSIONS)}.")
    if not 0.0 <= discard_ratio < 1.0:
        raise PredictError(f"--discard-ratio must be in [0, 1), got {discard_ratio}.")
    if isinstance(source, (str, pathlib.Path)):
        refuse_artifact(source, source_runtime(source))
    predictor = source if isinstance(source, Predictor) else load_predictor(source)
    refuse_artifact(predictor.description, predictor.runtime)
    log = log or (lambda message: None)
    files, errors = images_to_process(paths)
    report_errors(errors, log)
    out_dir = pathlib.Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise PredictError(f"--out {out_dir} is a file; give a folder.")
    out_dir.mkdir(parents=True, exist_ok=True)
    written, used, num_batches = [], set(), -(-len(files) // batch_size)
    for index, (readable, images, batch_errors) in enumerate(image_batches(predictor, files, batch_size)):
        report_errors(batch_errors, log)
        errors += batch_errors
        if readable:
            x = predictor.normalise(images)
            probabilities = predictor.probabilities(x)
            heat, blocks = heat_maps(predictor.model, x, head_fusion, discard_ratio, layers)
            tops = decode_predictions(probabilities, top=top_k, labels=predictor.class_names)
            for i, (path, top) in enumerate(zip(readable, tops)):
                lines = [str(path)] + [f"{rank}. {name}  {score:.4f}" for rank, (_, name, score) in enumerate(top, start=1)]
                png = out_dir / png_name(path, used)
                write_png(draw(images[i], upsample(heat[i], images.shape[1:3]), lines, None if blocks is None else blocks[i]), png)
                predictions = [{"class_id": c, "name": name, "probability": score} for c, name, score in top]
                written.append({"file": str(path), "png": str(png), "predictions": predictions})
        log(f"batch {index + 1}/{num_batches}: {min((index + 1) * batch_size, len(files))}/{len(files)} files")
    return written, errors


# ----------------------------------------------------------------------------- command line


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-vit explain",
        usage="keras-vit explain SOURCE IMAGES... --out DIR [options]\n"
        "       keras-vit explain --model VARIANT --weights NAME_OR_PATH [--image-size N] IMAGES... --out DIR [options]",
        description="Attention-rollout heat maps of image files, one PNG each in --out. SOURCE: a training run "
        "folder or a .keras file (attention needs the Keras model, not an exported artifact). IMAGES: files and "
        "folders (searched recursively for image files).",
    )
    add_source_arguments(parser, DEFAULT_BATCH_SIZE)
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs (one per image, named after it)")
    parser.add_argument("--top-k", type=int, default=3, metavar="K", help="labels shown per image (default 3)")
    parser.add_argument("--layers", action="store_true", help="add each block's attention map (class token to patches)")
    parser.add_argument("--head-fusion", default="mean", choices=("mean", "max", "min"), help="how the rollout fuses the heads (default mean)")
    parser.add_argument("--discard-ratio", type=float, default=0.0, metavar="R", help="the rollout drops this share of the lowest attentions (default 0)")
    return parser


def main(argv=None):
    args = build_parser().parse_intermixed_args(argv)
    log = lambda message: console.log(COMMAND, message)
    try:
        check_counts(top_k=args.top_k, batch_size=args.batch_size)
        if args.model is None and args.weights is None and args.paths:
            refuse_artifact(args.paths[0], source_runtime(args.paths[0]))
        predictor, paths = load_from_arguments(args, COMMAND)
        written, errors = explain(
            predictor, paths, args.out, top_k=args.top_k, layers=args.layers, head_fusion=args.head_fusion,
            discard_ratio=args.discard_ratio, batch_size=args.batch_size, log=log,
        )
    except PredictError as error:
        console.error(COMMAND, error)
        return 2
    for item in written:
        print(f"{item['file']} -> {item['png']}")
    log(summary(len(written), errors, f"explained in {args.out}"))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
