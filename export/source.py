"""What an export starts from: a keras_vit model, what it carries, and images to check it on.

`load_source(path)` accepts a training run folder (the model its `metrics.json` names,
`model.keras`, with `dataset.json`, as `keras-vit train` writes it) or a bare `.keras`
file, checks that it is a keras_vit classifier, and returns an `ExportSource`. Every
problem with the input is raised here as an `ExportError` whose message names the
offending path or value, so the command line can print it without a TensorFlow trace.

What the model is (image size, classifier, preprocessing, class names) comes from the
config the model carries (`keras_vit.config_of`); the run folder adds the dataset its test
images come from. Images are uint8 [N, H, W, 3] at the model's size; the model itself takes
`ExportSource.normalise(images)`.
"""

import dataclasses
import json
import pathlib

import numpy as np

from keras_vit.preprocessing import IMAGE_EXTENSIONS, image_files

RUN_MODEL_FILE = "model.keras"  # what a run folder names in metrics.json's "model"
NUM_SYNTHETIC_IMAGES = 64
SYNTHETIC_SEED = 1234


class ExportError(ValueError):
    """Bad input to an export (missing file, not a keras_vit model, unknown option...)."""


@dataclasses.dataclass
class ExportSource:
    """A loaded model, its config, and (for a run folder) its dataset and metrics.

    `run_dir`, `facts` (the run's `dataset.json`) and `metrics` are None for a bare `.keras`
    file.
    """

    model_path: pathlib.Path
    model: object  # keras_vit.ViTModel
    run_dir: pathlib.Path | None = None
    facts: dict | None = None
    metrics: dict | None = None

    @property
    def config(self):
        return self.model.vit_config

    @property
    def preprocessing(self):
        return self.config.preprocessing

    @property
    def image_size(self):
        return self.config.image_size

    @property
    def class_names(self):
        """The model's class names (`keras_vit.labels.class_names_or_default`)."""
        from keras_vit.labels import class_names_or_default

        return class_names_or_default(self.config.class_names, self.config.num_classes)

    def normalise(self, images):
        """uint8 [N, H, W, 3] -> float32 [N, H, W, 3], the model's input."""
        from keras_vit import preprocess_input

        return np.asarray(preprocess_input(images, self.preprocessing.mean, self.preprocessing.std))

    def dataset_images(self, split, limit=None):
        """uint8 images [N, H, W, 3] and int labels [N] of a split of the run's dataset."""
        from keras_vit.datasets import load_images

        images, labels = load_images(self.facts, split, self.image_size, self.preprocessing, limit=limit)
        return np.asarray(images, dtype=np.uint8), np.asarray(labels, dtype=np.int64)


def load_source(path):
    """A run folder or a `.keras` file -> `ExportSource`. Raises `ExportError`."""
    path = pathlib.Path(path)
    if not path.exists():
        raise ExportError(f"{path} does not exist: give a training run folder or a .keras file.")
    run_dir = facts = metrics = None
    if path.is_dir():
        if not (path / "dataset.json").is_file():
            raise ExportError(
                f"{path} is a folder but not a training run folder: it has no dataset.json "
                f"(a run folder holds {RUN_MODEL_FILE}, dataset.json and metrics.json)."
            )
        run_dir = path
        facts = _read_json(run_dir / "dataset.json", required=True)
        metrics = _read_json(run_dir / "metrics.json", required=False)
        model_path = run_dir / (metrics or {}).get("model", RUN_MODEL_FILE)
        if not model_path.is_file():
            raise ExportError(f"{path} is a run folder without its model {model_path.name} (an unfinished run?).")
    else:
        if path.suffix != ".keras":
            raise ExportError(f"{path} is not a .keras file or a training run folder.")
        model_path = path

    model = _load_keras_vit_classifier(model_path)
    if facts is not None and list(facts["class_names"]) != list(model.vit_config.class_names or facts["class_names"]):
        raise ExportError(f"{run_dir / 'dataset.json'}'s class names differ from those {model_path.name} carries.")
    return ExportSource(model_path=model_path, model=model, run_dir=run_dir, facts=facts, metrics=metrics)


def _read_json(path, required):
    if not path.is_file():
        if required:
            raise ExportError(f"{path} is missing: a run folder needs its dataset facts.")
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ExportError(f"{path} is not valid JSON: {error}") from None


def _load_keras_vit_classifier(path):
    """Loads `path` and checks, from the config it carries, that it is a keras_vit classifier
    with an RGB input and a logits output."""
    import keras

    import keras_vit

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # a zip that is not a Keras archive, unknown layers, ...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(f"{path} could not be loaded as a Keras model: {reason[:300]}") from None
    try:
        config = keras_vit.config_of(model)
    except ValueError as error:
        raise ExportError(f"{path}: {error}") from None
    if config.num_channels != 3:
        raise ExportError(f"{path}: export needs an RGB image input, the model takes {config.num_channels} channels.")
    if not config.include_top:
        raise ExportError(f"{path}: export needs a classifier (output [B, num_classes]); the model was built with include_top=False.")
    if config.classifier_activation is not None:
        raise ExportError(
            f"{path}: the model ends in classifier_activation={config.classifier_activation!r}; export expects "
            "logits (classifier_activation=None, as `keras-vit train` builds)."
        )
    return model


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


def images_from_path(path, src):
    """Calibration images given on the command line -> uint8 [N, H, W, 3] for `src`'s model.

    `path` is a training run folder (its train split), a `.npy` file of uint8 images
    [N, h, w, 3] (any size; resized), or a folder of image files (decoded and resized as the
    model's preprocessing says).
    """
    from keras_vit.datasets import load_images
    from keras_vit.preprocessing import ImageError, decode_image, resize_for_model

    path = pathlib.Path(path)
    if not path.exists():
        raise ExportError(f"Calibration data {path} does not exist.")
    if path.is_dir() and (path / "dataset.json").is_file():
        facts = _read_json(path / "dataset.json", required=True)
        return load_images(facts, "train", src.image_size, src.preprocessing)[0]
    if path.suffix == ".npy":
        images = np.load(path)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ExportError(f"{path} must hold uint8 images [N, H, W, 3], got shape {images.shape}.")
        images = np.clip(np.round(images), 0, 255).astype(np.uint8)
    elif path.is_dir():
        files = image_files(path)
        if not files:
            raise ExportError(f"{path} holds no image files ({', '.join(IMAGE_EXTENSIONS)}).")
        try:
            images = [decode_image(f) for f in files]
        except ImageError as error:
            raise ExportError(f"Calibration data: {error}") from None
    else:
        raise ExportError(f"Calibration data {path} must be a run folder, a .npy file or a folder of images.")
    return np.stack([np.asarray(resize_for_model(image, src.image_size, src.preprocessing)) for image in images])
