"""TensorFlow-only pieces, used when Keras runs on TensorFlow: the training step's fast
LayerNorm, attention (or, with attention dropout, its heads and softmax gradient) and GELU,
and a run-time check of image sizes the graph does not know.

Without XLA, TensorFlow runs every element-wise op of a graph as its own kernel, one pass
over memory each: the exact GELU and its gradient are about ten such passes over the
largest activation of a block ([B * T, mlp_dim]), LayerNorm about twenty. keras_vit's
compiled kernels (`native_ops`) do each of these in one pass per direction, the bias and
its gradient included; the attention kernel also keeps each (example, head)'s products and
softmax in the core's caches instead of writing each step to memory. Where they cannot be
built (or in mixed precision) the GELU runs as two XLA kernels. The gains are measured in
`docs/benchmarks.md`.

Only `training=True` calls use them: the model's inference graph, and so every export,
keeps the `keras.ops` spelling in `keras_vit.layers`, which other backends use throughout.
The kernels' gradient ops have no gradient of their own: a second-order gradient through
them (a gradient penalty, double backprop) differentiates the same function written in
TensorFlow ops instead (`_differentiable_gradient`), which costs what those ops cost.
The size check is only in graphs whose image size is dynamic (never in a fixed-size export).
"""

import functools

from keras_vit import native_ops


def gelu_exact(x):
    """Exact GELU, `x * Phi(x)`, with its gradient `Phi(x) + x * phi(x)`, one XLA kernel each.

    x: any shape and float dtype; computed in float32 (fused casts), returned in x's dtype.
    """
    return _compiled_gelu()(x)


@functools.cache
def _compiled_gelu():
    import tensorflow as tf

    from keras_vit.activations import INV_SQRT_2, INV_SQRT_2PI

    # reduce_retracing: one compiled function per rank, whatever the batch size.
    @tf.function(jit_compile=True, reduce_retracing=True)
    def forward(x):
        x32 = tf.cast(x, tf.float32)
        return tf.cast(x32 * (0.5 + 0.5 * tf.math.erf(x32 * INV_SQRT_2)), x.dtype)

    @tf.function(jit_compile=True, reduce_retracing=True)
    def backward(x, upstream):
        # Phi is recomputed rather than kept from the forward pass: same speed, and no
        # second [B * T, mlp_dim] tensor held until the backward pass.
        x32 = tf.cast(x, tf.float32)
        cdf = 0.5 + 0.5 * tf.math.erf(x32 * INV_SQRT_2)
        pdf = tf.exp(-0.5 * tf.square(x32)) * INV_SQRT_2PI
        return tf.cast(tf.cast(upstream, tf.float32) * (cdf + x32 * pdf), x.dtype)

    @tf.custom_gradient
    def gelu(x):
        return forward(x), lambda upstream: backward(x, upstream)

    return gelu


def native_kernels_available():
    """Whether `layer_norm`, `attention`, `split_heads`, `bias_gelu` and `softmax` can run
    here: keras_vit's compiled kernels are built and loaded, and the graph being traced is
    not XLA-compiled (XLA cannot compile them; there the `keras.ops` layers run and XLA
    fuses them)."""
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util

    if native_ops.load() is None:
        return False
    return tf.executing_eagerly() or not control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def layer_norm(x, gamma, beta, epsilon):
    """LayerNorm over the last axis with its gradient, one compiled kernel each way.

    x: [..., D] float32; gamma, beta: [D] float32. Returns y [..., D], as
    `keras_vit.layers._layer_norm`. Call only where `native_kernels_available()`.
    """
    import tensorflow as tf

    library = native_ops.load()

    @tf.custom_gradient
    def normalize(x, gamma, beta):
        y, mean, inv_std = library.keras_vit_layer_norm(x, gamma, beta, epsilon=epsilon)

        def kernel_gradient(dy):
            return library.keras_vit_layer_norm_grad(dy, x, mean, inv_std, gamma)

        return y, _differentiable_gradient(kernel_gradient, functools.partial(_layer_norm, epsilon=epsilon), x, gamma, beta)

    return normalize(*map(tf.convert_to_tensor, (x, gamma, beta)))  # tensors, as in split_heads


def split_heads(qkv, bias, num_heads, query_scale):
    """q, k, v [B, heads, T, head_dim] from the fused projection `qkv` [B, T, 3 * D] (without
    its bias) and `bias` [3 * D]: bias added, q multiplied by `query_scale`. One compiled
    kernel each way; the gradient gives d(qkv) and d(bias). float32. Call only where
    `native_kernels_available()`."""
    import tensorflow as tf

    library = native_ops.load()

    @tf.custom_gradient
    def split(qkv, bias):
        query, key, value = library.keras_vit_split_heads(qkv, bias, num_heads=num_heads, query_scale=query_scale)

        def kernel_gradient(d_query, d_key, d_value):
            return library.keras_vit_split_heads_grad(d_query, d_key, d_value, query_scale=query_scale)

        reference = functools.partial(_split_heads, num_heads=num_heads, query_scale=query_scale)
        return (query, key, value), _differentiable_gradient(kernel_gradient, reference, qkv, bias)

    # Tensors, not variables: a custom gradient handles variables that it is given differently.
    return split(tf.convert_to_tensor(qkv), tf.convert_to_tensor(bias))


def attention(qkv, bias, num_heads, query_scale):
    """Self-attention from the fused projection `qkv` [B, T, 3 * D] (without its bias) and
    `bias` [3 * D]: context [B, T, D], the heads side by side (`D = num_heads * head_dim`),
    with the query multiplied by `query_scale`. One compiled kernel each way, (example,
    head) by (example, head): the bias, the cut into heads, both products and the softmax;
    the gradient gives d(qkv) and d(bias). No dropout on the probabilities. float32. Call
    only where `native_kernels_available()`."""
    import tensorflow as tf

    library = native_ops.load()

    @tf.custom_gradient
    def attend(qkv, bias):
        context, probabilities = library.keras_vit_attention(
            qkv, bias, num_heads=num_heads, query_scale=query_scale
        )

        def kernel_gradient(d_context):
            return library.keras_vit_attention_grad(d_context, qkv, bias, probabilities, query_scale=query_scale)

        reference = functools.partial(_attention, num_heads=num_heads, query_scale=query_scale)
        return context, _differentiable_gradient(kernel_gradient, reference, qkv, bias)

    return attend(tf.convert_to_tensor(qkv), tf.convert_to_tensor(bias))  # tensors, as in split_heads


def bias_gelu(h, bias):
    """Exact GELU of `h + bias`: h [..., N] (a matmul without its bias), bias [N] -> [..., N].
    One compiled kernel each way; the gradient gives d(h) and d(bias). float32. Call only
    where `native_kernels_available()`."""
    import tensorflow as tf

    library = native_ops.load()

    @tf.custom_gradient
    def activate(h, bias):
        def kernel_gradient(dy):
            return library.keras_vit_bias_gelu_grad(dy, h, bias)

        return library.keras_vit_bias_gelu(h, bias), _differentiable_gradient(kernel_gradient, _bias_gelu, h, bias)

    return activate(tf.convert_to_tensor(h), tf.convert_to_tensor(bias))  # tensors, as in split_heads


def softmax(x):
    """Softmax over the last axis (TensorFlow's kernel) whose gradient is one compiled
    kernel. x: [..., N] float32. Call only where `native_kernels_available()`."""
    import tensorflow as tf

    library = native_ops.load()

    @tf.custom_gradient
    def normalize(x):
        probabilities = tf.nn.softmax(x)

        def kernel_gradient(dy):
            return library.keras_vit_softmax_grad(probabilities, dy)

        return probabilities, _differentiable_gradient(kernel_gradient, tf.nn.softmax, x)

    return normalize(x)


def _differentiable_gradient(kernel_gradient, reference, *inputs):
    """The gradient function of a compiled kernel, made differentiable.

    kernel_gradient(*upstream) -> the gradients of `inputs` (the kernel's gradient op, which
    has no gradient of its own); reference(*inputs): the kernel's function in TensorFlow
    ops. The returned function gives kernel_gradient's values; its own gradient (a
    second-order gradient) is that of the reference's gradient, taken by TensorFlow. First-
    order training pays an identity op per tensor for it (docs/benchmarks.md, "Measured facts").
    """
    import tensorflow as tf

    zero = tf.UnconnectedGradients.ZERO

    def gradient(*upstream):
        count = len(upstream)

        @tf.custom_gradient
        def first_order(*tensors):  # the upstream gradients, then the inputs
            def second_order(*d_gradients):
                dys, xs = list(tensors[:count]), list(tensors[count:])
                with tf.GradientTape() as outer:
                    outer.watch(tensors)
                    with tf.GradientTape() as inner:
                        inner.watch(xs)
                        outputs = tf.nest.flatten(reference(*xs))
                    gradients = inner.gradient(outputs, xs, dys, unconnected_gradients=zero)
                d_gradients = [tf.zeros_like(g) if d is None else d for g, d in zip(gradients, d_gradients)]
                return outer.gradient(gradients, list(tensors), d_gradients, unconnected_gradients=zero)

            return tf.nest.flatten(kernel_gradient(*tensors[:count])), second_order

        return first_order(*upstream, *inputs)

    return gradient


# The kernels' functions in TensorFlow ops, differentiated only for second-order gradients.


def _layer_norm(x, gamma, beta, epsilon):
    import tensorflow as tf

    centered = x - tf.reduce_mean(x, axis=-1, keepdims=True)
    return centered * tf.math.rsqrt(tf.reduce_mean(tf.square(centered), axis=-1, keepdims=True) + epsilon) * gamma + beta


def _split_heads(qkv, bias, num_heads, query_scale):
    import tensorflow as tf

    batch, tokens = tf.shape(qkv)[0], tf.shape(qkv)[1]
    heads = tf.reshape(qkv + bias, [batch, tokens, 3, num_heads, qkv.shape[-1] // (3 * num_heads)])
    query, key, value = tf.unstack(tf.transpose(heads, [2, 0, 3, 1, 4]))
    return query * query_scale, key, value


def _attention(qkv, bias, num_heads, query_scale):
    import tensorflow as tf

    query, key, value = _split_heads(qkv, bias, num_heads, query_scale)
    context = tf.matmul(tf.nn.softmax(tf.matmul(query, key, transpose_b=True)), value)  # [B, heads, T, head_dim]
    return tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [tf.shape(qkv)[0], tf.shape(qkv)[1], qkv.shape[-1] // 3])


def _bias_gelu(h, bias):
    import tensorflow as tf

    return tf.nn.gelu(h + bias, approximate=False)


def assert_multiple_of(images, patch_size, message):
    """`images` [B, H, W, C], with a check that runs in the graph: H and W are multiples of
    `patch_size` (a dynamic image size: the sides are only known at run time, where a
    TensorFlow error carrying `message` stops a call on an image the patches do not tile)."""
    import tensorflow as tf

    sides = tf.shape(images)[1:3]
    check = tf.debugging.assert_equal(sides % tf.constant(patch_size, sides.dtype), 0, message=message)
    with tf.control_dependencies([check]):
        return tf.identity(images)
