"""`keras-vit predict`: the top-k classes of image files, from any keras_vit model or artifact.

    keras-vit predict runs/digits photos/ cat.jpg --top-k 3
    keras-vit predict runs/digits/export/model_float32.tflite photos/ --json
    keras-vit predict --model ViTB16 --weights augreg_in21k_ft_in1k photos/ --csv

    results, errors = keras_vit.predict.predict("runs/digits", ["photos/"], top_k=3)
    # results: [{"file": "photos/a.png", "predictions": [{"class_id": 3, "name": "3", "probability": 0.91}, ...]}, ...]
    # errors:  [{"file": "photos/broken.jpg", "error": "Cannot read photos/broken.jpg as an image: ..."}]

A source is a training run folder (the model its metrics.json names), a `.keras` file, a
named-weights model (`--model VARIANT --weights NAME_OR_PATH`), or an artifact of `keras-vit
export`: its `saved_model/` folder, a `.tflite` or a `.onnx` file, each run in its own
runtime (TensorFlow, LiteRT, onnxruntime). A Keras model carries its image size,
preprocessing and class names; an artifact has them in the `export_report.json` next to it.

Every image takes the one image path of keras_vit (`decode_image`, `resize_for_model`,
`preprocess_input`), so a file gets the pixels the model was trained and exported with.
Unreadable files are reported and skipped; the others are still predicted.

Exit codes: 0 every file predicted, 1 some files could not be read, 2 bad input (missing
source, no images, unknown variant ...: one line on stderr, no trace).
"""

import argparse
import contextlib
import csv
import dataclasses
import json
import pathlib
import sys
from collections.abc import Callable

import numpy as np

from keras_vit import console, labels, run_files
from keras_vit.preprocessing import ImageError, Preprocessing, decode_image, image_files, preprocess_input, resize_for_model

COMMAND = "predict"
RUNTIMES = ("keras", "saved_model", "tflite", "onnx")
DEFAULT_BATCH_SIZE = 32


class PredictError(ValueError):
    """Bad input to predict or explain (missing source, no images, ...); the message names it."""


@dataclasses.dataclass
class Predictor:
    """A classifier of any runtime with what its inputs and outputs are.

    run: float32 [B, H, W, 3] normalised images -> float32 [B, C] (logits, or probabilities
        when `outputs_probabilities`).
    model: the Keras model (runtime "keras"; None for an exported artifact).
    """

    description: str
    runtime: str  # one of RUNTIMES
    run: Callable
    image_size: tuple[int, int]
    preprocessing: Preprocessing
    class_names: list[str]
    outputs_probabilities: bool = False
    model: object = None

    def load_image(self, path):
        """An image file -> uint8 [H, W, 3], as the model sees it. Raises `ImageError`."""
        return np.asarray(resize_for_model(decode_image(path), self.image_size, self.preprocessing))

    def normalise(self, images):
        """uint8 [N, H, W, 3] -> float32 [N, H, W, 3], the model's input."""
        return np.asarray(preprocess_input(images, self.preprocessing.mean, self.preprocessing.std))

    def probabilities(self, x):
        """Normalised images float32 [N, H, W, 3] -> class probabilities float32 [N, C]."""
        scores = np.asarray(self.run(x), np.float32)
        if scores.ndim != 2 or scores.shape[1] != len(self.class_names):
            raise PredictError(f"{self.description} gives outputs of shape {scores.shape}, but has {len(self.class_names)} class names.")
        return scores if self.outputs_probabilities else softmax(scores)


def softmax(logits):
    """float [N, C] -> float32 [N, C], rows summing to 1 (computed in float64)."""
    logits = np.asarray(logits, np.float64)
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------------------- sources


def load_predictor(source=None, model=None, weights=None, image_size=None):
    """A `Predictor` from a path (run folder, `.keras`, SavedModel folder, `.tflite`,
    `.onnx`), a keras_vit model object, or a named variant with weights (`model="ViTB16",
    weights="augreg_in21k_ft_in1k"` or a checkpoint path; `image_size` then sets its input
    side). Raises `PredictError` naming the bad input."""
    if model is not None or weights is not None:
        if source is not None:
            raise PredictError("give either SOURCE or --model/--weights, not both.")
        return _named_weights_predictor(model, weights, image_size)
    if image_size is not None:
        raise PredictError("--image-size applies to --model/--weights only: a SOURCE has its own image size.")
    if source is None:
        raise PredictError("no SOURCE given: a run folder, a .keras file, an exported SavedModel/.tflite/.onnx, or --model with --weights.")
    if not isinstance(source, (str, pathlib.Path)):
        return _keras_predictor(source, getattr(source, "name", "the model"))
    path = pathlib.Path(source)
    runtime = source_runtime(path)
    if runtime == "keras":
        return _keras_predictor(_load_keras(_run_model_path(path) if path.is_dir() else path), str(path))
    return _artifact_predictor(path, runtime, path.parent)


def source_runtime(path):
    """The runtime of a source path, from its name alone (nothing loaded): "keras" for a
    folder that is not a SavedModel (a run folder) or a `.keras` file, "saved_model",
    "tflite" or "onnx". Raises `PredictError` for a missing path or another kind of file."""
    path = pathlib.Path(path)
    if not path.exists():
        raise PredictError(f"{path} does not exist: give a run folder, a .keras file, an exported SavedModel folder, .tflite or .onnx file.")
    if path.is_dir():
        return "saved_model" if (path / "saved_model.pb").is_file() else "keras"
    kinds = {".keras": "keras", ".tflite": "tflite", ".onnx": "onnx"}
    if path.suffix.lower() not in kinds:
        raise PredictError(f"{path} is not a .keras, .tflite or .onnx file, a run folder or a SavedModel folder.")
    return kinds[path.suffix.lower()]


def _run_model_path(folder):
    """The model file of a run folder (`run_files.run_model_path`), with a hint for an
    export folder given in place of its artifact."""
    from keras_vit.export.formats import REPORT_FILE

    try:
        return run_files.run_model_path(folder)
    except run_files.ModelFileError as error:
        if (folder / REPORT_FILE).is_file():
            raise PredictError(f"{folder} is a `keras-vit export` folder: give its saved_model folder or one of its .tflite / .onnx files.") from None
        raise PredictError(f"{error} Give a training run folder, a SavedModel folder or a model file.") from None


def _load_keras(path):
    try:
        return run_files.load_model(path)
    except run_files.ModelFileError as error:
        raise PredictError(str(error)) from None


def _keras_predictor(model, description):
    try:
        config = run_files.classifier_config(model, description)
    except run_files.ModelFileError as error:
        raise PredictError(str(error)) from None

    def run(x):
        return np.asarray(model(x, training=False), np.float32)

    return Predictor(
        description=description,
        runtime="keras",
        run=run,
        image_size=tuple(config.image_size),
        preprocessing=config.preprocessing,
        class_names=labels.class_names_or_default(config.class_names, config.num_classes),
        # Only plain logits get the softmax; any other activation's outputs are the scores.
        outputs_probabilities=config.classifier_activation is not None,
        model=model,
    )


def _named_weights_predictor(variant, weights, image_size):
    import keras_vit
    from keras_vit.weights import CheckpointError, named_weights

    if variant is None or weights is None:
        raise PredictError("--model VARIANT and --weights NAME_OR_PATH go together (a model without weights predicts nothing).")
    if variant not in keras_vit.VARIANT_BUILDERS:
        raise PredictError(f"unknown --model {variant!r}: expected one of {', '.join(sorted(keras_vit.VARIANT_BUILDERS))}.")
    entry = named_weights(weights, variant)
    if entry is not None and entry.num_classes is None:
        raise PredictError(f"{variant} weights {weights!r} ({entry.description}) have no classifier: predict needs one.")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # keras.utils.get_file's download bar: stdout is for results
            model = keras_vit.create_model(variant, weights=weights, image_size=image_size)
    except (CheckpointError, ValueError, OSError) as error:
        raise PredictError(f"{variant} with weights {weights!r}: {error}") from None
    return _keras_predictor(model, f"{variant} ({weights})")


def _artifact_predictor(path, runtime, folder):
    """An exported artifact, run by its own runtime, described by `folder`'s export report."""
    from keras_vit.export.formats import REPORT_FILE

    report_file = folder / REPORT_FILE
    if not report_file.is_file():
        raise PredictError(
            f"{path}: predict needs the {REPORT_FILE} that `keras-vit export` writes next to its artifacts "
            f"(class names, image size, preprocessing); there is none in {folder}."
        )
    try:
        report = json.loads(report_file.read_text())
        preprocessing = Preprocessing(**report["preprocessing"])
        image_size = tuple(int(side) for side in report["image_size"])
        names = report["class_names"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise PredictError(f"{report_file} is not a valid export report ({type(error).__name__}: {error}).") from None
    try:
        run = _artifact_runner(path, runtime)
    except ImportError as error:
        raise PredictError(f"{path} needs {error.name or 'its runtime'} (pip install 'keras_vit[export]').") from None
    except Exception as error:  # a corrupt or foreign file: the runtime's own message
        raise PredictError(f"{path} could not be loaded by its runtime: {str(error).strip()[:300]}") from None
    return Predictor(str(path), runtime, run, image_size, preprocessing, [str(name) for name in names])


def _artifact_runner(path, runtime):
    if runtime == "saved_model":
        from keras_vit.export import saved_model

        return saved_model.load_runner(path)
    if runtime == "tflite":
        from keras_vit.export import tflite

        return tflite.load_runner(path)
    from keras_vit.export import onnx_export

    return onnx_export.load_runner(path)


# ----------------------------------------------------------------------------- images


def collect_images(paths):
    """Files named in `paths` (any suffix) and image files (`IMAGE_EXTENSIONS`) under the
    folders in it, recursively, in order, each once -> (files, errors); a path that does
    not exist is an error."""
    if isinstance(paths, (str, pathlib.Path)):
        paths = [paths]
    files, errors = [], []
    for path in map(pathlib.Path, paths):
        if path.is_dir():
            files += image_files(path)
        elif path.exists():
            files.append(path)
        else:
            errors.append({"file": str(path), "error": f"{path} does not exist"})
    return list(dict.fromkeys(files)), errors


def image_batches(predictor, files, batch_size):
    """Yields `(files, images, errors)` per `batch_size` files: the readable files, their
    images uint8 [n, H, W, 3] as the model sees them, and {"file", "error"} for the others."""
    height, width = predictor.image_size
    for start in range(0, len(files), batch_size):
        readable, images, errors = [], [], []
        for path in files[start : start + batch_size]:
            try:
                images.append(predictor.load_image(path))
            except ImageError as error:
                errors.append({"file": str(path), "error": str(error)})
                continue
            readable.append(path)
        yield readable, (np.stack(images) if images else np.zeros((0, height, width, 3), np.uint8)), errors


def images_to_process(paths):
    """`collect_images`, with no image at all a `PredictError`."""
    paths = [paths] if isinstance(paths, (str, pathlib.Path)) else list(paths)
    files, errors = collect_images(paths)
    if not files:
        missing = "; ".join(error["error"] for error in errors)
        raise PredictError(f"no images found in {', '.join(map(str, paths)) or 'no paths'}" + (f" ({missing})." if missing else "."))
    return files, errors


# ----------------------------------------------------------------------------- predict


def predict(source, paths, top_k=5, batch_size=DEFAULT_BATCH_SIZE, log=None, progress=None):
    """The `top_k` classes of every image in `paths` (files and folders).

    Args:
        source: a `Predictor`, a keras_vit model, or a path (see `load_predictor`).
        paths: image files (any suffix: tried) and folders (image files found recursively).
        top_k: classes per image (at most the number of classes).
        batch_size: images per model call.
        log: None, or a function called with a line per file skipped, and per batch when
            there is more than one (unless `progress` is given).
        progress: None, or a function of the number of files returning an object with
            `update(files_done)`, e.g. `console.ProgressBar`; used when there is more than
            one batch.

    Returns:
        (results, errors): results, one per readable image, in order:
        `{"file": str, "predictions": [{"class_id": int, "name": str, "probability": float}]}`
        (best first); errors: `{"file": str, "error": str}` per file that could not be read.

    Raises `PredictError` for bad input (source, no images, top_k or batch_size < 1).
    """
    check_counts(top_k=top_k, batch_size=batch_size)
    predictor = source if isinstance(source, Predictor) else load_predictor(source)
    log = log or (lambda message: None)
    files, errors = images_to_process(paths)
    report_errors(errors, log)
    results, num_batches = [], -(-len(files) // batch_size)
    bar = progress(len(files)) if progress is not None and num_batches > 1 else None
    for index, (readable, images, batch_errors) in enumerate(image_batches(predictor, files, batch_size)):
        report_errors(batch_errors, log)
        errors += batch_errors
        if readable:
            probabilities = predictor.probabilities(predictor.normalise(images))
            for path, top in zip(readable, labels.decode_predictions(probabilities, top=top_k, labels=predictor.class_names)):
                predictions = [{"class_id": i, "name": name, "probability": score} for i, name, score in top]
                results.append({"file": str(path), "predictions": predictions})
        done = min((index + 1) * batch_size, len(files))
        if bar is not None:
            bar.update(done)
        elif num_batches > 1:
            log(f"batch {index + 1}/{num_batches}: {done}/{len(files)} files")
    return results, errors


# ----------------------------------------------------------------------------- output


def format_table(results):
    """One line per image: the file, then its predictions as `name (probability)`."""
    if not results:
        return ""
    top_k = max(len(result["predictions"]) for result in results)
    rows = [["file"] + [f"top-{rank}" for rank in range(1, top_k + 1)]]
    rows += [[r["file"]] + [f"{p['name']} ({p['probability']:.4f})" for p in r["predictions"]] for r in results]
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(top_k + 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def write_csv(results, stream):
    """`file,rank,class_id,name,probability`, one row per prediction (rank 1 = best)."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(["file", "rank", "class_id", "name", "probability"])
    for result in results:
        for rank, p in enumerate(result["predictions"], start=1):
            writer.writerow([result["file"], rank, p["class_id"], p["name"], f"{p['probability']:.6g}"])


# ----------------------------------------------------------------------------- command line


def add_source_arguments(parser, batch_size):
    """SOURCE IMAGES..., --model/--weights/--image-size, --batch-size (default `batch_size`),
    --verbose: the arguments predict and explain share."""
    parser.add_argument("paths", nargs="*", metavar="SOURCE IMAGES", help=argparse.SUPPRESS)
    parser.add_argument("--model", metavar="VARIANT", help="a named variant (ViTB16, ...), with --weights instead of SOURCE")
    parser.add_argument("--weights", metavar="NAME_OR_PATH", help="the variant's weights: a name (keras_vit.weights.available_weights()) or a checkpoint")
    parser.add_argument(
        "--image-size", type=int, metavar="N",
        help="with --model: the input side (default: the size the weights were trained at; 224 for a checkpoint file)",
    )
    parser.add_argument("--batch-size", type=int, default=batch_size, metavar="N", help=f"images per model call (default {batch_size})")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up log lines")


def source_and_images(args):
    """(source or None, image paths) from the positional arguments: with --model/--weights
    they are all images, else the first is the source. Raises `PredictError`."""
    paths = list(args.paths)
    named = args.model is not None or args.weights is not None
    source = None if named else (paths.pop(0) if paths else None)
    if source is None and not named:
        raise PredictError("no SOURCE given: a run folder, a .keras file, an exported SavedModel/.tflite/.onnx, or --model with --weights.")
    if not paths:
        raise PredictError("no IMAGES given: name image files or folders after the source.")
    return source, paths


def load_from_arguments(args, command):
    """The `Predictor` the command line names (logs what it loads)."""
    source, paths = source_and_images(args)
    console.log(command, f"loading {source if source is not None else f'{args.model} with weights {args.weights}'}")
    return load_predictor(source, model=args.model, weights=args.weights, image_size=args.image_size), paths


def check_counts(**counts):
    """Raises `PredictError` for a count (`top_k=3`, `batch_size=0`) below 1."""
    for name, value in counts.items():
        if value < 1:
            raise PredictError(f"--{name.replace('_', '-')} must be at least 1, got {value}.")


def report_errors(errors, log):
    for error in errors:
        log(f"skipped: {error['error']}")


def summary(done, errors, what):
    """`3 images predicted, 1 file could not be read`."""
    failed = f", {len(errors)} file{'s' if len(errors) != 1 else ''} could not be read" if errors else ""
    return f"{done} image{'s' if done != 1 else ''} {what}{failed}"


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-vit predict",
        usage="keras-vit predict SOURCE IMAGES... [options]\n"
        "       keras-vit predict --model VARIANT --weights NAME_OR_PATH [--image-size N] IMAGES... [options]",
        description="The top-k classes of image files. SOURCE: a training run folder, a .keras file, or what "
        "`keras-vit export` wrote: its saved_model folder, a .tflite or .onnx file (with export_report.json "
        "next to it). IMAGES: files and folders (searched recursively for image files).",
    )
    add_source_arguments(parser, DEFAULT_BATCH_SIZE)
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="classes per image (default 5)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON: {results: [{file, predictions}], errors: [{file, error}]}")
    output.add_argument("--csv", action="store_true", help="print CSV: file,rank,class_id,name,probability")
    return parser


def main(argv=None):
    args = build_parser().parse_intermixed_args(argv)
    try:
        check_counts(top_k=args.top_k, batch_size=args.batch_size)
        predictor, paths = load_from_arguments(args, COMMAND)
        console.log(COMMAND, f"{predictor.runtime} model, {predictor.image_size[0]}x{predictor.image_size[1]}, {len(predictor.class_names)} classes")
        log = lambda message: console.log(COMMAND, message)
        results, errors = predict(
            predictor, paths, top_k=args.top_k, batch_size=args.batch_size, log=log,
            progress=lambda total: console.ProgressBar(total, unit="file"),
        )
    except PredictError as error:
        console.error(COMMAND, error)
        return 2
    if args.json:
        print(json.dumps({"source": predictor.description, "results": results, "errors": errors}, indent=2))
    elif args.csv:
        write_csv(results, sys.stdout)
    elif results:
        print(format_table(results))
    console.log(COMMAND, summary(len(results), errors, "predicted"))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
