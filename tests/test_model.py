"""The functional builder and the named variants: shapes, sizes, saving, precision, errors."""

import re

import keras
import numpy as np
import pytest
from conftest import TINY, randomise

import keras_vit
from keras_vit.config import MODEL_SIZES, VARIANTS

IMAGES = np.random.RandomState(0).uniform(-1, 1, (4, 32, 32, 3)).astype("float32")

# Published parameter counts at 224x224 with 1000 classes (timm / the ViT and DeiT papers).
PUBLISHED_PARAMETERS = {
    "ViTTi16": 5_717_416,
    "ViTS16": 22_050_664,
    "ViTS32": 22_878_952,
    "ViTB8": 86_576_872,
    "ViTB16": 86_567_656,
    "ViTB32": 88_224_232,
    "ViTL16": 304_326_632,
    "ViTL32": 306_535_400,
    "ViTH14": 632_045_800,
}


def tiny(**overrides):
    """The shared tiny architecture at 32 px (64 patches)."""
    return keras_vit.VisionTransformer(**{**TINY, "image_size": 32, **overrides})


def vit_parameters(size, patch, image=224, classes=1000):
    """The parameter count of a plain ViT by the formula: patch projection, class token,
    position embedding, blocks (q/k/v, output, two LayerNorms, MLP), final LayerNorm, head."""
    d, layers, m = (MODEL_SIZES[size][k] for k in ("hidden_dim", "num_layers", "mlp_dim"))
    tokens = (image // patch) ** 2 + 1
    block = 4 * d * d + 2 * d * m + 9 * d + m
    return patch * patch * 3 * d + d + d + tokens * d + layers * block + 2 * d + d * classes + classes


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_parameter_count_equals_the_published_one(variant):
    model = getattr(keras_vit, variant)()
    assert isinstance(model, keras.Model) and model.name == variant
    # The patch-14 variants (DINOv2's sizes) have no published plain count: the formula,
    # which gives every published one, stands in.
    assert model.count_params() == PUBLISHED_PARAMETERS.get(variant, vit_parameters(*VARIANTS[variant]))
    if variant in PUBLISHED_PARAMETERS:
        assert vit_parameters(*VARIANTS[variant]) == PUBLISHED_PARAMETERS[variant]


def test_every_variant_in_the_table_has_a_builder_and_create_model_finds_it():
    assert set(VARIANTS) == set(PUBLISHED_PARAMETERS) | {"ViTS14", "ViTB14", "ViTL14"}
    model = keras_vit.create_model("ViTTi16", num_classes=7, image_size=64, num_layers=1)
    assert model.output_shape == (None, 7) and model.input_shape == (None, 64, 64, 3)


@pytest.mark.parametrize(
    "kwargs, output_shape",
    [
        (dict(), (None, 10)),
        (dict(pooling="gap"), (None, 10)),
        (dict(representation_size=24), (None, 10)),
        (dict(include_top=False), (None, 32)),
        (dict(include_top=False, pooling="gap"), (None, 32)),
        (dict(include_top=False, representation_size=24), (None, 24)),
        (dict(include_top=False, pooling=None), (None, 65, 32)),
        (dict(include_top=False, pooling=None, class_token=False), (None, 64, 32)),
        (dict(image_size=(32, 48)), (None, 10)),
        (dict(image_size=(32, 48), include_top=False, pooling=None), (None, 97, 32)),
        (dict(image_size=24, patch_size=(4, 8), include_top=False, pooling=None), (None, 19, 32)),
    ],
)
def test_output_shape_for_each_pooling_mode_and_image_size(kwargs, output_shape):
    model = tiny(**kwargs)
    assert model.output_shape == output_shape
    height, width = model.input_shape[1:3]
    out = model.predict(np.zeros((2, height, width, 3), "float32"), verbose=0)
    assert out.shape == (2,) + output_shape[1:] and out.dtype == np.float32


def test_gap_pooling_has_no_class_token_and_token_pooling_has_one():
    assert "class_token" not in [layer.name for layer in tiny(pooling="gap").layers]
    assert "class_token" in [layer.name for layer in tiny().layers]


def test_applications_signature_accepts_input_shape_and_classifier_activation():
    model = keras_vit.ViTTi16(input_shape=(64, 32, 3), num_classes=5, classifier_activation="softmax", num_layers=1)
    assert model.input_shape == (None, 64, 32, 3)
    probs = model.predict(np.random.RandomState(0).normal(size=(3, 64, 32, 3)), verbose=0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_input_tensor_decides_the_image_size_as_in_keras_applications():
    model = keras_vit.ViTTi16(input_tensor=keras.Input((32, 48, 1)), num_classes=3, num_layers=1)
    assert model.input_shape == (None, 32, 48, 1)
    assert model.vit_config.image_size == (32, 48) and model.vit_config.num_channels == 1
    assert model.predict(np.zeros((2, 32, 48, 1)), verbose=0).shape == (2, 3)


def test_an_input_shape_of_any_size_builds_a_dynamic_image_size_model():
    """`input_shape=(None, None, 3)`, as keras.applications takes it: any size at run time,
    the position embedding sized for `image_size` (224 unless given) and resized per call;
    the same model as `dynamic_image_size=True`."""
    keras.utils.set_random_seed(3)
    model = keras_vit.ViTTi16(input_shape=(None, None, 3), image_size=32, num_classes=3, num_layers=1)
    keras.utils.set_random_seed(3)
    reference = keras_vit.ViTTi16(image_size=32, dynamic_image_size=True, num_classes=3, num_layers=1)
    assert model.input_shape == (None, None, None, 3) and model.vit_config == reference.vit_config
    assert keras_vit.ViTTi16(input_shape=(None, None, 3), num_layers=1).vit_config.image_size == (224, 224)
    randomise(model, seed=2)
    reference.set_weights(model.get_weights())
    for height, width in ((32, 32), (48, 32)):
        images = np.random.RandomState(height).uniform(-1, 1, (2, height, width, 3)).astype("float32")
        assert model(images).shape == (2, 3)
        np.testing.assert_allclose(model(images), reference(images), atol=1e-6)


def test_the_model_takes_channels_last_images_whatever_the_keras_image_data_format():
    """keras.applications' builders follow `keras.config.image_data_format()`; a ViT's input
    is [B, H, W, C] always, so a "channels_first" default must not reach its patch Conv2D."""
    reference = tiny(num_layers=1)
    randomise(reference, seed=4)
    keras.config.set_image_data_format("channels_first")
    try:
        model = tiny(num_layers=1)
    finally:
        keras.config.set_image_data_format("channels_last")
    model.set_weights(reference.get_weights())
    np.testing.assert_allclose(model(IMAGES), reference(IMAGES), atol=1e-6)


def test_inference_is_deterministic_and_dropout_and_drop_path_only_act_in_training():
    model = tiny(dropout_rate=0.3, attention_dropout_rate=0.3, drop_path_rate=0.3)
    randomise(model, seed=1)  # the zero-initialised head would hide any difference
    first, second = (keras.ops.convert_to_numpy(model(IMAGES, training=False)) for _ in range(2))
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(model.predict(IMAGES, verbose=0), model.predict(IMAGES, verbose=0))
    np.testing.assert_allclose(model.predict(IMAGES, verbose=0), first, atol=1e-5)  # graph vs eager
    trained = keras.ops.convert_to_numpy(model(IMAGES, training=True))
    assert np.abs(trained - first).max() > 1e-3


_INIT_SCRIPT = """
import keras, numpy as np, keras_vit
keras.utils.set_random_seed(0)
model = keras_vit.VisionTransformer(image_size=16, patch_size=4, hidden_dim=32, num_layers=2, num_heads=2,
                                    mlp_dim=64, num_classes=3, num_register_tokens=2)
np.savez(OUT, **{v.path.replace("/", "|"): v.numpy() for v in model.weights})
"""


def test_set_random_seed_decides_every_initial_weight_across_processes(tmp_path):
    """`keras.utils.set_random_seed(0)` then a model, in two fresh processes: the same weights,
    the random-normal ones (position embedding, registers, MLP biases) included; and the two
    blocks' MLP biases are drawn apart (an initialiser made at import time kept its own seed:
    different in every process, the same draw for every bias of a shape)."""
    import subprocess
    import sys

    weights = []
    for run in range(2):
        out = tmp_path / f"weights{run}.npz"
        subprocess.run([sys.executable, "-c", _INIT_SCRIPT.replace("OUT", repr(str(out)))], check=True, capture_output=True)
        weights.append(dict(np.load(out)))
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        np.testing.assert_array_equal(weights[0][name], weights[1][name], err_msg=name)
    biases = [weights[0][name] for name in sorted(weights[0]) if name.endswith("mlp_dense_1|bias")]
    assert len(biases) == 2 and not np.array_equal(biases[0], biases[1])
    assert any("register" in name for name in weights[0])


def test_drop_path_rate_grows_linearly_over_the_blocks():
    model = tiny(num_layers=3, drop_path_rate=0.2)
    rates = [model.get_layer(f"encoder_block_{i}").drop_path_rate for i in range(3)]
    np.testing.assert_allclose(rates, [0.0, 0.1, 0.2])


def test_tiny_vit_overfits_a_fixed_batch_to_full_training_accuracy():
    rng = np.random.RandomState(0)
    images = rng.uniform(-1, 1, (32, 16, 16, 3)).astype("float32")
    labels = np.arange(32) % 4
    model = keras_vit.VisionTransformer(image_size=16, patch_size=4, hidden_dim=32, num_layers=1, num_heads=2, mlp_dim=64, num_classes=4)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(images, labels, batch_size=32, epochs=150, verbose=0)
    assert history.history["accuracy"][-1] == 1.0
    assert model.evaluate(images, labels, verbose=0)[1] == 1.0


def test_token_pooling_model_gives_the_logits_and_gradients_of_the_whole_token_sequence():
    """With class-token pooling the last block computes the class token alone. Reference: the
    same weights in a model that outputs every token (`pooling=None`), its class token put
    through the head by hand. Logits and every weight's gradient agree."""
    import tensorflow as tf

    model = tiny()
    randomise(model, seed=4)
    tokens_model = tiny(include_top=False, pooling=None)
    weights = {w.path: w for w in model.weights}
    for w in tokens_model.weights:
        w.assign(weights[w.path])
    assert model.get_layer("encoder_block_1").output.shape == (None, 1, 32)
    assert tokens_model.get_layer("encoder_block_1").output.shape == (None, 65, 32)
    head = model.get_layer("head")
    labels = tf.constant(np.arange(4) % 10)

    def loss_of(logits):
        return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)

    with tf.GradientTape(persistent=True) as tape:
        logits = model(IMAGES, training=True)
        reference = tokens_model(IMAGES, training=True)[:, 0] @ head.kernel + head.bias
        loss, reference_loss = loss_of(logits), loss_of(reference)
    np.testing.assert_allclose(logits, reference, atol=1e-5)
    reference_weights = {w.path: w for w in tokens_model.trainable_weights}
    for w in model.trainable_weights:
        expected = tape.gradient(reference_loss, reference_weights.get(w.path, w))  # the head: shared
        np.testing.assert_allclose(tape.gradient(loss, w), expected, atol=1e-5, err_msg=w.path)


@pytest.mark.filterwarnings("ignore:Layer .* does not have a `quantize` method implemented:UserWarning")  # Keras' notice per layer
def test_int8_quantized_model_keeps_its_outputs():
    """`Model.quantize("int8")` (Keras' weight-only int8): the class-token last block then
    projects through the quantized `qkv` layer, not its raw int8 kernel."""
    model = tiny()
    randomise(model, seed=4)
    expected = model.predict(IMAGES, verbose=0)
    model.quantize("int8")
    assert model.get_layer("encoder_block_1").attention.qkv.quantization_mode == "int8"
    np.testing.assert_allclose(model.predict(IMAGES, verbose=0), expected, atol=0.05)


def test_saved_model_reloads_in_safe_mode_with_identical_outputs(tmp_path):
    model = tiny(representation_size=16, pooling="gap", class_token=True, gelu_approximate=True, drop_path_rate=0.1)
    randomise(model, seed=2)
    path = tmp_path / "vit.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(reloaded.predict(IMAGES, verbose=0), model.predict(IMAGES, verbose=0))
    assert [type(layer).__name__ for layer in reloaded.layers] == [type(layer).__name__ for layer in model.layers]
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in reloaded.layers)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_builds_trains_and_predicts_with_float32_logits(policy):
    reference = tiny()
    randomise(reference, seed=3, scale=0.1)
    expected = reference.predict(IMAGES, verbose=0)

    keras.mixed_precision.set_global_policy(policy)
    model = tiny()
    model.set_weights(reference.get_weights())
    block = model.get_layer("encoder_block_0")
    assert block.compute_dtype == policy.split("_")[1] and block.variable_dtype == "float32"
    out = model.predict(IMAGES, verbose=0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=0.1)  # half precision, same function

    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    losses = model.fit(IMAGES, np.arange(4), epochs=3, verbose=0).history["loss"]
    assert np.isfinite(losses).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_size=30), "patch_size 4x4 does not divide image_size 30x30"),
        (dict(image_size=(32, 30)), "patch_size 4x4 does not divide image_size 32x30"),
        (dict(num_heads=5), "num_heads 5 does not divide hidden_dim 32"),
        (dict(pooling="mean"), "Unknown pooling 'mean'"),
        (dict(pooling=None), "pooling=None .* needs include_top=False"),
        (dict(pooling="token", class_token=False), "pooling='token' needs class_token=True"),
        (dict(dropout_rate=1.0), "dropout_rate must be in"),
        (dict(image_size=(32, 32, 3)), "image_size must be an int or a \\(height, width\\) pair"),
        (dict(input_shape=(64, 64, 3)), "image_size 32 and input_shape \\(64, 64, 3\\) disagree"),
        (dict(input_tensor=keras.Input((64, 64, 3))), "image_size 32 and input_tensor shape \\(64, 64, 3\\) disagree"),
        (dict(input_shape=(None, None, 3), dynamic_image_size=False), "any size .* needs dynamic_image_size=True"),
        (dict(input_shape=(32, 32, None)), "known channel count"),
    ],
)
def test_bad_configuration_raises_a_clear_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)


def test_unknown_variant_names_the_known_ones():
    with pytest.raises(ValueError, match=re.escape("Unknown model 'ViTX16'") + ".*ViTB16"):
        keras_vit.create_model("ViTX16")


@pytest.mark.slow  # fits a ViT-B/16 at 224x224
def test_readme_usage_example_runs_as_written():
    import pathlib

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert "keras_vit.ViTB16(num_classes=100)" in example
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert namespace["logits"].shape == (8, 100) and namespace["model"].vit_config.num_classes == 100


# --- the model carries its config ------------------------------------------------------


def test_model_carries_its_config_through_save_and_safe_mode_reload(tmp_path):
    preprocessing = keras_vit.Preprocessing(
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation="bicubic", crop_mode="center", crop_fraction=0.9
    )
    model = tiny(pooling="gap", drop_path_rate=0.1, preprocessing=preprocessing, labels=[f"c{i}" for i in range(10)])
    assert isinstance(model, keras_vit.ViTModel) and keras_vit.config_of(model) is model.vit_config
    config = model.vit_config
    assert config.preprocessing == preprocessing and config.class_names == [f"c{i}" for i in range(10)]
    assert config.image_size == (32, 32) and config.class_token is False and config.drop_path_rate == 0.1
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert type(reloaded) is keras_vit.ViTModel and reloaded.vit_config == config
    np.testing.assert_array_equal(reloaded.predict(IMAGES, verbose=0), model.predict(IMAGES, verbose=0))
    # The config is plain data: JSON through and back.
    import json

    assert keras_vit.ViTConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_config_of_a_model_keras_vit_did_not_build_is_a_clear_error():
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="is not a keras_vit model"):
        keras_vit.config_of(plain)
    with pytest.raises(ValueError, match="is not a keras_vit model"):
        keras_vit.load_weights(plain, "anything.npz")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(labels=["a", "b"]), "labels has 2 class names, expected 10"),
        (dict(labels="imagenet1k"), "labels has 1000 class names, expected 10"),
        (dict(labels="imagenet5k"), "Unknown label set 'imagenet5k'"),
    ],
)
def test_labels_must_fit_the_classifier(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_vit.ViTConfig(**{**TINY, **kwargs})


def test_config_from_dict_names_unknown_options():
    with pytest.raises(ValueError, match=r"Unknown ViTConfig option\(s\) \['colour'\]"):
        keras_vit.ViTConfig.from_dict({"colour": 1})


def test_no_weight_decay_lists_biases_norms_tokens_and_position_embedding():
    model = tiny(representation_size=8)
    skipped = {v.path for v in model.no_weight_decay()}
    every = {v.path for v in model.trainable_variables}
    assert skipped == {p for p in every if not p.endswith("/kernel")}
    assert {"class_token/token", "position_embedding/embedding", "encoder_norm/gamma", "pre_logits/bias"} <= skipped


def test_builders_are_plain_functions_with_one_documented_signature():
    import inspect

    for variant in VARIANTS:
        builder = getattr(keras_vit, variant)
        assert inspect.isfunction(builder) and builder.__module__ == "keras_vit.model" and builder.__name__ == variant
        assert list(inspect.signature(builder).parameters)[:9] == [
            "include_top", "weights", "input_shape", "image_size", "pooling", "num_classes",
            "classifier_activation", "name", "input_tensor",
        ]
        size, patch = VARIANTS[variant]
        assert builder.__doc__.startswith(f"ViT-{size}/{patch} ") and f'available_weights("{variant}")' in builder.__doc__
