"""keras_vit.run_files: a run folder's model and a `.keras` file checked as a keras_vit
classifier, the one reader that export, predict and explain share."""

import json

import keras
import numpy as np
import pytest
from conftest import tiny_vit

from keras_vit import run_files


def test_run_model_is_the_one_metrics_names_else_model_keras(tmp_path):
    (tmp_path / run_files.DATASET_FILE).write_text("{}")
    assert run_files.is_run_folder(tmp_path) and not run_files.is_run_folder(tmp_path / "nothing")
    with pytest.raises(run_files.ModelFileError, match=f"{tmp_path} is a folder without model.keras: an unfinished run"):
        run_files.run_model_path(tmp_path)
    (tmp_path / "model.keras").write_bytes(b"")
    assert run_files.run_model_path(tmp_path) == tmp_path / "model.keras"

    (tmp_path / run_files.METRICS_FILE).write_text(json.dumps({"model": "best.keras"}))
    with pytest.raises(run_files.ModelFileError, match="without best.keras"):
        run_files.run_model_path(tmp_path)
    (tmp_path / "best.keras").write_bytes(b"")
    assert run_files.run_model_path(tmp_path) == tmp_path / "best.keras"

    (tmp_path / run_files.METRICS_FILE).write_text("{not json")
    with pytest.raises(run_files.ModelFileError, match="metrics.json is not valid JSON"):
        run_files.run_model_path(tmp_path)
    (tmp_path / run_files.METRICS_FILE).write_text("[1, 2]")
    with pytest.raises(run_files.ModelFileError, match="is not a run's metrics file"):
        run_files.run_model_path(tmp_path)


def test_a_saved_classifier_loads_with_its_config_and_the_same_logits(tmp_path):
    model = tiny_vit(labels=["a", "b", "c", "d", "e"], num_classes=5)
    model.save(tmp_path / "m.keras")
    loaded = run_files.load_model(tmp_path / "m.keras")
    config = run_files.classifier_config(loaded, "m.keras")
    assert config == model.vit_config and config.class_names == ["a", "b", "c", "d", "e"]
    images = np.random.default_rng(0).normal(size=(2, *config.image_size, 3)).astype("float32")
    np.testing.assert_allclose(loaded(images), model(images), atol=1e-6)


def test_what_is_not_a_keras_vit_rgb_classifier_is_named(tmp_path):
    broken = tmp_path / "broken.keras"
    broken.write_text("not a zip")
    with pytest.raises(run_files.ModelFileError, match=f"{broken} could not be loaded as a Keras model"):
        run_files.load_model(broken)
    mlp = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(run_files.ModelFileError, match="mlp.keras: .*not a keras_vit model"):
        run_files.classifier_config(mlp, "mlp.keras")
    with pytest.raises(run_files.ModelFileError, match="features is a feature extractor \\(include_top=False\\)"):
        run_files.classifier_config(tiny_vit(include_top=False), "features")
    with pytest.raises(run_files.ModelFileError, match="gray takes 1-channel images"):
        run_files.classifier_config(tiny_vit(num_channels=1), "gray")
