"""Pretrained weights: parity with the reference fixtures, fine-tuning semantics, resizing,
named weights and bad checkpoints. Tiny models only (the fixtures' architecture)."""

import json
import logging
import os
import shutil
import struct

import keras
import numpy as np
import pytest
import scipy.ndimage
from PIL import Image

import keras_vit
from keras_vit.weights import CheckpointError, named, read_checkpoint, resolve_weights
from keras_vit.weights.safetensors_reader import read_safetensors

TINY = dict(image_size=32, patch_size=4, hidden_dim=64, num_layers=2, num_heads=4, mlp_dim=128)
GOOGLE = "google_vit/i32_p4_token"
TIMM = "timm_vit/i32_p4_token"
HF = "hf_vit/i32_p4"
PARITY_TOLERANCE = 1e-4

# (weights, input file, input is NCHW, extra model options)
PARITY_CASES = {
    "google_npz": (f"{GOOGLE}/params.npz", f"{GOOGLE}/input.npy", False, {}),
    "google_linen_npz": (f"{GOOGLE}/params_linen.npz", f"{GOOGLE}/input.npy", False, {}),
    "timm_safetensors": (f"{TIMM}/model.safetensors", f"{TIMM}/input.npy", True, {}),
    # timm's npz export has the original naming but timm's (exact) GELU: say so explicitly.
    "timm_npz": (f"{TIMM}/params_vit_jax_format.npz", f"{TIMM}/input.npy", True, {"gelu_approximate": False}),
    "hf_folder": (HF, f"{HF}/pixel_values.npy", True, {}),
}


def _images(fixtures_dir, input_file, nchw):
    images = np.load(fixtures_dir / input_file)
    return images.transpose(0, 2, 3, 1) if nchw else images


def _logits_file(weights):
    return weights.split("/")[0] + "/" + weights.split("/")[1] + "/logits.npy"


def _max_diff(model, images, expected):
    return float(np.max(np.abs(np.asarray(model.predict(images, verbose=0)) - expected)))


def _weights_snapshot(model):
    return [np.array(w) for w in model.get_weights()]


def _write_npz(path, tensors):
    np.savez(path, **tensors)
    return str(path)


def _google_tensors(fixtures_dir):
    with np.load(fixtures_dir / GOOGLE / "params.npz", allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def _write_safetensors(path, tensors, dtypes=None):
    """A minimal safetensors writer (the format is simple enough to write by hand)."""
    header, chunks, offset = {}, [], 0
    for name, array in tensors.items():
        dtype = (dtypes or {}).get(name, "F32")
        raw = array.tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    header_bytes = json.dumps(header).encode()
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(header_bytes)) + header_bytes + b"".join(chunks))
    return str(path)


# --- parity -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_parity_with_reference_logits(fixtures_dir, case):
    weights, input_file, nchw, options = PARITY_CASES[case]
    model = keras_vit.VisionTransformer(weights=str(fixtures_dir / weights), **TINY, **options)
    diff = _max_diff(model, _images(fixtures_dir, input_file, nchw), np.load(fixtures_dir / _logits_file(weights)))
    assert diff <= PARITY_TOLERANCE, f"{case}: max abs logit difference {diff}"


def test_source_numerics_are_the_defaults(fixtures_dir):
    google = keras_vit.VisionTransformer(weights=str(fixtures_dir / GOOGLE / "params.npz"), **TINY)
    timm = keras_vit.VisionTransformer(weights=str(fixtures_dir / TIMM / "model.safetensors"), **TINY)
    hf = keras_vit.VisionTransformer(weights=str(fixtures_dir / HF), **TINY)
    block = lambda model: model.get_layer("encoder_block_0").get_config()  # noqa: E731
    assert block(google)["activation"] == "gelu_tanh" and block(google)["layer_norm_epsilon"] == 1e-6
    assert block(timm)["activation"] == "gelu" and block(timm)["layer_norm_epsilon"] == 1e-6
    assert block(hf)["activation"] == "gelu" and block(hf)["layer_norm_epsilon"] == 1e-12
    assert hf.get_layer("encoder_norm").epsilon == 1e-12
    assert google.output_shape == (None, 10)  # num_classes from the checkpoint's classifier


def test_explicit_gelu_choice_wins_and_matters(fixtures_dir, caplog):
    images = _images(fixtures_dir, f"{GOOGLE}/input.npy", False)
    expected = np.load(fixtures_dir / GOOGLE / "logits.npy")
    with caplog.at_level(logging.WARNING, logger="keras_vit.weights"):
        exact = keras_vit.VisionTransformer(weights=str(fixtures_dir / GOOGLE / "params.npz"), gelu_approximate=False, **TINY)
    assert exact.get_layer("encoder_block_0").activation == "gelu" and exact.vit_config.mlp_activation == "gelu"
    assert "GELU" in caplog.text
    assert _max_diff(exact, images, expected) > 1e-5  # the fixture README: about 1e-4


def test_load_weights_into_existing_model(fixtures_dir):
    model = keras_vit.VisionTransformer(num_classes=10, layer_norm_epsilon=1e-12, **TINY)
    assert keras_vit.load_weights(model, fixtures_dir / HF) is model
    diff = _max_diff(model, _images(fixtures_dir, f"{HF}/pixel_values.npy", True), np.load(fixtures_dir / HF / "logits.npy"))
    assert diff <= PARITY_TOLERANCE


def test_variant_builder_accepts_weights(fixtures_dir):
    overrides = {k: v for k, v in TINY.items() if k != "image_size"}
    model = keras_vit.ViTB16(weights=str(fixtures_dir / GOOGLE / "params.npz"), image_size=32, **overrides)
    diff = _max_diff(model, _images(fixtures_dir, f"{GOOGLE}/input.npy", False), np.load(fixtures_dir / GOOGLE / "logits.npy"))
    assert diff <= PARITY_TOLERANCE


# --- fine-tuning semantics --------------------------------------------------------------


def test_new_num_classes_recreates_zero_head_and_logs(fixtures_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="keras_vit.weights"):
        model = keras_vit.VisionTransformer(weights=str(fixtures_dir / GOOGLE / "params.npz"), num_classes=3, **TINY)
    head = model.get_layer("head")
    assert head.kernel.shape == (64, 3)
    assert not np.any(np.asarray(head.kernel)) and not np.any(np.asarray(head.bias))
    recreated = [r for r in caplog.records if "Re-created the classifier" in r.getMessage()]
    assert len(recreated) == 1 and "10 classes" in recreated[0].getMessage()
    # Everything below the head is the checkpoint's.
    features = keras.Model(model.input, model.get_layer("pooling").output)
    diff = _max_diff(features, _images(fixtures_dir, f"{GOOGLE}/input.npy", False), np.load(fixtures_dir / GOOGLE / "pre_logits.npy"))
    assert diff <= PARITY_TOLERANCE


def test_include_top_false_gives_the_pooled_features(fixtures_dir):
    model = keras_vit.VisionTransformer(weights=str(fixtures_dir / TIMM / "model.safetensors"), include_top=False, **TINY)
    assert "head" not in [layer.name for layer in model.layers]
    diff = _max_diff(model, _images(fixtures_dir, f"{TIMM}/input.npy", True), np.load(fixtures_dir / TIMM / "pre_logits.npy"))
    assert diff <= PARITY_TOLERANCE


def _with_pre_logits(fixtures_dir, tmp_path, size=32):
    tensors = _google_tensors(fixtures_dir)
    rng = np.random.RandomState(3)
    tensors["pre_logits/kernel"] = rng.normal(0, 0.2, (64, size)).astype(np.float32)
    tensors["pre_logits/bias"] = rng.normal(0, 0.2, (size,)).astype(np.float32)
    tensors["head/kernel"] = rng.normal(0, 0.2, (size, 10)).astype(np.float32)
    return tensors, _write_npz(tmp_path / "with_pre_logits.npz", tensors)


def test_pre_logits_kept_by_default(fixtures_dir, tmp_path):
    tensors, path = _with_pre_logits(fixtures_dir, tmp_path)
    model = keras_vit.VisionTransformer(weights=path, **TINY)
    assert model.get_layer("pre_logits").kernel.shape == (64, 32)
    pooled = np.load(fixtures_dir / GOOGLE / "pre_logits.npy")
    expected = np.tanh(pooled @ tensors["pre_logits/kernel"] + tensors["pre_logits/bias"]) @ tensors["head/kernel"] + tensors["head/bias"]
    assert _max_diff(model, _images(fixtures_dir, f"{GOOGLE}/input.npy", False), expected) <= PARITY_TOLERANCE


def test_pre_logits_dropped_when_asked(fixtures_dir, tmp_path, caplog):
    _, path = _with_pre_logits(fixtures_dir, tmp_path)
    with caplog.at_level(logging.WARNING, logger="keras_vit.weights"):
        model = keras_vit.VisionTransformer(weights=path, representation_size=None, **TINY)
    assert "pre_logits" not in [layer.name for layer in model.layers]
    assert "Dropped the checkpoint's pre-logits layer" in caplog.text
    assert "Re-created the classifier" in caplog.text  # it sat on the dropped layer
    assert not np.any(np.asarray(model.get_layer("head").kernel))


# --- position-embedding resize ----------------------------------------------------------


def _checkpoint_grid(fixtures_dir, path):
    embedding = read_checkpoint(fixtures_dir / path).mapped("position_embedding/embedding")
    return embedding[0, :1], embedding[0, 1:].reshape(8, 8, 64)


def _pil_bicubic(grid, size):
    """PIL's bicubic (a = -0.5, antialiased when shrinking) per channel: what timm's
    F.interpolate(bicubic, antialias=True) computes."""
    return np.stack(
        [np.asarray(Image.fromarray(np.ascontiguousarray(grid[..., c])).resize((size[1], size[0]), Image.BICUBIC)) for c in range(grid.shape[-1])],
        axis=-1,
    )


@pytest.mark.parametrize(
    "weights, image_size, reference",
    [
        (f"{GOOGLE}/params.npz", (48, 48), "bilinear"),
        (f"{GOOGLE}/params.npz", (32, 48), "bilinear"),  # non-square target grid 8x12
        (f"{TIMM}/model.safetensors", (48, 48), "bicubic"),
        (f"{TIMM}/model.safetensors", (48, 40), "bicubic"),
    ],
)
def test_position_embedding_resized_like_the_source(fixtures_dir, caplog, weights, image_size, reference):
    with caplog.at_level(logging.WARNING, logger="keras_vit.weights"):
        model = keras_vit.VisionTransformer(weights=str(fixtures_dir / weights), **{**TINY, "image_size": image_size})
    grid = (image_size[0] // 4, image_size[1] // 4)
    assert f"8x8 patch grid to {grid[0]}x{grid[1]} ({reference})" in caplog.text
    cls_row, source = _checkpoint_grid(fixtures_dir, weights)
    if reference == "bilinear":  # the original vit_jax code: scipy.ndimage.zoom, order=1
        expected = scipy.ndimage.zoom(source.astype(np.float64), (grid[0] / 8, grid[1] / 8, 1), order=1)
    else:
        expected = _pil_bicubic(source, grid)
    loaded = np.asarray(model.get_layer("position_embedding").embedding)[0]
    np.testing.assert_allclose(loaded[:1], cls_row, atol=0)
    np.testing.assert_allclose(loaded[1:].reshape(*grid, 64), expected, atol=1e-5)


def test_resized_model_matches_an_independent_rebuild(fixtures_dir):
    """A 48 px model loaded from the 32 px checkpoint equals the same model assembled by hand
    with scipy's zoom of the position embedding (the original code's own interpolation)."""
    path = str(fixtures_dir / GOOGLE / "params.npz")
    loaded = keras_vit.VisionTransformer(weights=path, **{**TINY, "image_size": 48})
    manual = keras_vit.VisionTransformer(weights=path, **TINY)
    rebuilt = keras_vit.VisionTransformer(num_classes=10, gelu_approximate=True, **{**TINY, "image_size": 48})
    for source_layer, target_layer in zip(manual.layers, rebuilt.layers):
        if source_layer.name != "position_embedding":
            target_layer.set_weights(source_layer.get_weights())
    cls_row, source = _checkpoint_grid(fixtures_dir, f"{GOOGLE}/params.npz")
    zoomed = scipy.ndimage.zoom(source.astype(np.float64), (1.5, 1.5, 1), order=1).reshape(1, 144, 64)
    rebuilt.get_layer("position_embedding").embedding.assign(np.concatenate([cls_row[None], zoomed], axis=1).astype(np.float32))
    images = np.random.RandomState(0).uniform(-1, 1, (2, 48, 48, 3)).astype(np.float32)
    reference = np.asarray(rebuilt.predict(images, verbose=0))
    assert _max_diff(loaded, images, reference) <= 1e-5


def test_resize_method_override_and_same_size_is_exact(fixtures_dir):
    model = keras_vit.VisionTransformer(num_classes=10, **{**TINY, "image_size": 48})
    keras_vit.load_weights(model, fixtures_dir / GOOGLE / "params.npz", resize_method="bicubic")
    _, source = _checkpoint_grid(fixtures_dir, f"{GOOGLE}/params.npz")
    loaded = np.asarray(model.get_layer("position_embedding").embedding)[0, 1:].reshape(12, 12, 64)
    np.testing.assert_allclose(loaded, _pil_bicubic(source, (12, 12)), atol=1e-5)
    same = keras_vit.VisionTransformer(weights=str(fixtures_dir / GOOGLE / "params.npz"), **TINY)
    stored = read_checkpoint(fixtures_dir / GOOGLE / "params.npz").tensors["Transformer/posembed_input/pos_embedding"]
    np.testing.assert_array_equal(np.asarray(same.get_layer("position_embedding").embedding), stored)


# --- saving -----------------------------------------------------------------------------


@pytest.mark.parametrize("source", [f"{GOOGLE}/params.npz", HF])
def test_loaded_model_carries_what_the_checkpoint_decided_through_save_and_reload(fixtures_dir, tmp_path, source):
    model = keras_vit.VisionTransformer(weights=str(fixtures_dir / source), **TINY)
    config = model.vit_config
    # What the checkpoint decided is in the config: its classifier and its source's numerics.
    assert config.num_classes == 10
    assert (config.mlp_activation, config.layer_norm_epsilon) == (("gelu_tanh", 1e-6) if source.endswith(".npz") else ("gelu", 1e-12))
    path = tmp_path / "loaded.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert reloaded.vit_config == config
    images = _images(fixtures_dir, *((f"{GOOGLE}/input.npy", False) if source.endswith(".npz") else (f"{HF}/pixel_values.npy", True)))
    np.testing.assert_array_equal(np.asarray(reloaded.predict(images, verbose=0)), np.asarray(model.predict(images, verbose=0)))
    assert _max_diff(reloaded, images, np.load(fixtures_dir / _logits_file(source if source.endswith(".npz") else HF + "/x"))) <= PARITY_TOLERANCE


# --- named weights and URLs -------------------------------------------------------------


def test_named_weights_table_has_augreg_checkpoints():
    for variant in ("ViTTi16", "ViTS16", "ViTB16", "ViTB32", "ViTL16"):
        names = keras_vit.weights.PRETRAINED_WEIGHTS[variant]
        assert names["augreg_in21k"].url.startswith("https://storage.googleapis.com/vit_models/augreg/")
        assert names["augreg_in21k"].num_classes == 21843
        assert names["augreg_in21k_ft_in1k"].url.endswith("--imagenet2012-steps_20k-lr_0.01-res_224.npz") or names[
            "augreg_in21k_ft_in1k"
        ].url.endswith("--imagenet2012-steps_20k-lr_0.03-res_224.npz")
        assert names["augreg_in21k_ft_in1k"].url.startswith(names["augreg_in21k"].url[: -len(".npz")])


def test_url_is_fetched_into_the_cache(fixtures_dir, tmp_path, monkeypatch):
    cache = tmp_path / "keras_home" / "models"
    monkeypatch.setattr(named, "weights_cache_dir", lambda: str(cache))
    url = (fixtures_dir / GOOGLE / "params.npz").resolve().as_uri()  # file://, no network
    model = keras_vit.VisionTransformer(weights=url, **TINY)
    assert (cache / "params.npz").is_file()
    diff = _max_diff(model, _images(fixtures_dir, f"{GOOGLE}/input.npy", False), np.load(fixtures_dir / GOOGLE / "logits.npy"))
    assert diff <= PARITY_TOLERANCE


def test_named_weights_offline_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(named, "weights_cache_dir", lambda: str(tmp_path / "models"))

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] no network")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    url = keras_vit.weights.PRETRAINED_WEIGHTS["ViTTi16"]["augreg_in21k"].url
    with pytest.raises(CheckpointError) as error:
        keras_vit.ViTTi16(weights="augreg_in21k")
    message = str(error.value)
    assert url in message
    assert str(tmp_path / "models" / os.path.basename(url)) in message
    # A file already at that place is used without downloading.
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "models" / os.path.basename(url)).write_bytes(b"")
    assert resolve_weights("augreg_in21k", "ViTTi16") == str(tmp_path / "models" / os.path.basename(url))


def test_unknown_weights_name_lists_the_known_ones():
    with pytest.raises(CheckpointError, match="augreg_in21k_ft_in1k"):
        resolve_weights("imagenet", "ViTB16")


# --- bad checkpoints --------------------------------------------------------------------


def _assert_untouched(model, before):
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_checkpoint_of_another_variant(fixtures_dir):
    model = keras_vit.VisionTransformer(num_classes=10, **{**TINY, "hidden_dim": 96, "num_heads": 4, "num_layers": 3})
    before = _weights_snapshot(model)
    with pytest.raises(CheckpointError) as error:
        keras_vit.load_weights(model, fixtures_dir / TIMM / "model.safetensors")
    assert "hidden_dim: checkpoint 64, model 96" in str(error.value)
    assert "num_layers: checkpoint 2, model 3" in str(error.value)
    _assert_untouched(model, before)
    with pytest.raises(CheckpointError, match="num_heads: checkpoint 4, model 2"):
        keras_vit.VisionTransformer(weights=str(fixtures_dir / GOOGLE / "params.npz"), **{**TINY, "num_heads": 2})
    with pytest.raises(CheckpointError, match="patch_size: checkpoint"):
        keras_vit.VisionTransformer(weights=str(fixtures_dir / HF), **{**TINY, "patch_size": 8})


@pytest.mark.parametrize("file_name", ["params.npz", "model.safetensors"])
def test_truncated_file_names_the_file(fixtures_dir, tmp_path, file_name):
    source = fixtures_dir / (GOOGLE if file_name.endswith(".npz") else TIMM) / file_name
    truncated = tmp_path / file_name
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    model = keras_vit.VisionTransformer(num_classes=10, **TINY)
    before = _weights_snapshot(model)
    with pytest.raises(CheckpointError, match=str(truncated)):
        keras_vit.load_weights(model, truncated)
    _assert_untouched(model, before)


def test_missing_extra_and_misshapen_tensors_are_all_listed(fixtures_dir, tmp_path):
    tensors = _google_tensors(fixtures_dir)
    del tensors["Transformer/encoderblock_1/LayerNorm_2/scale"]
    tensors["Transformer/encoderblock_0/MlpBlock_3/Dense_0/bias"] = np.zeros(127, np.float32)
    tensors["Transformer/encoderblock_0/extra/kernel"] = np.zeros(3, np.float32)
    path = _write_npz(tmp_path / "bad.npz", tensors)
    model = keras_vit.VisionTransformer(num_classes=10, **TINY)
    before = _weights_snapshot(model)
    with pytest.raises(CheckpointError) as error:
        keras_vit.load_weights(model, path)
    message = str(error.value)
    assert "nothing was loaded" in message
    assert "encoder_block_1/mlp_norm/gamma" in message  # missing
    assert "Transformer/encoderblock_0/extra/kernel" in message  # unexpected
    assert "encoder_block_0/mlp_dense_1/bias: checkpoint [127], model [128]" in message  # shape
    _assert_untouched(model, before)


def test_checkpoint_without_a_class_token_builds_a_gap_model_and_refuses_token_pooling(fixtures_dir, tmp_path):
    tensors = _google_tensors(fixtures_dir)
    del tensors["cls"]
    tensors["Transformer/posembed_input/pos_embedding"] = tensors["Transformer/posembed_input/pos_embedding"][:, 1:]
    path = _write_npz(tmp_path / "gap.npz", tensors)
    model = keras_vit.VisionTransformer(weights=path, **TINY)  # what the tensors show
    assert model.vit_config.pooling == "gap" and "class_token" not in [layer.name for layer in model.layers]
    with pytest.raises(CheckpointError, match=r"pooling='token' was passed, the checkpoint shows pooling='gap'"):
        keras_vit.VisionTransformer(weights=path, pooling="token", **TINY)
    token_model = keras_vit.VisionTransformer(num_classes=10, **TINY)
    before = _weights_snapshot(token_model)
    with pytest.raises(CheckpointError, match="class token: the checkpoint has no such part, the model has"):
        keras_vit.load_weights(token_model, path)
    _assert_untouched(token_model, before)


def test_unreadable_sources(fixtures_dir, tmp_path):
    model = keras_vit.VisionTransformer(num_classes=10, **TINY)
    with pytest.raises(CheckpointError, match="does not exist"):
        keras_vit.load_weights(model, tmp_path / "nowhere.npz")
    (tmp_path / "pytorch_model.bin").write_bytes(b"PK\x03\x04")
    with pytest.raises(CheckpointError, match="torch pickle"):
        keras_vit.load_weights(model, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="No model.safetensors"):
        keras_vit.load_weights(model, tmp_path)
    with pytest.raises(CheckpointError, match="Cannot tell the format"):
        keras_vit.load_weights(model, _write_npz(tmp_path / "other.npz", {"conv1/kernel": np.zeros(3, np.float32)}))
    object_array = tmp_path / "pickled.npz"
    np.savez(object_array, **{"embedding/kernel": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(CheckpointError, match="pickled.npz"):
        keras_vit.load_weights(model, object_array)


def test_hf_config_that_keras_vit_cannot_reproduce(fixtures_dir, tmp_path):
    folder = tmp_path / "hf"
    shutil.copytree(fixtures_dir / HF, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    with pytest.raises(CheckpointError, match="hidden_act 'relu'"):
        keras_vit.VisionTransformer(weights=str(folder), **TINY)


# --- safetensors reader -----------------------------------------------------------------


def test_safetensors_reader_dtypes(tmp_path):
    values = np.array([[1.5, -2.25], [3.0, 0.1]], np.float32)
    bfloat16 = (values.view(np.uint32) >> 16).astype(np.uint16)  # truncation of float32
    path = _write_safetensors(
        tmp_path / "t.safetensors",
        {"f32": values, "f16": values.astype(np.float16), "bf16": bfloat16, "i64": np.arange(3, dtype=np.int64)},
        dtypes={"f16": "F16", "bf16": "BF16", "i64": "I64"},
    )
    tensors = read_safetensors(path)
    np.testing.assert_array_equal(tensors["f32"], values)
    np.testing.assert_array_equal(tensors["f16"], values.astype(np.float16))
    np.testing.assert_array_equal(tensors["bf16"], (bfloat16.astype(np.uint32) << 16).view(np.float32))
    assert tensors["bf16"].dtype == np.float32 and tensors["bf16"].shape == (2, 2)
    np.testing.assert_array_equal(tensors["i64"], np.arange(3))


def test_non_square_checkpoint_grid(fixtures_dir, tmp_path):
    tensors = _google_tensors(fixtures_dir)
    cls_row, source = _checkpoint_grid(fixtures_dir, f"{GOOGLE}/params.npz")
    wide = scipy.ndimage.zoom(source.astype(np.float64), (1, 1.5, 1), order=1).astype(np.float32)  # 8x12
    tensors["Transformer/posembed_input/pos_embedding"] = np.concatenate([cls_row[None], wide.reshape(1, 96, 64)], axis=1)
    path = _write_npz(tmp_path / "wide.npz", tensors)
    model = keras_vit.VisionTransformer(num_classes=10, gelu_approximate=True, **TINY)
    with pytest.raises(CheckpointError, match="source_grid_size"):
        keras_vit.load_weights(model, path)
    keras_vit.load_weights(model, path, source_grid_size=(8, 12))
    loaded = np.asarray(model.get_layer("position_embedding").embedding)[0, 1:].reshape(8, 8, 64)
    expected = scipy.ndimage.zoom(wide.astype(np.float64), (1, 8 / 12, 1), order=1)
    np.testing.assert_allclose(loaded, expected, atol=1e-5)
