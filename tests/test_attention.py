"""Attention maps (against timm's own probabilities), attention rollout (against a NumPy
restatement), and any image size at run time (against timm's dynamic_img_size)."""

import json

import keras
import numpy as np
import pytest
from conftest import perturb, randomise, tiny_vit
from test_families import BASE, FAMILIES

import keras_vit
from keras_vit.attention import rollout


def _fixture(fixtures_dir, name):
    folder = fixtures_dir / "timm_vit" / name
    return folder, np.load(folder / "input.npy").transpose(0, 2, 3, 1)


# ----------------------------------------------------------------------------- attention maps


@pytest.mark.parametrize("name", ["i32_p4_token", "i32_p4_deit3"])
def test_attention_maps_are_timms_attention_probabilities(fixtures_dir, name):
    """Every block, the last one too (the model computes the class token alone there)."""
    folder, images = _fixture(fixtures_dir, name)
    model = keras_vit.VisionTransformer(weights=str(folder / "model.safetensors"), **BASE)
    maps = keras_vit.attention_maps(model, images, batch_size=1)
    expected = np.load(folder / "attn_probs.npy")  # [blocks, batch, heads, tokens, tokens]
    assert len(maps) == len(expected) and all(m.dtype == np.float32 for m in maps)
    for block, attention in enumerate(maps):
        assert attention.shape == (2, 4, 65, 65)
        np.testing.assert_allclose(attention, expected[block], atol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_attention_maps_of_every_family_cover_every_token(family):
    model = perturb(tiny_vit(**FAMILIES[family]))
    config = model.vit_config
    images = np.random.RandomState(0).uniform(-1, 1, (3, 16, 16, 3)).astype("float32")
    before = model.predict(images, verbose=0)
    maps = keras_vit.attention_maps(model, images)
    tokens = config.num_prefix_tokens + 16
    assert [m.shape for m in maps] == [(3, 4, tokens, tokens)] * config.num_layers
    np.testing.assert_allclose(np.stack(maps).sum(-1), 1.0, atol=1e-5)
    # The maps come from a second pass over the model's own layers: reading them changes
    # nothing in the model (same logits before and after).
    np.testing.assert_array_equal(model.predict(images, verbose=0), before)
    assert keras_vit.attention_rollout(model, images).shape == (3, 4, 4)


# ----------------------------------------------------------------------------- rollout


def np_rollout(maps, prefix, class_token, grid, fusion="mean", discard=0.0):
    """Abnar & Zuidema's rollout, restated loop by loop (image by image, block by block)."""
    batch, tokens = maps[0].shape[0], maps[0].shape[-1]
    out = np.zeros((batch, *grid))
    for b in range(batch):
        joint = np.eye(tokens)
        for attention in maps:
            fused = {"mean": np.mean, "max": np.max, "min": np.min}[fusion](attention[b].astype(np.float64), axis=0)
            if discard:
                order = np.argsort(fused.ravel(), kind="stable")[: int(fused.size * discard)]
                flat = fused.ravel().copy()
                for index in order:
                    if index != 0:
                        flat[index] = 0.0
                fused = flat.reshape(tokens, tokens)
            step = fused + np.eye(tokens)
            step = step / step.sum(axis=1, keepdims=True)
            joint = step @ joint
        relevance = joint[0, prefix:] if class_token else joint[prefix:, prefix:].mean(axis=0)
        out[b] = relevance.reshape(grid)
    return out


@pytest.mark.parametrize("fusion, discard", [("mean", 0.0), ("max", 0.0), ("min", 0.5), ("mean", 0.9)])
@pytest.mark.parametrize("family", ["plain", "reg4_gap"])
def test_rollout_matches_a_numpy_restatement(family, fusion, discard):
    model = perturb(tiny_vit(**FAMILIES.get(family, {})))
    config = model.vit_config
    images = np.random.RandomState(1).uniform(-1, 1, (2, 16, 16, 3)).astype("float32")
    ours = keras_vit.attention_rollout(model, images, head_fusion=fusion, discard_ratio=discard)
    maps = keras_vit.attention_maps(model, images)
    expected = np_rollout(maps, config.num_prefix_tokens, config.class_token, (4, 4), fusion, discard)
    np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_rollout_of_identity_attention_is_uniform():
    """Each token attending only to itself: nothing flows between tokens, so no patch is
    more relevant than another (class token: all 0; without one: all 1/N)."""
    identity = [np.broadcast_to(np.eye(17), (2, 3, 17, 17)).astype(np.float32)] * 4
    np.testing.assert_array_equal(rollout(identity, 1, True, (4, 4)), np.zeros((2, 4, 4)))
    without_class = [np.broadcast_to(np.eye(16), (2, 3, 16, 16)).astype(np.float32)] * 4
    np.testing.assert_allclose(rollout(without_class, 0, False, (4, 4)), np.full((2, 4, 4), 1 / 16), atol=1e-7)


def test_rollout_refuses_unknown_options():
    model = tiny_vit()
    images = np.zeros((1, 16, 16, 3), "float32")
    with pytest.raises(ValueError, match="Unknown head_fusion 'median'"):
        keras_vit.attention_rollout(model, images, head_fusion="median")
    with pytest.raises(ValueError, match="discard_ratio must be in"):
        keras_vit.attention_rollout(model, images, discard_ratio=1.0)


# ----------------------------------------------------------------------------- any image size


def test_dynamic_image_size_is_timms_dynamic_img_size(fixtures_dir):
    folder, images = _fixture(fixtures_dir, "i32_p4_dynamic_h36_w44")
    weights = str(fixtures_dir / "timm_vit/i32_p4_token/model.safetensors")
    model = keras_vit.VisionTransformer(weights=weights, dynamic_image_size=True, **BASE)
    assert model.input_shape == (None, None, None, 3) and model.vit_config.position_resize_method == "bicubic"
    logits = model.predict(images, verbose=0)
    assert np.abs(logits - np.load(folder / "logits.npy")).max() <= 1e-4
    # The same weights built at 36x44 (the embedding resized once, when loading).
    rebuilt = keras_vit.VisionTransformer(weights=weights, **{**BASE, "image_size": (36, 44)})
    np.testing.assert_allclose(logits, rebuilt.predict(images, verbose=0), atol=1e-5)
    # At its own size the resize is the identity.
    _, own = _fixture(fixtures_dir, "i32_p4_token")
    assert np.abs(model.predict(own, verbose=0) - np.load(fixtures_dir / "timm_vit/i32_p4_token/logits.npy")).max() <= 1e-4
    # Attention maps and rollout at that size.
    assert keras_vit.attention_maps(model, images)[0].shape == (2, 4, 100, 100)
    assert keras_vit.attention_rollout(model, images).shape == (2, 9, 11)


def test_dynamic_image_size_resizes_as_the_source_does(fixtures_dir):
    """vit_jax's checkpoints resize bilinearly (corners aligned): the same as loading them at
    that size."""
    weights = str(fixtures_dir / "google_vit/i32_p4_token/params.npz")
    model = keras_vit.VisionTransformer(weights=weights, dynamic_image_size=True, **BASE)
    assert model.vit_config.position_resize_method == "bilinear"
    images = np.random.RandomState(2).uniform(-1, 1, (2, 24, 40, 3)).astype("float32")
    rebuilt = keras_vit.VisionTransformer(weights=weights, **{**BASE, "image_size": (24, 40)})
    np.testing.assert_allclose(model.predict(images, verbose=0), rebuilt.predict(images, verbose=0), atol=1e-5)


def test_a_side_that_is_not_a_multiple_of_the_patch_is_an_error_or_padded():
    model = tiny_vit(dynamic_image_size=True)
    with pytest.raises(ValueError, match="Image size 18x16 is not a multiple of the patch size 4x4"):
        model(np.zeros((1, 18, 16, 3), "float32"))
    with pytest.raises(Exception, match="not a multiple of the patch size 4x4"):  # inside a graph: TensorFlow's error
        model.predict(np.zeros((1, 18, 16, 3), "float32"), verbose=0)
    padded = tiny_vit(dynamic_image_size=True, dynamic_image_pad=True)
    images = np.random.RandomState(3).uniform(-1, 1, (2, 18, 14, 3)).astype("float32")
    zero_padded = np.pad(images, ((0, 0), (0, 2), (0, 2), (0, 0)))  # timm: zeros at the bottom and right
    np.testing.assert_allclose(padded.predict(images, verbose=0), padded.predict(zero_padded, verbose=0), atol=1e-6)
    with pytest.raises(ValueError, match="dynamic_image_pad=True pads images of any size: it needs dynamic_image_size=True"):
        tiny_vit(dynamic_image_pad=True)


def test_dynamic_model_fits_saves_reloads_and_exports_at_two_sizes(tmp_path):
    model = tiny_vit(dynamic_image_size=True, **FAMILIES["dinov2_reg4"])
    randomise(model, seed=5, scale=0.1)
    model.compile(keras.optimizers.AdamW(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    for size in ((16, 16), (24, 20)):  # batches of one size each
        images = np.random.RandomState(0).uniform(-1, 1, (8, *size, 3)).astype("float32")
        assert np.isfinite(model.fit(images, np.arange(8) % 10, batch_size=4, epochs=1, verbose=0).history["loss"]).all()
    model.save(tmp_path / "dynamic.keras")
    reloaded = keras.saving.load_model(tmp_path / "dynamic.keras", safe_mode=True)
    np.testing.assert_array_equal(reloaded.predict(images, verbose=0), model.predict(images, verbose=0))

    from keras_vit.export import pipeline

    report = pipeline.export(tmp_path / "dynamic.keras", tmp_path / "out", quantizations="none", latency_repeats=1)
    rows = {row["artifact"]: row for row in report["artifacts"]}
    assert report["passed"], [row["failures"] for row in report["artifacts"]]
    for name in ("saved_model", "onnx", "onnx_optimized"):
        second = rows[name]["details"]["second_size"]
        assert second["size"] == [20, 24] and second["max_abs_diff"] <= 1e-4
        assert second["num_images"] == min(pipeline.SECOND_SIZE_IMAGES, report["verification_data"]["num_images"])
    assert rows["onnx"]["details"]["input_shape"] == ["batch", "height", "width", 3]
    assert "fixed 16x16" in rows["tflite_float32"]["details"]["input_size"]
    import tensorflow as tf

    signature = tf.saved_model.load(str(tmp_path / "out" / "saved_model")).signatures["serving_default"]
    assert signature.structured_input_signature[1]["images"].shape.as_list() == [None, None, None, 3]
    assert "also verified at 20x24" in (tmp_path / "out" / "export_report.md").read_text()
    json.loads((tmp_path / "out" / "export_report.json").read_text())
