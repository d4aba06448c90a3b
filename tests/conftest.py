"""Shared by every test: the fixture folder, a fresh Keras state per test, and tiny models.

Helpers are imported as `from conftest import tiny_vit, randomise` (pytest puts this folder
on the path).
"""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"
# A ViT small enough to build, fit and export in a second: 32 wide, 2 blocks of 4 heads.
TINY = dict(image_size=16, patch_size=4, hidden_dim=32, num_layers=2, num_heads=4, mlp_dim=64, num_classes=10)


def tiny_vit(seed=0, **overrides):
    """A tiny `ViTModel` (`TINY` with `overrides`), its head random (not zero), so that its
    logits differ per image."""
    import keras_vit

    keras.utils.set_random_seed(seed)
    model = keras_vit.VisionTransformer(**{**TINY, **overrides})
    if "head" in [layer.name for layer in model.layers]:
        head = model.get_layer("head")
        head.kernel.assign(np.random.default_rng(seed).normal(0, 0.3, head.kernel.shape).astype("float32"))
    return model


def randomise(model_or_layer, seed=0, scale=0.2):
    """Every weight drawn from N(0, scale): non-zero heads, biases and class tokens."""
    rng = np.random.RandomState(seed)
    for weight in model_or_layer.weights:
        weight.assign(rng.normal(0, scale, weight.shape).astype("float32"))
    return model_or_layer


def perturb(model, seed=1, scale=0.1):
    """Every weight moved by N(0, scale) noise, as in a trained model (non-zero biases and
    LayerNorm betas, gammas != 1: tf2onnx folds away zero biases, which changes the graph)."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        weight.assign(weight.numpy() + rng.normal(0, scale, weight.shape).astype("float32"))
    return model


@pytest.fixture
def fixtures_dir():
    if not FIXTURES.is_dir():
        pytest.fail(f"Reference fixtures not found at {FIXTURES} (see the README's Tests section).")
    return FIXTURES


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Every test starts with the float32 policy and a fixed seed."""
    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(0)
    yield
    keras.mixed_precision.set_global_policy("float32")
    keras.backend.clear_session()
