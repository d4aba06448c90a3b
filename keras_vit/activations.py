"""The MLP activations of a ViT, written with `keras.ops`.

`gelu` is exact (erf), as in timm and Hugging Face; `gelu_tanh` is the tanh approximation
of flax / vit_jax; `quick_gelu` is OpenAI CLIP's `x * sigmoid(1.702 x)`. The exact form is
spelled with `erf` so that every exporter (TFLite builtins, tf2onnx) sees an op it knows.
"""

import math

from keras import ops

INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu(x):
    """Exact GELU, x * Phi(x)."""
    return 0.5 * x * (1.0 + ops.erf(x * INV_SQRT_2))


def gelu_tanh(x):
    """GELU's tanh approximation (flax's default)."""
    return ops.gelu(x, approximate=True)


def quick_gelu(x):
    """OpenAI CLIP's approximation of GELU, x * sigmoid(1.702 x)."""
    return x * ops.sigmoid(1.702 * x)


@ops.custom_gradient
def gelu_for_training(x):
    """Exact GELU whose gradient, Phi(x) + x * phi(x), reuses Phi: about half the
    element-wise passes of the differentiated formula (any backend; TensorFlow training
    uses `tensorflow_kernels.gelu_exact` instead)."""
    cdf = 0.5 + 0.5 * ops.erf(x * INV_SQRT_2)

    def grad(*args, upstream=None):
        upstream = args[0] if upstream is None else upstream
        pdf = ops.exp(-0.5 * ops.square(x)) * INV_SQRT_2PI
        return upstream * (cdf + x * pdf)

    return x * cdf, grad
