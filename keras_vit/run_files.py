"""Reading what `keras-vit train` leaves behind: the run folder's file names, the model a
finished run chose, and loading a `.keras` file as a keras_vit classifier. One place for
export, predict and explain, which read runs; training writes them under these names
(`keras_vit.training.run_folder` describes the whole folder).

Every problem is a `ModelFileError` whose message names the path and what is wrong with
it; callers re-raise it as their own command's error.
"""

import json
import pathlib

MODEL_FILE = "model.keras"  # the run's model, unless metrics.json names another
DATASET_FILE = "dataset.json"  # the dataset's facts and splits (keras_vit.datasets)
METRICS_FILE = "metrics.json"  # written last: marks a finished run and names its model


class ModelFileError(ValueError):
    """A run folder or model file that cannot be used; the message names it."""


def is_run_folder(path):
    """True for a folder with the dataset facts a training run writes first."""
    return pathlib.Path(path, DATASET_FILE).is_file()


def read_json(path):
    """A JSON file -> its value. Raises `ModelFileError` for one that is not valid JSON."""
    try:
        return json.loads(pathlib.Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ModelFileError(f"{path} is not valid JSON: {error}") from None


def run_model_path(run_dir):
    """The model file of a run folder: the one its metrics.json names, else model.keras.
    Raises `ModelFileError` when that file is missing or metrics.json is not valid."""
    run_dir = pathlib.Path(run_dir)
    name = MODEL_FILE
    if (run_dir / METRICS_FILE).is_file():
        metrics = read_json(run_dir / METRICS_FILE)
        if not isinstance(metrics, dict) or not isinstance(metrics.get("model", name), str):
            raise ModelFileError(f"{run_dir / METRICS_FILE} is not a run's metrics file (no model name in it).")
        name = metrics.get("model", name)
    if not (run_dir / name).is_file():
        raise ModelFileError(f"{run_dir} is a folder without {name}: an unfinished run, or not a training run folder.")
    return run_dir / name


def load_model(path):
    """A `.keras` file -> the Keras model, uncompiled. Raises `ModelFileError` for a file
    Keras cannot load (not a zip, unknown layers, ...), with the first line of its reason."""
    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many kinds for a broken archive
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelFileError(f"{path} could not be loaded as a Keras model: {reason[:300]}") from None


def classifier_config(model, description):
    """The `ViTConfig` of a keras_vit classifier of RGB images. Raises `ModelFileError`
    naming `description` for another model, a feature extractor or other input channels."""
    from keras_vit.config import config_of

    try:
        config = config_of(model)
    except ValueError as error:
        raise ModelFileError(f"{description}: {error}") from None
    if not config.include_top:
        raise ModelFileError(
            f"{description} is a feature extractor (include_top=False): a classifier (output [B, num_classes]) is needed."
        )
    if config.num_channels != 3:
        raise ModelFileError(f"{description} takes {config.num_channels}-channel images; RGB images (3 channels) are needed.")
    return config
