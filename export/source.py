"""What an export starts from: a keras_vit model, the facts about its data, and images.

`load_source(path)` accepts a training run folder (`best.keras` + `dataset.json` +
`metrics.json`, as `keras-vit train` writes it) or a bare `.keras` file, checks that it is a
keras_vit classifier, and returns an `ExportSource`. Every problem with the input is raised
here as an `ExportError` whose message names the offending path or value, so the command
line can print it without a TensorFlow trace.

Images are always uint8 [N, H, W, 3] at the model's size; the model itself takes
`keras_vit.preprocess_input(images, mean, std)` (see `ExportSource.normalise`).
"""

import dataclasses
import json
import pathlib
from typing import Optional

import numpy as np

# What a bare `.keras` file gets, since it carries no dataset facts.
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)
NUM_SYNTHETIC_IMAGES = 64
SYNTHETIC_SEED = 1234
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


class ExportError(ValueError):
    """Bad input to an export (missing file, not a keras_vit model, unknown option...)."""


@dataclasses.dataclass
class ExportSource:
    """A loaded model and what is known about its data.

    `facts` is the run folder's `dataset.json` (or generic facts for a bare `.keras` file):
    `class_names`, `image_size` [h, w], `mean`, `std`, and `source`/`name` when known.
    `run_dir` is None for a bare `.keras` file.
    """

    model_path: pathlib.Path
    model: object  # keras.Model
    facts: dict
    run_dir: Optional[pathlib.Path] = None
    metrics: Optional[dict] = None

    @property
    def image_size(self):
        return tuple(self.facts["image_size"])

    @property
    def class_names(self):
        return list(self.facts["class_names"])

    @property
    def num_classes(self):
        return len(self.facts["class_names"])

    def normalise(self, images):
        """uint8 [N, H, W, 3] -> float32 [N, H, W, 3], the model's input."""
        from keras_vit import preprocess_input

        return np.asarray(preprocess_input(images, self.facts["mean"], self.facts["std"]))


def load_source(path):
    """A run folder or a `.keras` file -> `ExportSource`. Raises `ExportError`."""
    path = pathlib.Path(path)
    if not path.exists():
        raise ExportError(f"{path} does not exist: give a training run folder or a .keras file.")
    if path.is_dir():
        model_path = path / "best.keras"
        if not model_path.is_file():
            raise ExportError(
                f"{path} is a folder but not a training run folder: it has no best.keras "
                "(a run folder holds best.keras, dataset.json and metrics.json)."
            )
        run_dir = path
    else:
        if path.suffix != ".keras":
            raise ExportError(f"{path} is not a .keras file or a training run folder.")
        model_path, run_dir = path, None

    model = _load_keras_vit_model(model_path)
    if run_dir is not None:
        facts = _read_json(run_dir / "dataset.json", required=True)
        metrics = _read_json(run_dir / "metrics.json", required=False)
        for key in ("class_names", "image_size", "mean", "std"):
            if key not in facts:
                raise ExportError(f"{run_dir / 'dataset.json'} has no {key!r}.")
    else:
        facts, metrics = _generic_facts(model), None

    input_size = tuple(model.input_shape[1:3])
    if tuple(facts["image_size"]) != input_size:
        raise ExportError(
            f"dataset.json says image_size {facts['image_size']} but the model takes {list(input_size)}."
        )
    if len(facts["class_names"]) != model.output_shape[-1]:
        raise ExportError(
            f"dataset.json lists {len(facts['class_names'])} class names but the model has "
            f"{model.output_shape[-1]} outputs."
        )
    return ExportSource(model_path=model_path, model=model, facts=facts, run_dir=run_dir, metrics=metrics)


def _read_json(path, required):
    if not path.is_file():
        if required:
            raise ExportError(f"{path} is missing: a run folder needs its dataset facts.")
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ExportError(f"{path} is not valid JSON: {error}") from None


def _load_keras_vit_model(path):
    """Loads `path` and checks that it is a keras_vit classifier with a logits head."""
    import keras

    import keras_vit  # noqa: F401 (registers the keras_vit layers before loading)

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # a zip that is not a Keras archive, unknown layers, ...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(f"{path} could not be loaded as a Keras model: {reason[:300]}") from None

    registered = {keras.saving.get_registered_name(type(layer)) for layer in _all_layers(model)}
    needed = {"keras_vit>PatchEmbedding", "keras_vit>TransformerBlock"}
    if not needed <= registered:
        raise ExportError(
            f"{path} is not a keras_vit model: it has no {' / '.join(sorted(needed - registered))} "
            "layer (build models with keras_vit.VisionTransformer or `keras-vit train`)."
        )
    if len(model.inputs) != 1 or len(model.input_shape) != 4 or model.input_shape[-1] != 3:
        raise ExportError(f"{path}: export needs one RGB image input [B, H, W, 3], got {model.input_shape}.")
    if len(model.outputs) != 1 or len(model.output_shape) != 2:
        raise ExportError(
            f"{path}: export needs a classifier (output [B, num_classes]), got output shape "
            f"{model.output_shape} (a model built with include_top=False?)."
        )
    last = model.layers[-1]
    if getattr(last, "activation", None) is not None and last.name == "predictions":
        raise ExportError(
            f"{path}: the model ends in an activation ({last.name}); export expects logits "
            "(classifier_activation=None, as `keras-vit train` builds)."
        )
    return model


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def _generic_facts(model):
    """Facts for a bare `.keras` file: generic class names, ViT default normalisation."""
    height, width = model.input_shape[1:3]
    return {
        "source": None,
        "name": None,
        "class_names": [f"class_{i}" for i in range(model.output_shape[-1])],
        "image_size": [height, width],
        "mean": list(DEFAULT_MEAN),
        "std": list(DEFAULT_STD),
    }


def dataset_images(facts, split, limit=None):
    """uint8 images [N, H, W, 3] and int labels [N] of a split, via the training data loader."""
    try:
        from keras_vit.training.data import load_images
    except ImportError as error:
        raise ExportError(f"The training data loader is not available ({error}).") from None
    images, labels = load_images(facts, split=split, limit=limit)
    return np.asarray(images, dtype=np.uint8), np.asarray(labels, dtype=np.int64)


def synthetic_images(image_size, count=NUM_SYNTHETIC_IMAGES, seed=SYNTHETIC_SEED):
    """Seeded uint8 images [count, H, W, 3]: smooth random blobs rather than pure noise, so
    that the model's top-1 is not decided by round-off."""
    rng = np.random.default_rng(seed)
    height, width = image_size
    coarse = rng.uniform(0, 255, size=(count, 4, 4, 3))
    rows = np.linspace(0, 3, height).round().astype(int)
    cols = np.linspace(0, 3, width).round().astype(int)
    images = coarse[:, rows][:, :, cols] + rng.normal(0, 20, size=(count, height, width, 3))
    return np.clip(images, 0, 255).astype(np.uint8)


def images_from_path(path, image_size):
    """Calibration images given on the command line -> uint8 [N, H, W, 3].

    `path` is a training run folder (its train split), a `.npy` file of uint8 images
    [N, H, W, 3] (any size; resized), or a folder of image files.
    """
    import tensorflow as tf

    path = pathlib.Path(path)
    if not path.exists():
        raise ExportError(f"Calibration data {path} does not exist.")
    if path.is_dir() and (path / "dataset.json").is_file():
        facts = _read_json(path / "dataset.json", required=True)
        return dataset_images({**facts, "image_size": list(image_size)}, "train", limit=None)[0]
    if path.suffix == ".npy":
        images = np.load(path)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ExportError(f"{path} must hold uint8 images [N, H, W, 3], got shape {images.shape}.")
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ExportError(f"{path} holds no image files ({', '.join(IMAGE_SUFFIXES)}).")
        images = [
            tf.image.resize(tf.io.decode_image(f.read_bytes(), channels=3, expand_animations=False), image_size)
            for f in files
        ]
        images = np.stack([np.asarray(i) for i in images])
    else:
        raise ExportError(f"Calibration data {path} must be a run folder, a .npy file or a folder of images.")
    if images.shape[1:3] != tuple(image_size):
        images = np.asarray(tf.image.resize(images, image_size))
    return np.clip(np.round(images), 0, 255).astype(np.uint8)
