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
import pathlib

import numpy as np

from keras_vit import run_files
from keras_vit.preprocessing import IMAGE_EXTENSIONS, image_files

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
    try:
        if path.is_dir():
            if not run_files.is_run_folder(path):
                raise ExportError(
                    f"{path} is a folder but not a training run folder: it has no {run_files.DATASET_FILE} (a run "
                    f"folder holds {run_files.MODEL_FILE}, {run_files.DATASET_FILE} and {run_files.METRICS_FILE})."
                )
            run_dir = path
            facts = run_files.read_json(run_dir / run_files.DATASET_FILE)
            if (run_dir / run_files.METRICS_FILE).is_file():
                metrics = run_files.read_json(run_dir / run_files.METRICS_FILE)
            model_path = run_files.run_model_path(run_dir)
        elif path.suffix != ".keras":
            raise ExportError(f"{path} is not a .keras file or a training run folder.")
        else:
            model_path = path
        model = run_files.load_model(model_path)
        config = run_files.classifier_config(model, str(model_path))
    except run_files.ModelFileError as error:
        raise ExportError(str(error)) from None
    if config.classifier_activation is not None:
        raise ExportError(
            f"{model_path}: the model ends in classifier_activation={config.classifier_activation!r}; export expects "
            "logits (classifier_activation=None, as `keras-vit train` builds)."
        )
    if facts is not None and list(facts["class_names"]) != list(config.class_names or facts["class_names"]):
        raise ExportError(f"{run_dir / run_files.DATASET_FILE}'s class names differ from those {model_path.name} carries.")
    return ExportSource(model_path=model_path, model=model, run_dir=run_dir, facts=facts, metrics=metrics)


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
    if path.is_dir() and run_files.is_run_folder(path):
        try:
            facts = run_files.read_json(path / run_files.DATASET_FILE)
        except run_files.ModelFileError as error:
            raise ExportError(f"Calibration data: {error}") from None
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
