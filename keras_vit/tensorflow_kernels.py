"""TensorFlow-only pieces, used when Keras runs on TensorFlow: the training step's fast GELU,
and a run-time check of image sizes the graph does not know.

Without XLA, TensorFlow runs every element-wise op of a graph as its own kernel, one pass
over memory each. The exact GELU and its gradient are about ten such passes over the
largest activation of a block ([B * T, mlp_dim]); compiled with XLA each direction is one
fused kernel (the gain is measured in `docs/benchmarks.md`).

Only `training=True` calls use the GELU: the model's inference graph, and so every export,
keeps the `keras.ops` spelling in `keras_vit.layers`, which other backends use throughout.
The size check is only in graphs whose image size is dynamic (never in a fixed-size export).
"""

import functools


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


def assert_multiple_of(images, patch_size, message):
    """`images` [B, H, W, C], with a check that runs in the graph: H and W are multiples of
    `patch_size` (a dynamic image size: the sides are only known at run time, where a
    TensorFlow error carrying `message` stops a call on an image the patches do not tile)."""
    import tensorflow as tf

    sides = tf.shape(images)[1:3]
    check = tf.debugging.assert_equal(sides % tf.constant(patch_size, sides.dtype), 0, message=message)
    with tf.control_dependencies([check]):
        return tf.identity(images)
