"""Each layer against an independent NumPy reference, and through get_config/from_config."""

import math

import keras
import numpy as np
import pytest
from conftest import randomise

from keras_vit import layers
from keras_vit.resize import resize_position_embedding

RNG = np.random.RandomState(0)


def np_layer_norm(x, gamma, beta, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def np_gelu(x):
    from scipy.special import erf

    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def np_attention(x, wqkv, bqkv, wout, bout, heads):
    b, t, d = x.shape
    hd = d // heads
    q, k, v = np.split(x @ wqkv + bqkv, 3, axis=-1)
    split = lambda a: a.reshape(b, t, heads, hd).transpose(0, 2, 1, 3)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    context = (probs @ v).transpose(0, 2, 1, 3).reshape(b, t, d)
    return context @ wout + bout


def test_patch_embedding_gives_196_tokens_of_768_for_224_images_with_16_patches():
    layer = layers.PatchEmbedding(16, 768)
    out = layer(np.zeros((2, 224, 224, 3), "float32"))
    assert tuple(out.shape) == (2, 196, 768)


def test_patch_embedding_matches_patchify_then_project_in_row_major_order():
    layer = layers.PatchEmbedding((4, 2), 5)
    images = RNG.normal(size=(2, 8, 6, 3)).astype("float32")
    layer.build(images.shape)
    randomise(layer)
    kernel, bias = (w.numpy() for w in layer.projection.weights)
    # Independent reference: cut patches row-major, flatten each (ph, pw, c) and project.
    patches = images.reshape(2, 2, 4, 3, 2, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 6, 4 * 2 * 3)
    expected = patches @ kernel.reshape(-1, 5) + bias
    np.testing.assert_allclose(layer(images), expected, atol=1e-5)


def test_class_token_is_prepended_to_every_sequence():
    layer = layers.ClassToken()
    tokens = RNG.normal(size=(3, 4, 8)).astype("float32")
    layer.build(tokens.shape)
    randomise(layer)
    out = keras.ops.convert_to_numpy(layer(tokens))
    assert out.shape == (3, 5, 8)
    np.testing.assert_allclose(out[:, 1:], tokens)
    np.testing.assert_allclose(out[:, 0], np.repeat(layer.token.numpy()[0], 3, axis=0))


def test_position_embedding_adds_its_table_and_checks_the_token_count():
    layer = layers.PositionEmbedding((2, 3), num_prefix_tokens=1)
    tokens = RNG.normal(size=(2, 7, 4)).astype("float32")
    out = layer(tokens)
    np.testing.assert_allclose(out, tokens + layer.embedding.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="expects 5 tokens"):
        layers.PositionEmbedding((2, 2))(tokens)


def test_bilinear_resize_matches_scipy_zoom_as_in_the_original_vit_code():
    from scipy import ndimage

    grid = RNG.normal(size=(4, 6, 3))
    embedding = np.concatenate([RNG.normal(size=(1, 3)), grid.reshape(-1, 3)])[None]
    resized = resize_position_embedding(embedding, (4, 6), (7, 9), num_prefix_tokens=1, method="bilinear")
    expected = ndimage.zoom(grid, (7 / 4, 9 / 6, 1), order=1)
    np.testing.assert_allclose(resized[0, 1:].reshape(7, 9, 3), expected, atol=1e-5)
    np.testing.assert_allclose(resized[0, 0], embedding[0, 0], atol=1e-6)  # class token kept apart


@pytest.mark.parametrize("target", [(9, 9), (3, 5)])
def test_bicubic_resize_matches_pil_antialiased_bicubic_as_in_timm(target):
    from PIL import Image

    grid = RNG.normal(size=(6, 6, 2)).astype("float32")
    resized = resize_position_embedding(grid.reshape(1, 36, 2), (6, 6), target, num_prefix_tokens=0, method="bicubic")
    for channel in range(2):
        image = Image.fromarray(grid[..., channel], mode="F").resize(target[::-1], Image.BICUBIC)
        np.testing.assert_allclose(resized[0, :, channel].reshape(target), np.asarray(image), atol=1e-4)


def test_resize_to_the_same_grid_is_the_identity_and_unknown_methods_are_refused():
    values = RNG.normal(size=(1, 10, 4)).astype("float32")
    for method in ("bilinear", "bicubic"):
        np.testing.assert_allclose(resize_position_embedding(values, (3, 3), (3, 3), 1, method), values, atol=1e-6)
    with pytest.raises(ValueError, match="Unknown resize method"):
        resize_position_embedding(values, (3, 3), (4, 4), 1, method="nearest")


def test_self_attention_matches_numpy_reference():
    layer = layers.MultiHeadSelfAttention(num_heads=4)
    x = RNG.normal(size=(2, 5, 16)).astype("float32")
    layer.build(x.shape)
    randomise(layer)
    expected = np_attention(x, *(w.numpy() for w in layer.qkv.weights), *(w.numpy() for w in layer.output_projection.weights), heads=4)
    np.testing.assert_allclose(layer(x), expected, atol=1e-5)


@pytest.mark.parametrize("approximate", [False, True])
def test_transformer_block_is_prenorm_attention_then_gelu_mlp(approximate):
    block = layers.TransformerBlock(num_heads=2, mlp_dim=24, gelu_approximate=approximate)
    x = RNG.normal(size=(2, 5, 8)).astype("float32")
    block.build(x.shape)
    randomise(block)
    w = lambda layer: [v.numpy() for v in layer.weights]  # noqa: E731
    h = x + np_attention(np_layer_norm(x, *w(block.attention_norm)), *w(block.attention.qkv), *w(block.attention.output_projection), heads=2)
    k1, b1 = w(block.mlp_dense_1)
    k2, b2 = w(block.mlp_dense_2)
    pre = np_layer_norm(h, *w(block.mlp_norm)) @ k1 + b1
    act = 0.5 * pre * (1 + np.tanh(math.sqrt(2 / math.pi) * (pre + 0.044715 * pre**3))) if approximate else np_gelu(pre)
    expected = h + act @ k2 + b2
    np.testing.assert_allclose(block(x), expected, atol=1e-4)


def test_block_with_output_tokens_is_the_full_block_on_those_tokens_values_and_gradients():
    """The last block's shortcut (queries from the first K tokens only) computes, in training
    too, exactly what the full block computes for those tokens, with the same gradients for
    the input and every weight."""
    import tensorflow as tf

    x = tf.constant(RNG.normal(size=(3, 7, 8)).astype("float32"))
    full = layers.TransformerBlock(num_heads=2, mlp_dim=24)
    first = layers.TransformerBlock(num_heads=2, mlp_dim=24, output_tokens=2)
    for block in (full, first):
        block.build(x.shape)
        randomise(block)
    assert first.compute_output_shape(x.shape) == (3, 2, 8)
    results = []
    for block, keep in ((full, slice(0, 2)), (first, slice(None))):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = block(x, training=True)[:, keep]
            loss = tf.reduce_sum(out * tf.cos(out))
        results.append([out, *tape.gradient(loss, [x, *block.trainable_weights])])
    assert results[1][0].shape == (3, 2, 8)
    for expected, actual in zip(*results):
        np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_drop_path_drops_whole_samples_in_training_and_is_identity_at_inference():
    layer = layers.DropPath(0.5, seed=1)
    x = np.ones((256, 3, 4), "float32")
    np.testing.assert_array_equal(layer(x, training=False), x)
    out = keras.ops.convert_to_numpy(layer(x, training=True))
    per_sample = out.reshape(256, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert (per_sample.min(1) == per_sample.max(1)).all()  # a sample is kept or dropped whole
    assert 0.3 < (per_sample[:, 0] == 0).mean() < 0.7


def test_token_pooling_takes_class_token_or_averages_patch_tokens_only():
    tokens = RNG.normal(size=(2, 5, 3)).astype("float32")
    np.testing.assert_allclose(layers.TokenPooling("token")(tokens), tokens[:, 0])
    np.testing.assert_allclose(layers.TokenPooling("gap", num_prefix_tokens=1)(tokens), tokens[:, 1:].mean(1), atol=1e-6)
    np.testing.assert_allclose(layers.TokenPooling("gap", num_prefix_tokens=0)(tokens), tokens.mean(1), atol=1e-6)


@pytest.mark.parametrize(
    "layer",
    [
        layers.PatchEmbedding((4, 2), 8, name="p"),
        layers.ClassToken(name="c"),
        layers.PositionEmbedding((2, 3), 0, name="e"),
        layers.DropPath(0.1, seed=3),
        layers.MultiHeadSelfAttention(4, 0.1, output_tokens=1),
        layers.TransformerBlock(4, 32, 0.1, 0.2, 0.3, True, 1e-12, output_tokens=1),
        layers.TokenPooling("gap", 0),
        layers.LayerNorm(epsilon=1e-12),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_every_layer_round_trips_through_its_config(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"].startswith("keras_vit>")
    assert keras.saving.deserialize_keras_object(serialized).get_config() == config


def _value_and_gradients(fn, *inputs):
    import tensorflow as tf

    inputs = [tf.constant(v) for v in inputs]
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        out = fn(*inputs)
        loss = tf.reduce_sum(out * tf.cos(out))  # a non-trivial upstream gradient
    return [out.numpy()] + [g.numpy() for g in tape.gradient(loss, inputs)]


def test_layer_norm_has_the_value_and_gradient_of_keras_layer_norm():
    x = RNG.normal(1.0, 3.0, size=(3, 5, 16)).astype("float32")
    gamma, beta = RNG.normal(size=16).astype("float32"), RNG.normal(size=16).astype("float32")
    layer = layers.LayerNorm(epsilon=1e-6)
    reference = keras.layers.LayerNormalization(epsilon=1e-6)
    for norm in (layer, reference):
        norm.build(x.shape)
        norm.set_weights([gamma, beta])
    # Inference: the same values as Keras' layer, from the centred formula.
    np.testing.assert_allclose(layer(x, training=False), reference(x), atol=1e-5, rtol=1e-5)
    # Gradients with respect to the input, through Keras' own (differentiated) layer.
    ours = _value_and_gradients(lambda t: layer(t, training=True), x)
    theirs = _value_and_gradients(lambda t: reference(t), x)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    # And with respect to gamma and beta, against the formula differentiated by TensorFlow.
    from keras_vit.layers import _layer_norm_with_gradient

    def formula(x, g, b):
        mean = keras.ops.mean(x, -1, keepdims=True)
        var = keras.ops.mean(keras.ops.square(x - mean), -1, keepdims=True)
        return (x - mean) / keras.ops.sqrt(var + 1e-6) * g + b

    ours = _value_and_gradients(lambda *t: _layer_norm_with_gradient(*t, 1e-6), x, gamma, beta)
    theirs = _value_and_gradients(formula, x, gamma, beta)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.filterwarnings("ignore:You passed `rms_scaling=True`, which is deprecated:UserWarning")  # Keras' own, the option refused
@pytest.mark.parametrize("option", [dict(axis=1), dict(center=False), dict(scale=False), dict(rms_scaling=True)])
def test_layer_norm_refuses_options_it_does_not_compute(option):
    with pytest.raises(ValueError, match="last axis with both gamma and beta"):
        layers.LayerNorm(**option)


@pytest.mark.parametrize("training_gelu", ["backend", "keras_ops"])
def test_training_gelu_has_the_value_and_gradient_of_the_exact_formula(training_gelu):
    # "backend": what training runs here (TensorFlow: the XLA kernels); "keras_ops": the
    # custom-gradient spelling every other backend runs.
    from keras_vit.activations import gelu_for_training

    gelu = (lambda t: layers.mlp_activation(t, "gelu", training=True)) if training_gelu == "backend" else gelu_for_training
    x = RNG.normal(0.0, 3.0, size=(4, 7)).astype("float32")
    ours = _value_and_gradients(gelu, x)
    theirs = _value_and_gradients(lambda t: layers.mlp_activation(t, "gelu", training=False), x)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(ours[0], np_gelu(x), atol=1e-5)


def test_training_gelu_under_bfloat16_keeps_the_dtype_and_the_formula():
    import tensorflow as tf

    x16 = tf.cast(RNG.normal(0.0, 3.0, size=(3, 8)).astype("float32"), tf.bfloat16)
    out = layers.mlp_activation(x16, "gelu", training=True)
    assert out.dtype == tf.bfloat16
    # Rounding the float32 result to bfloat16 (8 bits of mantissa) is the only error.
    reference = np_gelu(tf.cast(x16, tf.float32).numpy())
    np.testing.assert_allclose(tf.cast(out, tf.float32).numpy(), reference, rtol=1e-2, atol=1e-2)
