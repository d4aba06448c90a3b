"""The ViT families (DeiT-3, DINOv2 with registers, timm *_gap, MAE, CLIP, SigLIP, DeiT
distilled): each option against a NumPy forward pass, parity with timm on the shared
fixtures with the options read from the checkpoint, bad checkpoints, named weights, and
the model working end to end (mixed precision, fit, save/reload) for every family."""

import json
import math
import struct

import keras
import numpy as np
import pytest
from conftest import randomise
from test_layers import np_gelu, np_layer_norm

import keras_vit
from keras_vit.weights import CheckpointError, inspect_checkpoint, named

# The fixtures' architecture: 32x32 images, patch 4, width 64, 2 blocks of 4 heads, MLP 128.
BASE = dict(image_size=32, patch_size=4, hidden_dim=64, num_layers=2, num_heads=4, mlp_dim=128)
TINY = dict(image_size=16, patch_size=4, hidden_dim=32, num_layers=2, num_heads=4, mlp_dim=64, num_classes=5)
# Each family as ViTConfig options.
FAMILIES = {
    "deit3": dict(layer_scale_init=0.1, embed_prefix_tokens=False),
    "dinov2_reg4": dict(layer_scale_init=0.1, num_register_tokens=4, embed_prefix_tokens=False),
    "reg4_gap": dict(class_token=False, num_register_tokens=4, embed_prefix_tokens=False, pooling="gap", fc_norm=True),
    "mae_avg": dict(class_token=True, pooling="gap", fc_norm=True),
    "max": dict(pooling="max"),  # no class token (as gap); timm global_pool="max"
    "token_max_fc_norm": dict(class_token=True, pooling="max", fc_norm=True),
    "clip": dict(pre_norm=True, patch_bias=False, mlp_activation="quick_gelu"),
    "siglip_map": dict(pooling="map"),
    "deit_distilled": dict(distillation_token=True),
}
# fixture folder -> (the family options the checkpoint shows, keywords the test passes)
FIXTURES = {
    "i32_p4_deit3": (dict(layer_scale_init=1e-5, embed_prefix_tokens=False, class_token=True, pooling="token"), {}),
    "i32_p4_reg4_gap": (dict(num_register_tokens=4, class_token=False, embed_prefix_tokens=False, pooling="gap", fc_norm=True), {}),
    "i32_p4_mae_avg": (dict(class_token=True, pooling="gap", fc_norm=True), {}),
    "i32_p4_clip_quickgelu": (dict(pre_norm=True, patch_bias=False, mlp_activation="quick_gelu"), dict(mlp_activation="quick_gelu")),
    "i32_p4_map": (dict(class_token=False, pooling="map"), {}),
    "i32_p4_distilled": (dict(distillation_token=True, class_token=True, pooling="token"), {}),
}
TOLERANCE = 1e-4


# ----------------------------------------------------------------------------- NumPy reference


def np_quick_gelu(x):
    return x / (1 + np.exp(-1.702 * x))


def np_heads_attention(q, k, v, heads):
    """q [B, Q, D], k and v [B, T, D] -> [B, Q, D], softmax(q k^T / sqrt(d)) v per head."""
    b, d = q.shape[0], q.shape[-1]
    split = lambda a: a.reshape(b, a.shape[1], heads, d // heads).transpose(0, 2, 1, 3)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d // heads)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return (probs @ v).transpose(0, 2, 1, 3).reshape(b, -1, d)


def np_vit(w, c, images):
    """A ViT forward pass in NumPy from the model's weights {variable path: array} and its
    ViTConfig: written from the papers' and timm's descriptions, not from keras_vit's code."""
    act = {"gelu": np_gelu, "quick_gelu": np_quick_gelu}[c.mlp_activation]
    ln = lambda x, name: np_layer_norm(x, w[f"{name}/gamma"], w[f"{name}/beta"], c.layer_norm_epsilon)  # noqa: E731
    b, (ph, pw), d = len(images), c.patch_size, c.hidden_dim
    gh, gw = c.grid_size
    patches = images.reshape(b, gh, ph, gw, pw, -1).transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, -1)
    x = patches @ w["patch_embedding/projection/kernel"].reshape(-1, d)
    if c.patch_bias:
        x = x + w["patch_embedding/projection/bias"]
    prefix = []
    for name, wanted in (("class_token", c.class_token), ("distillation_token", c.distillation_token), ("register_tokens", c.num_register_tokens)):
        if wanted:
            prefix.append(np.repeat(w[f"{name}/token"], b, axis=0))
    if c.embed_prefix_tokens:
        x = np.concatenate(prefix + [x], axis=1) + w["position_embedding/embedding"]
    else:  # the grid alone has positions
        x = np.concatenate(prefix + [x + w["position_embedding/embedding"]], axis=1)
    if c.pre_norm:
        x = ln(x, "pre_norm")
    for i in range(c.num_layers):
        block = f"encoder_block_{i}"
        h = ln(x, f"{block}/attention_norm")
        q, k, v = np.split(h @ w[f"{block}/attention/qkv/kernel"] + w[f"{block}/attention/qkv/bias"], 3, axis=-1)
        branch = np_heads_attention(q, k, v, c.num_heads) @ w[f"{block}/attention/output/kernel"] + w[f"{block}/attention/output/bias"]
        x = x + branch * (w[f"{block}/attention_scale/gamma"] if c.layer_scale_init else 1.0)
        h = act(ln(x, f"{block}/mlp_norm") @ w[f"{block}/mlp_dense_1/kernel"] + w[f"{block}/mlp_dense_1/bias"])
        branch = h @ w[f"{block}/mlp_dense_2/kernel"] + w[f"{block}/mlp_dense_2/bias"]
        x = x + branch * (w[f"{block}/mlp_scale/gamma"] if c.layer_scale_init else 1.0)
    if not c.fc_norm:
        x = ln(x, "encoder_norm")
    n = c.num_prefix_tokens
    if c.pooling == "token":
        pooled = x[:, 0]
    elif c.pooling == "gap":
        pooled = x[:, n:].mean(1)
    elif c.pooling == "max":
        pooled = x[:, n:].max(1)
    else:  # MAP: a learned query attends to the patch tokens, then x + MLP(LN(x))
        p = "attention_pooling"
        query = np.repeat(w[f"{p}/latent"], b, axis=0) @ w[f"{p}/query/kernel"] + w[f"{p}/query/bias"]
        k, v = np.split(x[:, n:] @ w[f"{p}/key_value/kernel"] + w[f"{p}/key_value/bias"], 2, axis=-1)
        pooled = (np_heads_attention(query, k, v, c.num_heads) @ w[f"{p}/output/kernel"] + w[f"{p}/output/bias"])[:, 0]
        normed = np_layer_norm(pooled, w[f"{p}/norm/gamma"], w[f"{p}/norm/beta"], c.layer_norm_epsilon)
        mlp = act(normed @ w[f"{p}/mlp_dense_1/kernel"] + w[f"{p}/mlp_dense_1/bias"])
        pooled = pooled + mlp @ w[f"{p}/mlp_dense_2/kernel"] + w[f"{p}/mlp_dense_2/bias"]
    if c.fc_norm:
        pooled = ln(pooled, "fc_norm")
    logits = pooled @ w["head/kernel"] + w["head/bias"]
    if c.distillation_token:  # DeiT at inference: the mean of both classifiers
        logits = (logits + x[:, 1] @ w["head_dist/kernel"] + w["head_dist/bias"]) / 2
    return logits


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_matches_the_numpy_forward_pass(family):
    model = keras_vit.VisionTransformer(**TINY, **FAMILIES[family])
    randomise(model, seed=3, scale=0.3)
    weights = {v.path: np.asarray(v) for v in model.weights}
    images = np.random.RandomState(1).uniform(-1, 1, (3, 16, 16, 3)).astype("float32")
    expected = np_vit(weights, model.vit_config, images.astype(np.float64))
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=1e-4)


def test_the_plain_vit_is_unchanged_by_the_new_options():
    model = keras_vit.VisionTransformer(**TINY)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["InputLayer", "PatchEmbedding", "ClassToken", "PositionEmbedding", "Dropout",
                     "TransformerBlock", "TransformerBlock", "LayerNorm", "TokenPooling", "Dense"]
    block = model.get_layer("encoder_block_0")
    assert block.attention_scale is None and block.activation == "gelu" and model.get_layer("patch_embedding").use_bias
    assert [v.path for v in model.weights if not v.path.startswith("encoder_block")] == [
        "patch_embedding/projection/kernel", "patch_embedding/projection/bias", "class_token/token",
        "position_embedding/embedding", "encoder_norm/gamma", "encoder_norm/beta", "head/kernel", "head/bias",
    ]


# ----------------------------------------------------------------------------- parity with timm


def _fixture(fixtures_dir, name):
    folder = fixtures_dir / "timm_vit" / name
    return folder, np.load(folder / "input.npy").transpose(0, 2, 3, 1)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_family_checkpoints_reproduce_timm_with_the_options_read_from_them(fixtures_dir, name):
    folder, images = _fixture(fixtures_dir, name)
    shown, passed = FIXTURES[name]
    model = keras_vit.VisionTransformer(weights=str(folder / "model.safetensors"), **BASE, **passed)
    config = model.vit_config
    for key, value in shown.items():
        assert getattr(config, key) == value, key
    assert np.abs(model.predict(images, verbose=0) - np.load(folder / "logits.npy")).max() <= TOLERANCE
    # The pooled features (timm's pre_logits: for DeiT distilled the mean of both tokens) and
    # the token sequence (timm's forward_features: after the final norm, none with fc_norm).
    features = keras_vit.VisionTransformer(weights=str(folder / "model.safetensors"), include_top=False, **BASE, **passed)
    assert np.abs(features.predict(images, verbose=0) - np.load(folder / "pre_logits.npy")).max() <= TOLERANCE
    tokens = keras_vit.VisionTransformer(weights=str(folder / "model.safetensors"), include_top=False, pooling=None, **BASE, **passed)
    assert np.abs(tokens.predict(images, verbose=0) - np.load(folder / "features.npy")).max() <= TOLERANCE


@pytest.mark.parametrize("pooling, reduce", [("avg", np.mean), ("gap", np.mean), ("max", np.max)])
def test_patch_pooling_of_a_class_token_checkpoint_pools_timms_patch_features(fixtures_dir, pooling, reduce):
    """timm's `global_pool="avg"` / `"max"` on a class-token model: the mean or maximum of
    the patch tokens of `forward_features` (the class token left out); "avg" is
    keras.applications' name for "gap"."""
    folder, images = _fixture(fixtures_dir, "i32_p4_token")
    model = keras_vit.VisionTransformer(weights=str(folder / "model.safetensors"), include_top=False, pooling=pooling, **BASE)
    assert model.vit_config.pooling == {"avg": "gap"}.get(pooling, pooling) and model.vit_config.class_token
    expected = reduce(np.load(folder / "features.npy")[:, 1:], axis=1)
    assert np.abs(model.predict(images, verbose=0) - expected).max() <= TOLERANCE


def test_grid_only_position_embedding_is_resized_as_timm_does(fixtures_dir):
    """DeiT-3 at 48 px from its 32 px checkpoint: timm's checkpoint_filter_fn resamples the
    grid-only embedding (bicubic, antialias) with no prefix rows."""
    folder, images = _fixture(fixtures_dir, "i32_p4_deit3_at48")
    model = keras_vit.VisionTransformer(weights=str(fixtures_dir / "timm_vit/i32_p4_deit3/model.safetensors"), **{**BASE, "image_size": 48})
    resampled = np.load(folder / "pos_embed_resampled.npy")
    assert np.abs(np.asarray(model.get_layer("position_embedding").embedding) - resampled).max() <= 1e-5
    assert np.abs(model.predict(images, verbose=0) - np.load(folder / "logits.npy")).max() <= TOLERANCE


def _write_safetensors(path, tensors):
    header, chunks, offset = {}, [], 0
    for name, array in tensors.items():
        raw = np.ascontiguousarray(array, np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks))
    return str(path)


def _read_safetensors(path):
    from keras_vit.weights.safetensors_reader import read_safetensors

    return read_safetensors(path)


def test_openai_clip_checkpoint_loads_with_quick_gelu_and_its_projection(fixtures_dir, tmp_path):
    """The CLIP fixture rewritten in OpenAI's naming (`visual.*`, as OpenCLIP's files hold
    it, next to a text tower): QuickGELU comes from the source's rules, the projection
    (no bias) is the classifier."""
    folder, images = _fixture(fixtures_dir, "i32_p4_clip_quickgelu")
    timm = _read_safetensors(folder / "model.safetensors")
    openai = {
        "visual.conv1.weight": timm["patch_embed.proj.weight"],
        "visual.class_embedding": timm["cls_token"].reshape(-1),
        "visual.positional_embedding": timm["pos_embed"][0],
        "visual.ln_pre.weight": timm["norm_pre.weight"], "visual.ln_pre.bias": timm["norm_pre.bias"],
        "visual.ln_post.weight": timm["norm.weight"], "visual.ln_post.bias": timm["norm.bias"],
        "visual.proj": timm["head.weight"].T,
        "transformer.resblocks.0.ln_1.weight": np.ones(8), "token_embedding.weight": np.zeros((3, 8)),  # the text tower
    }
    renames = {"norm1": "ln_1", "norm2": "ln_2", "attn.qkv.weight": "attn.in_proj_weight", "attn.qkv.bias": "attn.in_proj_bias",
               "attn.proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    for key, value in timm.items():
        if key.startswith("blocks."):
            rest = key.split(".", 2)[2]
            for old, new in renames.items():
                rest = rest.replace(old, new)
            openai[f"visual.transformer.resblocks.{key.split('.')[1]}.{rest}"] = value
    model = keras_vit.VisionTransformer(weights=_write_safetensors(tmp_path / "open_clip_model.safetensors", openai), **BASE)
    config = model.vit_config
    assert (config.mlp_activation, config.layer_norm_epsilon, config.pre_norm, config.patch_bias) == ("quick_gelu", 1e-5, True, False)
    # The fixture was made with eps 1e-6 and a head bias: the embedding is pre_logits @ proj.
    model = keras_vit.VisionTransformer(weights=str(tmp_path / "open_clip_model.safetensors"), layer_norm_epsilon=1e-6, **BASE)
    expected = np.load(folder / "pre_logits.npy") @ timm["head.weight"].T
    assert np.abs(model.predict(images, verbose=0) - expected).max() <= TOLERANCE


# ----------------------------------------------------------------------------- bad checkpoints


def _weights_of(model):
    return [np.array(w) for w in model.get_weights()]


@pytest.mark.parametrize("block, tensor", [(1, "ls2"), (0, "ls1")])  # block 0 is where the family is read
def test_a_family_tensor_missing_is_listed_and_nothing_is_assigned(fixtures_dir, tmp_path, block, tensor):
    tensors = _read_safetensors(fixtures_dir / "timm_vit/i32_p4_deit3/model.safetensors")
    del tensors[f"blocks.{block}.{tensor}.gamma"]
    path = _write_safetensors(tmp_path / "deit3.safetensors", tensors)
    model = keras_vit.VisionTransformer(num_classes=10, layer_scale_init=0.1, embed_prefix_tokens=False, **BASE)
    before = _weights_of(model)
    target = f"encoder_block_{block}/{'attention' if tensor == 'ls1' else 'mlp'}_scale/gamma"
    with pytest.raises(CheckpointError, match=rf"missing tensor blocks\.{block}\.{tensor}\.gamma \(for {target}"):
        keras_vit.load_weights(model, path)
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)


@pytest.mark.parametrize(
    "name, keywords, message",
    [
        ("i32_p4_deit3", dict(layer_scale_init=None), "layer_scale_init=None was passed, the checkpoint shows layer_scale_init=1e-05"),
        ("i32_p4_reg4_gap", dict(num_register_tokens=2), "num_register_tokens=2 was passed, the checkpoint shows num_register_tokens=4"),
        ("i32_p4_map", dict(pooling="token"), "pooling='token' was passed, the checkpoint shows pooling='map'"),
        ("i32_p4_distilled", dict(distillation_token=False), "distillation_token=False was passed, the checkpoint shows distillation_token=True"),
        ("i32_p4_clip_quickgelu", dict(patch_bias=True), "patch_bias=True was passed, the checkpoint shows patch_bias=False"),
        ("i32_p4_mae_avg", dict(fc_norm=False), "fc_norm=False was passed, the checkpoint shows fc_norm=True"),
    ],
)
def test_a_keyword_that_contradicts_the_checkpoint_names_both(fixtures_dir, name, keywords, message):
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        keras_vit.VisionTransformer(weights=str(fixtures_dir / "timm_vit" / name / "model.safetensors"), **BASE, **keywords)


def test_registers_of_the_wrong_count_in_an_existing_model(fixtures_dir):
    model = keras_vit.VisionTransformer(num_classes=10, **BASE, **{**FAMILIES["reg4_gap"], "num_register_tokens": 2})
    before = _weights_of(model)
    with pytest.raises(CheckpointError, match="register tokens: the checkpoint has 4, the model 2"):
        keras_vit.load_weights(model, fixtures_dir / "timm_vit/i32_p4_reg4_gap/model.safetensors")
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_building_from_a_checkpoint_and_loading_into_a_model_follow_one_rule(fixtures_dir):
    """`VisionTransformer(weights=...)` refuses what `load_weights` refuses, and both accept
    the same: a class token pooled where the checkpoint's fc_norm says mean pooling is refused
    by both; a grid-only position embedding asked of a model without prefix tokens (the same
    embedding either way) is accepted by both."""
    mae = fixtures_dir / "timm_vit/i32_p4_mae_avg/model.safetensors"
    token_pooled = dict(class_token=True, pooling="token", fc_norm=True)
    with pytest.raises(CheckpointError, match="pooling='token' was passed, the checkpoint shows pooling='gap'"):
        keras_vit.VisionTransformer(weights=str(mae), **BASE, **token_pooled)
    model = keras_vit.VisionTransformer(num_classes=10, **BASE, **token_pooled)
    before = _weights_of(model)
    with pytest.raises(CheckpointError, match="the pooling head: the checkpoint shows pooling='gap', the model has pooling='token'"):
        keras_vit.load_weights(model, mae)
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)

    siglip = fixtures_dir / "timm_vit/i32_p4_map/model.safetensors"  # no class token, no registers
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    built = keras_vit.VisionTransformer(weights=str(siglip), **BASE, embed_prefix_tokens=False)
    default = keras_vit.VisionTransformer(weights=str(siglip), **BASE)
    loaded = keras_vit.VisionTransformer(num_classes=10, **BASE, **FIXTURES["i32_p4_map"][0], embed_prefix_tokens=False)
    keras_vit.load_weights(loaded, siglip)
    for model in (built, loaded):
        np.testing.assert_allclose(model.predict(images, verbose=0), default.predict(images, verbose=0), atol=1e-6)


def test_inspect_checkpoint_says_what_would_be_built(fixtures_dir):
    found = inspect_checkpoint(fixtures_dir / "timm_vit/i32_p4_reg4_gap/model.safetensors")
    assert found["format"] == "timm" and found["grid"] == (8, 8) and found["num_classes"] == 10
    assert found["sizes"] == dict(hidden_dim=64, num_layers=2, num_heads=None, mlp_dim=128, patch_size=(4, 4), num_channels=3)
    options = found["options"]
    assert (options["num_register_tokens"], options["class_token"], options["embed_prefix_tokens"]) == (4, False, False)
    assert (options["pooling"], options["fc_norm"], options["layer_scale"], options["mlp_activation"]) == ("gap", True, False, "gelu")
    distilled = inspect_checkpoint(fixtures_dir / "timm_vit/i32_p4_distilled/model.safetensors")["options"]
    assert distilled["distillation_token"] and distilled["embed_prefix_tokens"] and distilled["pooling"] == "token"


# ----------------------------------------------------------------------------- named weights


def test_family_weights_in_the_named_table_say_how_to_use_them():
    table = keras_vit.weights.PRETRAINED_WEIGHTS
    expected = {
        ("ViTS16", "deit3_in1k"): ("deit3_small_patch16_224.fb_in1k", "timm", 1000, "imagenet1k"),
        ("ViTB14", "dinov2_reg4"): ("vit_base_patch14_reg4_dinov2.lvd142m", "timm", None, None),
        ("ViTB16", "clip_openai"): ("vit_base_patch16_clip_224.openai/resolve/main/open_clip_model.safetensors", "openai_clip", 512, None),
        ("ViTB16", "siglip_webli"): ("vit_base_patch16_siglip_224.webli", "timm", None, None),
        ("ViTB16", "mae"): ("vit_base_patch16_224.mae", "timm", None, None),
        ("ViTTi16", "deit_distilled_in1k"): ("deit_tiny_distilled_patch16_224.fb_in1k", "timm", 1000, "imagenet1k"),
    }
    for (variant, name), (url_part, fmt, classes, labels) in expected.items():
        entry = table[variant][name]
        assert url_part in entry.url and entry.url.startswith("https://huggingface.co/timm/")
        assert (entry.format, entry.num_classes, entry.labels) == (fmt, classes, labels)
    assert table["ViTS14"]["dinov2"].image_size == 518 and table["ViTS14"]["dinov2"].options == {"layer_scale_init": 1e-5}
    assert table["ViTB16"]["clip_openai_ft_in1k"].options == {"layer_norm_epsilon": 1e-5}
    assert table["ViTB16"]["deit3_in1k"].preprocessing.mean == (0.485, 0.456, 0.406)
    fields = set(keras_vit.ViTConfig.__dataclass_fields__)
    for variant, entries in table.items():
        for name, entry in entries.items():
            assert set(entry.options) <= fields, (variant, name)
            assert entry.format in ("npz", "timm", "hf", "openai_clip")
    # Hub files are all called model.safetensors: the cache names them by repository.
    assert named._cache_name(table["ViTS16"]["deit3_in1k"].url) == "timm--deit3_small_patch16_224.fb_in1k--model.safetensors"


def test_named_family_weights_carry_their_preprocessing_labels_and_options(fixtures_dir, tmp_path, monkeypatch):
    """A named entry, here pointing at the DeiT-3 fixture by file:// (nothing downloads): the
    model gets the entry's preprocessing and labels, and the LayerScale value it states."""
    monkeypatch.setattr(named, "weights_cache_dir", lambda: str(tmp_path / "cache"))
    url = (fixtures_dir / "timm_vit/i32_p4_deit3/model.safetensors").resolve().as_uri()
    preprocessing = keras_vit.Preprocessing(
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation="bicubic", crop_mode="center", crop_fraction=0.9
    )
    entry = named.NamedWeights(url, "timm", 10, 32, "tiny DeiT-3", {"layer_scale_init": 0.1}, preprocessing, [f"c{i}" for i in range(10)])
    monkeypatch.setitem(named.PRETRAINED_WEIGHTS, None, {"tiny_deit3": entry})  # BASE matches no variant: None
    model = keras_vit.VisionTransformer(weights="tiny_deit3", **BASE)
    config = model.vit_config
    assert config.preprocessing == preprocessing and config.class_names == [f"c{i}" for i in range(10)]
    assert config.layer_scale_init == 0.1 and config.embed_prefix_tokens is False
    folder, images = _fixture(fixtures_dir, "i32_p4_deit3")
    assert np.abs(model.predict(images, verbose=0) - np.load(folder / "logits.npy")).max() <= TOLERANCE
    relabelled = keras_vit.VisionTransformer(weights="tiny_deit3", num_classes=3, **BASE)  # a new head: no labels
    assert relabelled.vit_config.labels is None


def test_named_weights_build_at_the_size_they_were_trained_at_unless_told(fixtures_dir, tmp_path, monkeypatch):
    """As keras.applications: without `image_size` (or `input_shape`), named weights decide
    the image size (their entry's); a size given is kept, the position embedding resized."""
    monkeypatch.setattr(named, "weights_cache_dir", lambda: str(tmp_path / "cache"))
    url = (fixtures_dir / "timm_vit/i32_p4_deit3/model.safetensors").resolve().as_uri()
    options = {"layer_scale_init": 0.1}
    entries = {"tiny_deit3": named.NamedWeights(url, "timm", 10, 32, "tiny DeiT-3", options, keras_vit.Preprocessing()),
               "tiny_deit3_48": named.NamedWeights(url, "timm", 10, 48, "tiny DeiT-3 at 48", options, keras_vit.Preprocessing())}
    monkeypatch.setitem(named.PRETRAINED_WEIGHTS, None, entries)
    sizes = {key: value for key, value in BASE.items() if key != "image_size"}

    model = keras_vit.VisionTransformer(weights="tiny_deit3", **sizes)
    assert model.vit_config.image_size == (32, 32)
    folder, images = _fixture(fixtures_dir, "i32_p4_deit3")
    assert np.abs(model.predict(images, verbose=0) - np.load(folder / "logits.npy")).max() <= TOLERANCE
    stated = keras_vit.VisionTransformer(weights="tiny_deit3_48", **sizes)
    assert stated.vit_config.image_size == (48, 48) and stated.input_shape == (None, 48, 48, 3)
    assert stated.get_layer("position_embedding").embedding.shape == (1, 12 * 12, 64)  # DeiT-3: grid rows only
    assert keras_vit.VisionTransformer(weights="tiny_deit3_48", image_size=40, **sizes).vit_config.image_size == (40, 40)
    assert keras_vit.VisionTransformer(weights="tiny_deit3_48", input_shape=(36, 36, 3), **sizes).vit_config.image_size == (36, 36)
    assert keras_vit.VisionTransformer(**sizes).vit_config.image_size == (224, 224)  # no weights: 224
    assert keras_vit.VisionTransformer(weights=str(fixtures_dir / "timm_vit/i32_p4_deit3/model.safetensors"), **sizes,
                                       layer_scale_init=0.1).vit_config.image_size == (224, 224)  # a file states no size


def test_what_a_named_entry_states_is_neither_overridden_nor_warned_about(fixtures_dir, tmp_path, monkeypatch, caplog):
    """An entry's epsilon other than its format's (as timm's CLIP fine-tunes state 1e-5) is
    the model's, by `weights=` and by `load_weights`, with no warning that it differs."""
    monkeypatch.setattr(named, "weights_cache_dir", lambda: str(tmp_path / "cache"))
    url = (fixtures_dir / "timm_vit/i32_p4_deit3/model.safetensors").resolve().as_uri()
    entry = named.NamedWeights(url, "timm", 10, 32, "tiny DeiT-3", {"layer_norm_epsilon": 1e-5}, keras_vit.Preprocessing(), None)
    monkeypatch.setitem(named.PRETRAINED_WEIGHTS, None, {"tiny_deit3": entry})
    with caplog.at_level("WARNING", logger="keras_vit.weights"):
        model = keras_vit.VisionTransformer(weights="tiny_deit3", **BASE)
        keras_vit.load_weights(model, "tiny_deit3")
    assert model.vit_config.layer_norm_epsilon == 1e-5
    assert not [r for r in caplog.records if "epsilon" in r.getMessage()], caplog.text
    with caplog.at_level("WARNING", logger="keras_vit.weights"):  # the file itself: timm's rule, 1e-6
        keras_vit.load_weights(model, str(fixtures_dir / "timm_vit/i32_p4_deit3/model.safetensors"))
    assert any("epsilon is 1e-05, the checkpoint's source uses 1e-06" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- every family end to end


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_fits_saves_and_reloads_in_safe_mode(family, tmp_path):
    model = keras_vit.VisionTransformer(**TINY, **FAMILIES[family], drop_path_rate=0.1)
    images = np.random.RandomState(0).uniform(-1, 1, (16, 16, 16, 3)).astype("float32")
    labels = np.arange(16) % 5
    model.compile(keras.optimizers.AdamW(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    losses = model.fit(images, labels, batch_size=8, epochs=8, verbose=0).history["loss"]
    assert losses[-1] < losses[0]
    skipped = {v.path for v in model.no_weight_decay()}
    assert all(path in skipped for path in ("position_embedding/embedding",) + (("register_tokens/token",) if "reg4" in family else ()))
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    assert reloaded.vit_config == model.vit_config
    np.testing.assert_array_equal(reloaded.predict(images, verbose=0), model.predict(images, verbose=0))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_runs_in_mixed_precision_with_float32_logits(family):
    reference = keras_vit.VisionTransformer(**TINY, **FAMILIES[family])
    randomise(reference, seed=2, scale=0.1)
    images = np.random.RandomState(0).uniform(-1, 1, (4, 16, 16, 3)).astype("float32")
    expected = reference.predict(images, verbose=0)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = keras_vit.VisionTransformer(**TINY, **FAMILIES[family])
    model.set_weights(reference.get_weights())
    out = model.predict(images, verbose=0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=0.1)


def test_mlp_activation_and_gelu_approximate_are_one_option():
    assert keras_vit.ViTConfig(gelu_approximate=True).mlp_activation == "gelu_tanh"
    assert keras_vit.ViTConfig.from_dict({"gelu_approximate": True}).mlp_activation == "gelu_tanh"  # older configs
    with pytest.raises(ValueError, match="gelu_approximate=True contradicts mlp_activation='quick_gelu'"):
        keras_vit.ViTConfig(gelu_approximate=True, mlp_activation="quick_gelu")
    with pytest.raises(ValueError, match="Unknown mlp_activation 'relu'"):
        keras_vit.ViTConfig(mlp_activation="relu")
    with pytest.raises(ValueError, match="distillation_token=True needs the class token"):
        keras_vit.ViTConfig(distillation_token=True, pooling="gap")


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_every_family_resizes_the_grid_and_keeps_its_prefix_rows(fixtures_dir, name):
    """At 48 px from a 32 px checkpoint: the prefix rows (class, distillation, registers, or
    none for a grid-only embedding) kept, the 8x8 grid resampled to 12x12 (bicubic)."""
    from keras_vit.resize import resize_position_embedding

    path = fixtures_dir / "timm_vit" / name / "model.safetensors"
    _, passed = FIXTURES[name]
    model = keras_vit.VisionTransformer(weights=str(path), **{**BASE, "image_size": 48}, **passed)
    config = model.vit_config
    prefix = config.num_prefix_tokens if config.embed_prefix_tokens else 0
    stored = _read_safetensors(path)["pos_embed"]
    loaded = np.asarray(model.get_layer("position_embedding").embedding)
    assert loaded.shape == (1, prefix + 144, 64)
    np.testing.assert_array_equal(loaded[:, :prefix], stored[:, :prefix])
    np.testing.assert_allclose(loaded, resize_position_embedding(stored, (8, 8), (12, 12), prefix, "bicubic"), atol=1e-6)
