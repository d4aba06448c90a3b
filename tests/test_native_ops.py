"""keras_vit's compiled TensorFlow kernels (keras_vit.native_ops, tensorflow_kernels): the
numbers of TensorFlow's own ops differentiated by TensorFlow, only in training graphs, and a
build that is cached, atomic and falls back with a warning."""

import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import randomise, tiny_vit

from keras_vit import layers, native_ops, tensorflow_kernels

RNG = np.random.default_rng(0)
OPS = ("KerasVitLayerNorm", "KerasVitAttention", "KerasVitBiasGelu")  # a training graph without attention dropout


def _why_the_kernels_cannot_be_tested():
    """Only a machine without a C++ compiler, or with the kernels turned off, skips these
    tests. A compiler that fails on the kernels fails them: a build that breaks on one CPU
    (as AVX512-FP16 did with TensorFlow's Eigen headers) must not pass as a skip."""
    if not native_ops.enabled():
        return f"{native_ops.DISABLE_VARIABLE}=0 turns the kernels off"
    try:
        native_ops._compiler()
    except native_ops.BuildError as error:
        return str(error)
    return None


SKIP_REASON = _why_the_kernels_cannot_be_tested()
pytestmark = pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))


def test_the_kernels_build_and_load_on_this_machine():
    native_ops.build()  # raises BuildError with the compiler's own error lines
    assert native_ops.load() is not None


def _value_and_gradients(fn, *inputs):
    """fn(*inputs) and the gradients of a non-trivial loss of its outputs for every input."""
    inputs = [tf.constant(v) for v in inputs]
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = tf.nest.flatten(fn(*inputs))
        loss = sum(tf.reduce_sum(out * tf.cos(out + i)) for i, out in enumerate(outputs))
    return [out.numpy() for out in outputs] + [g.numpy() for g in tape.gradient(loss, inputs)]


def _assert_all_close(ours, theirs, tolerance=1e-5):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=tolerance * max(1.0, np.abs(b).max()), rtol=tolerance)


# The kernels' functions as formulas in TensorFlow ops, differentiated op by op by TensorFlow.


def _layer_norm_formula(x, gamma, beta):
    mean = tf.reduce_mean(x, -1, keepdims=True)
    return (x - mean) / tf.sqrt(tf.reduce_mean(tf.square(x - mean), -1, keepdims=True) + 1e-6) * gamma + beta


def _split_heads_reference(qkv, bias, heads, scale):
    """Bias, transpose, split and the query's scale: q, k, v [B, heads, T, head_dim]."""
    batch, tokens, width = qkv.shape
    parts = tf.transpose(tf.reshape(qkv + bias, (batch, tokens, 3, heads, width // (3 * heads))), (2, 0, 3, 1, 4))
    return parts[0] * scale, parts[1], parts[2]


def _attention_reference(qkv, bias, heads, scale):
    """TensorFlow's ops, as `layers._attend` runs them: the heads, both products, the softmax."""
    batch, tokens, width = qkv.shape
    query, key, value = _split_heads_reference(qkv, bias, heads, scale)
    probabilities = tf.nn.softmax(tf.einsum("bhqd,bhkd->bhqk", query, key))
    context = tf.einsum("bhqk,bhkd->bhqd", probabilities, value)
    return tf.reshape(tf.transpose(context, (0, 2, 1, 3)), (batch, tokens, width // 3))


def _bias_gelu_formula(h, bias):
    x = h + bias
    return 0.5 * x * (1.0 + tf.math.erf(x / math.sqrt(2.0)))


@pytest.mark.parametrize("shape", [(3, 70, 37), (5, 192), (1, 1, 8)])  # 210 rows: 4 blocks, the last part-full
def test_layer_norm_kernels_give_the_formula_and_its_autodiff_gradients(shape):
    x = RNG.normal(2.0, 3.0, size=shape).astype("float32")
    gamma, beta = RNG.normal(size=shape[-1:]).astype("float32"), RNG.normal(size=shape[-1:]).astype("float32")
    _assert_all_close(
        _value_and_gradients(lambda *t: tensorflow_kernels.layer_norm(*t, 1e-6), x, gamma, beta),
        _value_and_gradients(_layer_norm_formula, x, gamma, beta),
    )


def test_softmax_kernel_gradient_is_tensorflows():
    scores = RNG.normal(0.0, 4.0, size=(2, 3, 9, 11)).astype("float32")
    _assert_all_close(
        _value_and_gradients(tensorflow_kernels.softmax, scores),
        _value_and_gradients(lambda t: tf.nn.softmax(t), scores),
    )


def test_split_heads_kernel_is_bias_transpose_split_and_scale_with_their_gradients():
    batch, tokens, heads, head_dim = 3, 67, 2, 5  # 201 tokens: 4 blocks of the bias sum
    qkv = RNG.normal(size=(batch, tokens, 3 * heads * head_dim)).astype("float32")
    bias = RNG.normal(size=3 * heads * head_dim).astype("float32")
    scale = 1 / math.sqrt(head_dim)
    ours = _value_and_gradients(lambda *t: tensorflow_kernels.split_heads(*t, heads, scale), qkv, bias)
    _assert_all_close(ours, _value_and_gradients(lambda *t: _split_heads_reference(*t, heads, scale), qkv, bias))
    assert ours[0].shape == (batch, heads, tokens, head_dim)


@pytest.mark.parametrize("batch, tokens, heads, head_dim", [(3, 65, 3, 16), (2, 1, 1, 8), (1, 17, 4, 5)])
def test_attention_kernel_is_heads_products_and_softmax_with_their_gradients(batch, tokens, heads, head_dim):
    qkv = RNG.normal(size=(batch, tokens, 3 * heads * head_dim)).astype("float32")
    bias = RNG.normal(size=3 * heads * head_dim).astype("float32")
    scale = 1 / math.sqrt(head_dim)
    ours = _value_and_gradients(lambda *t: tensorflow_kernels.attention(*t, heads, scale), qkv, bias)
    _assert_all_close(ours, _value_and_gradients(lambda *t: _attention_reference(*t, heads, scale), qkv, bias))
    assert ours[0].shape == (batch, tokens, heads * head_dim)


@pytest.mark.parametrize("shape", [(70, 37), (2, 3, 768)])  # 70 rows: 3 blocks of the bias sum, the last part-full
def test_bias_gelu_kernel_is_the_exact_gelu_of_the_biased_input_with_autodiff_gradients(shape):
    h = RNG.normal(0.0, 3.0, size=shape).astype("float32")
    bias = RNG.normal(size=shape[-1:]).astype("float32")
    _assert_all_close(
        _value_and_gradients(tensorflow_kernels.bias_gelu, h, bias), _value_and_gradients(_bias_gelu_formula, h, bias)
    )


def _gradient_penalty_gradients(fn, *inputs):
    """The gradients for every input of a gradient penalty: the squared gradients of a
    non-trivial loss of fn's outputs (second-order gradients through fn). Tensors in, tensors
    out: eager, or traced by tf.function."""
    with tf.GradientTape() as outer:
        outer.watch(inputs)
        with tf.GradientTape() as inner:
            inner.watch(inputs)
            outputs = tf.nest.flatten(fn(*inputs))
            loss = sum(tf.reduce_sum(out * tf.cos(out + i)) for i, out in enumerate(outputs))
        penalty = sum(tf.reduce_sum(tf.square(g)) for g in inner.gradient(loss, inputs))
    return outer.gradient(penalty, inputs)


def _kernels_and_formulas():
    """By kernel name: (the kernel, its function in TensorFlow ops as the tests above spell it, inputs)."""
    heads, head_dim, scale = 2, 5, 1 / math.sqrt(5)
    qkv = RNG.normal(size=(2, 9, 3 * heads * head_dim)).astype("float32")
    bias = RNG.normal(size=3 * heads * head_dim).astype("float32")
    x = RNG.normal(1.0, 2.0, size=(4, 11)).astype("float32")
    gamma, beta = RNG.normal(size=11).astype("float32"), RNG.normal(size=11).astype("float32")
    return {
        "layer_norm": (lambda *t: tensorflow_kernels.layer_norm(*t, 1e-6), _layer_norm_formula, (x, gamma, beta)),
        "softmax": (tensorflow_kernels.softmax, tf.nn.softmax, (RNG.normal(0.0, 2.0, size=(2, 3, 7)).astype("float32"),)),
        "split_heads": (lambda *t: tensorflow_kernels.split_heads(*t, heads, scale),
                        lambda *t: _split_heads_reference(*t, heads, scale), (qkv, bias)),
        "attention": (lambda *t: tensorflow_kernels.attention(*t, heads, scale),
                      lambda *t: _attention_reference(*t, heads, scale), (qkv, bias)),
        "bias_gelu": (tensorflow_kernels.bias_gelu, _bias_gelu_formula, (x, gamma)),
    }


@pytest.mark.parametrize("kernel_name", ["layer_norm", "softmax", "split_heads", "attention", "bias_gelu"])
def test_second_order_gradients_through_every_kernel_are_the_formulas(kernel_name):
    """A gradient penalty differentiates the kernels' gradient ops, eagerly and in a graph."""
    kernel, formula, inputs = _kernels_and_formulas()[kernel_name]
    inputs = [tf.constant(v) for v in inputs]
    expected = [g.numpy() for g in _gradient_penalty_gradients(formula, *inputs)]
    eager = [g.numpy() for g in _gradient_penalty_gradients(kernel, *inputs)]
    in_graph = [g.numpy() for g in tf.function(lambda *t: _gradient_penalty_gradients(kernel, *t))(*inputs)]
    _assert_all_close(eager, expected, tolerance=1e-4)
    _assert_all_close(in_graph, expected, tolerance=1e-4)


def test_kernels_name_mismatched_shapes():
    library = native_ops.load()
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"gamma of shape \[D\]; got x \[2,8\] and gamma \[7\]"):
        library.keras_vit_layer_norm(tf.zeros((2, 8)), tf.zeros(7), tf.zeros(8), epsilon=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"needs bias \[N\]; got h \[2,8\] and bias \[3\]"):
        library.keras_vit_bias_gelu(tf.zeros((2, 8)), tf.zeros(3))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"num_heads 4; got \[1,2,6\]"):
        library.keras_vit_split_heads(tf.zeros((1, 2, 6)), tf.zeros(6), num_heads=4, query_scale=1.0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"num_heads 4; got \[1,2,6\]"):
        library.keras_vit_attention(tf.zeros((1, 2, 6)), tf.zeros(6), num_heads=4, query_scale=1.0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"dcontext \[1,2,3\], qkv \[1,2,6\], bias \[6\]"):
        library.keras_vit_attention_grad(
            tf.zeros((1, 2, 3)), tf.zeros((1, 2, 6)), tf.zeros(6), tf.zeros((1, 1, 2, 2)), query_scale=1.0
        )


def _graph_op_types(function, *args):
    return {op.type for op in function.get_concrete_function(*args).graph.get_operations()}


def test_training_graph_runs_the_kernels_and_inference_and_xla_graphs_do_not():
    """Exports and saved models trace `training=False`: they must stay plain TensorFlow. XLA
    cannot compile the kernels: a jit-compiled step uses the keras.ops layers."""
    model = tiny_vit()
    images = tf.zeros((2, 16, 16, 3))

    def gradient(images):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(images, training=True))
        return tape.gradient(loss, model.trainable_variables)

    operations = tf.function(gradient).get_concrete_function(images).graph.get_operations()
    trained = {op.type for op in operations}
    assert set(OPS) | {"KerasVitLayerNormGrad", "KerasVitAttentionGrad", "KerasVitBiasGeluGrad"} <= trained
    # Every attention of all tokens is one kernel (the last block, which only computes the
    # class token's output, keeps its own products).
    attentions = [layer for layer in model._flatten_layers() if isinstance(layer, layers.MultiHeadSelfAttention)]
    all_tokens = sum(layer.output_tokens is None for layer in attentions)
    assert [op.type for op in operations].count("KerasVitAttention") == all_tokens >= 1
    assert "XlaLaunch" not in trained and "StatefulPartitionedCall" not in trained  # no XLA GELU left
    assert not any(op.startswith("KerasVit") for op in _graph_op_types(tf.function(lambda x: model(x)), images))
    compiled = tf.function(gradient, jit_compile=True)
    assert not any(op.startswith("KerasVit") for op in _graph_op_types(compiled, images))
    assert len(compiled(images)) == len(model.trainable_variables)


def test_attention_dropout_keeps_tensorflows_products_with_the_split_heads_kernel():
    """The fused attention kernel has no dropout: with attention dropout a training call cuts
    the heads with its own kernel and keeps TensorFlow's products, softmax and dropout."""
    model = tiny_vit(attention_dropout_rate=0.1)
    images = tf.zeros((2, 16, 16, 3))

    def gradient(images):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(images, training=True))
        return tape.gradient(loss, model.trainable_variables)

    trained = _graph_op_types(tf.function(gradient), images)
    assert {"KerasVitSplitHeads", "KerasVitSplitHeadsGrad", "KerasVitSoftmaxGrad", "BatchMatMulV2"} <= trained
    assert "KerasVitAttention" not in trained


@pytest.mark.parametrize("attention_dropout_rate", [0.0, 0.5])  # the fused attention kernel; split heads
def test_training_with_the_kernels_gives_the_losses_and_weights_of_keras_ops(monkeypatch, attention_dropout_rate):
    """Three SGD steps of one model with the compiled kernels and without them. (Not Adam: the
    key bias's gradient is zero in exact arithmetic, and Adam scales either side's rounding
    noise up to steps of the learning rate.) With attention dropout both sides draw the same
    masks from the same seed."""
    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, size=(8, 16, 16, 3)).astype("float32")
    labels = keras.utils.to_categorical(rng.integers(0, 10, 8), 10)
    results = {}
    for native in (True, False):
        monkeypatch.setattr(tensorflow_kernels, "native_kernels_available", lambda native=native: native)
        model = tiny_vit(seed=3, attention_dropout_rate=attention_dropout_rate)
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss=keras.losses.CategoricalCrossentropy(from_logits=True), jit_compile=False)
        assert ("KerasVitLayerNorm" in {op.type for op in _train_graph_ops(model, images, labels)}) == native
        losses = [float(model.train_on_batch(images, labels)) for _ in range(3)]
        results[native] = (losses, [w.numpy() for w in model.weights])
    np.testing.assert_allclose(results[True][0], results[False][0], rtol=1e-5)
    assert results[True][0][2] < results[True][0][0]  # it learns
    for a, b in zip(results[True][1], results[False][1]):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_gradient_penalty_on_a_training_call_matches_keras_ops(monkeypatch):
    """Double backprop through a whole model in training mode (the penalty on the gradient
    with respect to the images, as in WGAN-GP or input-gradient regularisation), in a
    tf.function: with the compiled kernels, the weights' gradients are those of keras.ops."""
    images = tf.constant(np.random.default_rng(2).uniform(-1, 1, size=(4, 16, 16, 3)).astype("float32"))
    results = {}
    for native in (True, False):
        monkeypatch.setattr(tensorflow_kernels, "native_kernels_available", lambda native=native: native)
        model = randomise(tiny_vit(seed=3), seed=4)

        @tf.function
        def penalty_gradients(images, model=model):
            with tf.GradientTape() as outer:
                with tf.GradientTape() as inner:
                    inner.watch(images)
                    logits = model(images, training=True)
                    score = tf.reduce_sum(tf.nn.log_softmax(logits)[:, 0])
                penalty = tf.reduce_sum(tf.square(inner.gradient(score, images)))
            return penalty, outer.gradient(penalty, model.trainable_variables)

        ops = {op.type for op in penalty_gradients.get_concrete_function(images).graph.get_operations()}
        assert ("KerasVitAttentionGrad" in ops) == native
        penalty, gradients = penalty_gradients(images)
        results[native] = [penalty.numpy()] + [g.numpy() for g in gradients]
    assert results[True][0] > 0
    _assert_all_close(results[True], results[False], tolerance=1e-4)


def _train_graph_ops(model, images, labels):
    def step(images, labels):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x=images, y=labels, y_pred=model(images, training=True))
        return tape.gradient(loss, model.trainable_variables)

    return tf.function(step).get_concrete_function(images, labels).graph.get_operations()


def test_build_is_cached_and_a_failed_build_leaves_nothing(tmp_path, monkeypatch):
    # The smallest source, built by the same steps: the whole library takes a minute here.
    monkeypatch.setattr(native_ops, "SOURCES", [native_ops.KERNELS_DIR / "softmax.cc"])
    library = native_ops.build(cache_dir=tmp_path)
    assert library.is_file() and library.parent.parent == tmp_path
    built_at = library.stat().st_mtime_ns
    assert native_ops.build(cache_dir=tmp_path) == library and library.stat().st_mtime_ns == built_at

    # Another compiler is another key: a fresh folder, and a compiler that fails leaves no library.
    monkeypatch.setenv("CXX", "false")
    with pytest.raises(native_ops.BuildError, match="false failed"):
        native_ops.build(cache_dir=tmp_path)
    assert sorted(path.name for path in tmp_path.rglob("*") if path.is_file()) == [native_ops.LIBRARY_NAME]


def test_without_a_compiler_load_warns_and_training_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("CXX", os.path.join(tmp_path, "no-such-compiler"))
    with pytest.warns(RuntimeWarning, match="compiled TensorFlow kernels are not available .*no-such-compiler"):
        assert native_ops.load.__wrapped__() is None
    monkeypatch.setenv(native_ops.DISABLE_VARIABLE, "0")
    assert not native_ops.enabled() and native_ops.load.__wrapped__() is None
    # The keras.ops path the layers take then: the same values as the kernel.
    x = RNG.normal(size=(4, 6)).astype("float32")
    gamma, beta = np.ones(6, "float32"), np.zeros(6, "float32")
    np.testing.assert_allclose(
        layers._layer_norm_with_gradient(x, gamma, beta, 1e-6), tensorflow_kernels.layer_norm(x, gamma, beta, 1e-6), atol=1e-5
    )
