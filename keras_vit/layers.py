"""The layers a Vision Transformer is made of.

Shapes use B = batch, H x W = image size, P = patch size, N = number of patches
(H / P * W / P), T = number of tokens (N plus the prefix tokens: class, distillation,
registers), D = hidden size.
Every layer is written with `keras.ops` and registered, so a saved model reloads with
`safe_mode=True`.
"""

import math

import keras
from keras import ops

from keras_vit import activations, tensorflow_kernels
from keras_vit.resize import resize_position_embedding_in_graph

register = keras.saving.register_keras_serializable(package="keras_vit")

# Initialisers of the original implementation (vit_jax); the tokens that must differ from
# each other from the start (registers, distillation, MAP latent) as timm's. Configs, not
# instances: Keras builds a new initialiser from each use, seeded when the layer is made, so
# that `keras.utils.set_random_seed` decides every weight and no two layers share draws (an
# instance made at import time keeps one seed of its own, the same values for every weight
# of a shape and different ones in every process).
DENSE_KERNEL_INIT = "glorot_uniform"
MLP_BIAS_INIT = {"class_name": "RandomNormal", "config": {"stddev": 1e-6}}
POSITION_INIT = {"class_name": "RandomNormal", "config": {"stddev": 0.02}}
TOKEN_INIT = {"class_name": "RandomNormal", "config": {"stddev": 0.02}}


def mlp_activation(x, name="gelu", training=False):
    """The MLP's activation `name` (see `ViTConfig.mlp_activation`). In training the exact
    GELU carries a hand-written gradient: on TensorFlow as two XLA-compiled kernels
    (`tensorflow_kernels.gelu_exact`; the encoder blocks use keras_vit's compiled kernel
    where they can, `tensorflow_kernels.bias_gelu`), elsewhere `activations.gelu_for_training`."""
    if name == "gelu_tanh":
        return activations.gelu_tanh(x)
    if name == "quick_gelu":
        return activations.quick_gelu(x)
    if not training:
        return activations.gelu(x)
    if keras.backend.backend() == "tensorflow":
        return tensorflow_kernels.gelu_exact(x)
    return activations.gelu_for_training(x)


def _native_kernels(training):
    """Whether a training call runs keras_vit's compiled TensorFlow kernels
    (`tensorflow_kernels`: LayerNorm, attention or its heads and softmax gradient, bias + GELU): on
    TensorFlow, where they can be built, outside XLA."""
    return bool(training) and keras.backend.backend() == "tensorflow" and tensorflow_kernels.native_kernels_available()


def _plain_dense(dense):
    """Whether a Dense layer is a plain matmul + bias (not quantized, no LoRA), which the
    compiled kernels may compute from its kernel and bias directly."""
    return dense.quantization_mode is None and not dense.lora_enabled


def _float32(x):
    return keras.backend.standardize_dtype(x.dtype) == "float32"


def _layer_norm(x, gamma, beta, epsilon):
    """LayerNorm over the last axis, [..., D] -> (output, normalized, inv_std).

    Centred first, so that the output is four element-wise passes over x after the mean
    (`centered * inv_std * gamma + beta`), one fewer than Keras' spelling; the exports keep
    this form (TFLite, ONNX's LayerNormalization fusion matches it).
    """
    centered = x - ops.mean(x, axis=-1, keepdims=True)
    inv_std = ops.rsqrt(ops.mean(ops.square(centered), axis=-1, keepdims=True) + epsilon)
    normalized = centered * inv_std
    return normalized * gamma + beta, normalized, inv_std


def _layer_norm_with_gradient(x, gamma, beta, epsilon):
    """`_layer_norm` with a hand-written gradient (float32 in and out)."""
    reduce_axes = tuple(range(len(x.shape) - 1))

    @ops.custom_gradient
    def layer_norm(x, gamma, beta):
        output, normalized, inv_std = _layer_norm(x, gamma, beta, epsilon)

        def grad(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            scaled = upstream * gamma
            d_x = inv_std * (
                scaled
                - ops.mean(scaled, axis=-1, keepdims=True)
                - normalized * ops.mean(scaled * normalized, axis=-1, keepdims=True)
            )
            return d_x, ops.sum(upstream * normalized, axis=reduce_axes), ops.sum(upstream, axis=reduce_axes)

        return output, grad

    return layer_norm(x, gamma, beta)


@register
class LayerNorm(keras.layers.LayerNormalization):
    """Keras' LayerNormalization over the last axis (same weights and config), computed as
    `_layer_norm`, with a cheaper backward pass in training.

    In training the gradient is written out
    (`dx = (g*gamma - mean(g*gamma) - xhat * mean(g*gamma*xhat)) / std`) instead of
    differentiating each op of the forward pass (the gain: docs/benchmarks.md, "Measured facts");
    on TensorFlow both directions run as keras_vit's compiled kernels where they can be built
    (`tensorflow_kernels.layer_norm`).
    Input and output: [..., D]; statistics in float32 under mixed precision too. Keras'
    other options (another axis, no centre or scale, rms_scaling) are refused.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.axis not in (-1, [-1]) or not (self.center and self.scale) or self.rms_scaling:
            raise ValueError(
                "keras_vit LayerNorm normalises over the last axis with both gamma and beta: "
                f"got axis={self.axis}, center={self.center}, scale={self.scale}, rms_scaling={self.rms_scaling}. "
                "Use keras.layers.LayerNormalization for the other options."
            )

    def call(self, inputs, training=None):
        x = ops.cast(inputs, "float32")
        gamma, beta = ops.cast(self.gamma, "float32"), ops.cast(self.beta, "float32")
        if _native_kernels(training):
            output = tensorflow_kernels.layer_norm(x, gamma, beta, self.epsilon)
        elif training:
            output = _layer_norm_with_gradient(x, gamma, beta, self.epsilon)
        else:
            output = _layer_norm(x, gamma, beta, self.epsilon)[0]
        return ops.cast(output, self.compute_dtype)


def _length(x):
    """The number of tokens of x [B, T, D]: a Python int when the graph knows it (the exported
    graphs stay static-shaped), a run-time scalar with a dynamic image size."""
    return x.shape[1] if x.shape[1] is not None else ops.shape(x)[1]


def _sides(images):
    """(H, W) of images [B, H, W, C]: Python ints when known, else run-time scalars."""
    return tuple(images.shape[i] if images.shape[i] is not None else ops.shape(images)[i] for i in (1, 2))


def patch_grid(sides, patch_size, pad=False):
    """The patch grid (rows, cols) of an image of `sides` (H, W), ints or run-time scalars
    (see `_sides`); `pad` counts a partial last patch (padded)."""
    return tuple((side + p - 1) // p if pad else side // p for side, p in zip(sides, patch_size))


@register
class PatchEmbedding(keras.layers.Layer):
    """Cuts an image into patches and projects each to D: Conv2D(kernel = stride = P), flatten.

    Input: [B, H, W, C]. Output: [B, N, D], patches in row-major order. H and W must be
    multiples of P; with `pad=True` (timm's `dynamic_img_pad`) the image is zero-padded at
    the bottom and right to the next multiple instead.
    """

    def __init__(self, patch_size, hidden_dim, use_bias=True, pad=False, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = tuple(patch_size) if not isinstance(patch_size, int) else (patch_size, patch_size)
        self.hidden_dim = hidden_dim
        self.use_bias = use_bias
        self.pad = pad
        self.projection = keras.layers.Conv2D(
            hidden_dim,
            kernel_size=self.patch_size,
            strides=self.patch_size,
            padding="valid",
            use_bias=use_bias,
            kernel_initializer="lecun_normal",
            data_format="channels_last",  # images are [B, H, W, C] whatever keras.config's default
            dtype=self.dtype_policy,
            name="projection",
        )

    def build(self, input_shape):
        self.projection.build(input_shape)

    def call(self, images):
        (ph, pw), (height, width) = self.patch_size, images.shape[1:3]
        if self.pad:
            h, w = _sides(images)
            rows, cols = patch_grid((h, w), self.patch_size, pad=True)
            images = ops.pad(images, ((0, 0), (0, rows * ph - h), (0, cols * pw - w), (0, 0)))
        elif (height is not None and height % ph) or (width is not None and width % pw):
            raise ValueError(self._size_error(height, width))
        elif (height is None or width is None) and keras.backend.backend() == "tensorflow":
            images = tensorflow_kernels.assert_multiple_of(images, self.patch_size, self._size_error("H", "W"))
        patches = self.projection(images)
        if patches.shape[1] is not None and patches.shape[2] is not None:
            return ops.reshape(patches, (-1, patches.shape[1] * patches.shape[2], self.hidden_dim))
        return ops.reshape(patches, (ops.shape(patches)[0], -1, self.hidden_dim))

    def _size_error(self, height, width):
        ph, pw = self.patch_size
        return (
            f"Image size {height}x{width} is not a multiple of the patch size {ph}x{pw}: resize the "
            "images (e.g. keras_vit.preprocessing.resize_for_model), or build with dynamic_image_pad=True."
        )

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        if height is None or width is None:
            return (batch, None, self.hidden_dim)
        rows, cols = patch_grid((height, width), self.patch_size, self.pad)
        return (batch, rows * cols, self.hidden_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "patch_size": self.patch_size,
            "hidden_dim": self.hidden_dim,
            "use_bias": self.use_bias,
            "pad": self.pad,
        }


@register
class ClassToken(keras.layers.Layer):
    """Prepends `num_tokens` learned tokens: the class token, and in the same way the
    distillation token (DeiT) or the register tokens (Darcet et al., 2024).

    Input: [B, N, D], N static. Output: [B, num_tokens + N, D]. Weight `token`
    [1, num_tokens, D], initialised by `initializer` (zeros for the class token, as vit_jax).
    """

    def __init__(self, num_tokens=1, initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.num_tokens = num_tokens
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        self.token = self.add_weight(shape=(1, self.num_tokens, input_shape[-1]), initializer=self.initializer, name="token")

    def call(self, tokens):
        token = ops.cast(self.token, tokens.dtype)
        if tokens.shape[1] is None:  # a dynamic image size: broadcast to the run-time batch
            shape = (ops.shape(tokens)[0], self.num_tokens, tokens.shape[-1])
            return ops.concatenate([ops.broadcast_to(token, shape), tokens], axis=1)
        # Zero-pad rows in front of every sequence and add the tokens there: the same values
        # as concatenating broadcast tokens, with no op that reads the batch size at run time
        # (the exported graphs stay static-shaped; TFLite runs it all in XNNPACK).
        token_rows = ops.pad(token, ((0, 0), (0, tokens.shape[1]), (0, 0)))
        return ops.pad(tokens, ((0, 0), (self.num_tokens, 0), (0, 0))) + token_rows

    def compute_output_shape(self, input_shape):
        batch, length, dim = input_shape
        return (batch, None if length is None else length + self.num_tokens, dim)

    def get_config(self):
        return {
            **super().get_config(),
            "num_tokens": self.num_tokens,
            "initializer": keras.initializers.serialize(self.initializer),
        }


@register
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned position embedding. Input and output: [B, T, D].

    The embedding is [1, T, D]: `num_prefix_tokens` rows (class, distillation, registers)
    followed by the `grid_size` patch grid, row-major. A grid-only embedding
    (`num_prefix_tokens=0`, timm's `no_embed_class`) is added before the prefix tokens are
    prepended.

    With `resize_method` (a dynamic image size), the layer is called on `[tokens, images]`
    and resizes the grid part to the images' patch grid at every call (`"bicubic"` as timm's
    `dynamic_img_size`, `"bilinear"` as vit_jax), prefix rows kept; at `grid_size` itself
    the resize is the identity.
    """

    def __init__(self, grid_size, num_prefix_tokens=1, resize_method=None, patch_size=None, pad=False, **kwargs):
        super().__init__(**kwargs)
        self.grid_size = tuple(grid_size)
        self.num_prefix_tokens = num_prefix_tokens
        self.resize_method = resize_method
        self.patch_size = None if patch_size is None else tuple(patch_size)
        self.pad = pad

    def build(self, input_shape):
        tokens_shape = input_shape[0] if self.resize_method else input_shape
        expected = self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]
        if not self.resize_method and tokens_shape[1] != expected:
            raise ValueError(f"PositionEmbedding expects {expected} tokens, got input shape {tokens_shape}.")
        self.embedding = self.add_weight(
            shape=(1, expected, tokens_shape[-1]), initializer=POSITION_INIT, name="embedding"
        )

    def call(self, inputs):
        if not self.resize_method:
            return inputs + ops.cast(self.embedding, inputs.dtype)
        tokens, images = inputs
        grid = patch_grid(_sides(images), self.patch_size, self.pad)
        embedding = resize_position_embedding_in_graph(self.embedding, self.grid_size, grid, self.num_prefix_tokens, self.resize_method)
        return tokens + ops.cast(embedding, tokens.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape[0] if self.resize_method else input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "grid_size": self.grid_size,
            "num_prefix_tokens": self.num_prefix_tokens,
            "resize_method": self.resize_method,
            "patch_size": self.patch_size,
            "pad": self.pad,
        }


@register
class DropPath(keras.layers.Layer):
    """Stochastic depth: during training, zeroes a whole residual branch per sample with
    probability `rate` and rescales the kept ones by 1 / (1 - rate). Identity at inference.
    Input and output: [B, ...]."""

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        noise = keras.random.uniform(shape, seed=self.seed_generator, dtype=x.dtype)
        return x * ops.floor(keep + noise) / keep

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def _attend(query, key, value, dropout=None, training=None, return_probabilities=False, query_scaled=False):
    """Scaled dot-product attention of each head: query [B, heads, Q, head_dim], key and value
    [B, heads, T, head_dim] -> context [B * Q, heads * head_dim] (a row per query token),
    and with `return_probabilities` the attention probabilities [B, heads, Q, T] too.
    `query_scaled`: the query comes already multiplied by 1 / sqrt(head_dim).

    The softmax runs in float32: under mixed_float16 the scores can overflow.
    """
    heads, head_dim = query.shape[1], query.shape[-1]
    if not query_scaled:
        query = query * ops.cast(1.0 / math.sqrt(head_dim), query.dtype)
    scores = ops.einsum("bhqd,bhkd->bhqk", query, key)
    scores = ops.cast(scores, "float32")
    probs = tensorflow_kernels.softmax(scores) if _native_kernels(training) else ops.softmax(scores, axis=-1)
    weights = ops.cast(probs, query.dtype)
    if dropout is not None:
        weights = dropout(weights, training=training)
    context = ops.einsum("bhqk,bhkd->bhqd", weights, value)
    context = ops.reshape(ops.transpose(context, (0, 2, 1, 3)), (-1, heads * head_dim))
    return (context, probs) if return_probabilities else context


def _split_leading(x, parts):
    """[parts, ...] -> `parts` tensors [...], like `unstack(x, axis=0)`.

    Spelled split + squeeze because TFLite's UNPACK has no XNNPACK kernel: with `unstack`
    every attention block would end an XNNPACK partition. TensorFlow shares the input's
    buffer either way.
    """
    return [ops.squeeze(part, 0) for part in ops.split(x, parts, axis=0)]


@register
class MultiHeadSelfAttention(keras.layers.Layer):
    """Multi-head self-attention with one fused q/k/v projection.

    Input: [B, T, D]. Output: [B, T, D], or [B, K, D] with `output_tokens=K`: the attention
    output of the first K tokens only (queries from those tokens, keys and values from all).
    Weights: `qkv` Dense D -> 3D (q, k, v blocks in that order, each heads-major),
    `output` Dense D -> D.

    Both Dense layers see the tokens as one [B * T, D] matrix (a free reshape): a 2-D
    matmul that TensorFlow fuses with the bias add, where a 3-D input would go through
    `tensordot` and leave dynamic-shape ops in every exported graph.
    """

    def __init__(self, num_heads, attention_dropout_rate=0.0, output_tokens=None, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.attention_dropout_rate = attention_dropout_rate
        self.output_tokens = output_tokens
        self.attention_dropout = keras.layers.Dropout(attention_dropout_rate, dtype=self.dtype_policy)

    def build(self, input_shape):
        dim = input_shape[-1]
        self.head_dim = dim // self.num_heads
        self.qkv = keras.layers.Dense(3 * dim, kernel_initializer=DENSE_KERNEL_INIT, dtype=self.dtype_policy, name="qkv")
        self.output_projection = keras.layers.Dense(
            dim, kernel_initializer=DENSE_KERNEL_INIT, dtype=self.dtype_policy, name="output"
        )
        self.qkv.build(input_shape)
        self.output_projection.build(input_shape)

    def call(self, x, training=None):
        length, dim = _length(x), x.shape[2]
        queries = length if self.output_tokens is None else self.output_tokens
        native = self.output_tokens is None and self._splits_natively(x, training)
        if native and not self.attention_dropout_rate:
            return ops.reshape(self.output_projection(self._attend_native(x)), (-1, queries, dim))
        if native:
            query, key, value = self._project_all_native(x)
        elif self.output_tokens is None or self.qkv.quantization_mode is not None:
            query, key, value = self._project_all(x)
            if self.output_tokens is not None:
                query = query[:, :, :queries]
        else:
            query, key, value = self._project_first_queries(x, queries)
        context = _attend(query, key, value, self.attention_dropout, training, query_scaled=native)
        return ops.reshape(self.output_projection(context), (-1, queries, dim))

    def with_probabilities(self, x):
        """Inference for every token whatever `output_tokens`: (output [B, T, D], attention
        probabilities [B, heads, T, T], float32)."""
        context, probabilities = _attend(*self._project_all(x), return_probabilities=True)
        return ops.reshape(self.output_projection(context), (-1, _length(x), x.shape[2])), probabilities

    def _project_all(self, x):
        """q, k, v [B, heads, T, head_dim] of every token, through the `qkv` Dense."""
        length, dim = _length(x), x.shape[2]
        qkv = ops.reshape(self.qkv(ops.reshape(x, (-1, dim))), (-1, length, 3, self.num_heads, self.head_dim))
        # One transpose to [3, B, heads, T, head_dim]; then both attention products are plain
        # batched matmuls with no further transposes (the einsums need none).
        return _split_leading(ops.transpose(qkv, (2, 0, 3, 1, 4)), 3)

    def _splits_natively(self, x, training):
        """Whether this training call cuts q, k, v out with keras_vit's compiled kernel: float32,
        and a plain `qkv` Dense (not quantized, no LoRA)."""
        return _native_kernels(training) and _float32(x) and _plain_dense(self.qkv)

    def _project_all_native(self, x):
        """`_project_all` as the matmul, then one compiled kernel each way
        (`tensorflow_kernels.split_heads`: the bias, the cut into heads, and the query's
        1 / sqrt(head_dim), which comes applied)."""
        qkv = self._qkv_without_bias(x)
        return tensorflow_kernels.split_heads(qkv, self.qkv.bias, self.num_heads, 1.0 / math.sqrt(self.head_dim))

    def _attend_native(self, x):
        """The context [B * T, D] of a training call without attention dropout: the matmul,
        then one compiled kernel each way (`tensorflow_kernels.attention`: the bias, the
        heads, both products and the softmax, an (example, head) at a time)."""
        qkv = self._qkv_without_bias(x)
        context = tensorflow_kernels.attention(qkv, self.qkv.bias, self.num_heads, 1.0 / math.sqrt(self.head_dim))
        return ops.reshape(context, (-1, x.shape[2]))

    def _qkv_without_bias(self, x):
        """x [B, T, D] times the `qkv` Dense's kernel: [B, T, 3D], the bias left to a kernel."""
        length, dim = _length(x), x.shape[2]
        return ops.reshape(ops.matmul(ops.reshape(x, (-1, dim)), self.qkv.kernel), (-1, length, 3 * dim))

    def _project_first_queries(self, x, queries):
        """q [B, heads, K, head_dim] of the first K tokens; k, v [B, heads, T, head_dim] of all.

        The `qkv` Dense's weights in two column slices: [D, D] for q on K tokens, [D, 2D]
        for k and v on all of them.
        """
        length, dim = _length(x), x.shape[2]
        kernel, bias = ops.cast(self.qkv.kernel, x.dtype), ops.cast(self.qkv.bias, x.dtype)
        query = ops.matmul(ops.reshape(x[:, :queries], (-1, dim)), kernel[:, :dim]) + bias[:dim]
        query = ops.transpose(ops.reshape(query, (-1, queries, self.num_heads, self.head_dim)), (0, 2, 1, 3))
        key_value = ops.matmul(ops.reshape(x, (-1, dim)), kernel[:, dim:]) + bias[dim:]
        key_value = ops.reshape(key_value, (-1, length, 2, self.num_heads, self.head_dim))
        key, value = _split_leading(ops.transpose(key_value, (2, 0, 3, 1, 4)), 2)
        return query, key, value

    def compute_output_shape(self, input_shape):
        queries = input_shape[1] if self.output_tokens is None else self.output_tokens
        return (input_shape[0], queries, input_shape[2])

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "attention_dropout_rate": self.attention_dropout_rate,
            "output_tokens": self.output_tokens,
        }


@register
class TransformerBlock(keras.layers.Layer):
    """Pre-norm encoder block: `x + MHSA(LN(x))`, then `x + MLP(LN(x))`.

    The MLP is Dense(mlp_dim), `activation` (see `mlp_activation`), dropout, Dense(D),
    dropout, on the tokens as one [B * T, D] matrix (see `MultiHeadSelfAttention`). With
    `layer_scale_init`, each residual branch is scaled per channel (`LayerScale`: weights
    `attention_scale`, `mlp_scale`). Each branch goes through stochastic depth
    (`drop_path_rate`). Input and output: [B, T, D].

    With `output_tokens=K` only the first K tokens go on past the attention (their queries
    attend to every token): output [B, K, D]. The model's last block does this when only
    the class token is read; it skips the rest of that block's work, the same numbers.
    """

    def __init__(
        self,
        num_heads,
        mlp_dim,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        drop_path_rate=0.0,
        activation="gelu",
        layer_norm_epsilon=1e-6,
        output_tokens=None,
        layer_scale_init=None,
        gelu_approximate=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.dropout_rate = dropout_rate
        self.attention_dropout_rate = attention_dropout_rate
        self.drop_path_rate = drop_path_rate
        if gelu_approximate is not None:  # configs saved before `activation`
            activation = "gelu_tanh" if gelu_approximate else "gelu"
        self.activation = activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self.output_tokens = output_tokens
        self.layer_scale_init = layer_scale_init
        policy = self.dtype_policy
        self.attention_scale = self.mlp_scale = None
        if layer_scale_init is not None:
            self.attention_scale = LayerScale(layer_scale_init, dtype=policy, name="attention_scale")
            self.mlp_scale = LayerScale(layer_scale_init, dtype=policy, name="mlp_scale")
        self.attention_norm = LayerNorm(epsilon=layer_norm_epsilon, dtype=policy, name="attention_norm")
        self.attention = MultiHeadSelfAttention(
            num_heads, attention_dropout_rate, output_tokens, dtype=policy, name="attention"
        )
        self.mlp_norm = LayerNorm(epsilon=layer_norm_epsilon, dtype=policy, name="mlp_norm")
        self.dropout = keras.layers.Dropout(dropout_rate, dtype=policy)
        self.drop_path = DropPath(drop_path_rate, dtype=policy)

    def build(self, input_shape):
        dim = input_shape[-1]
        policy = self.dtype_policy
        self.mlp_dense_1 = keras.layers.Dense(
            self.mlp_dim, kernel_initializer=DENSE_KERNEL_INIT, bias_initializer=MLP_BIAS_INIT, dtype=policy, name="mlp_dense_1"
        )
        self.mlp_dense_2 = keras.layers.Dense(
            dim, kernel_initializer=DENSE_KERNEL_INIT, bias_initializer=MLP_BIAS_INIT, dtype=policy, name="mlp_dense_2"
        )
        self.attention_norm.build(input_shape)
        self.attention.build(input_shape)
        self.mlp_norm.build(input_shape)
        self.mlp_dense_1.build(input_shape)
        self.mlp_dense_2.build(tuple(input_shape[:-1]) + (self.mlp_dim,))
        if self.layer_scale_init is not None:
            self.attention_scale.build(input_shape)
            self.mlp_scale.build(input_shape)

    def call(self, x, training=None):
        branch = self.attention(self.attention_norm(x, training=training), training=training)
        if self.output_tokens is not None:
            x = x[:, : self.output_tokens]
        return self._finish(x, branch, training)

    def with_attention(self, x):
        """Inference for every token whatever `output_tokens`: (output [B, T, D], the
        attention probabilities [B, heads, T, T], float32). `keras_vit.attention_maps`."""
        branch, probabilities = self.attention.with_probabilities(self.attention_norm(x))
        return self._finish(x, branch, False), probabilities

    def _finish(self, x, attention_branch, training):
        """The block after its attention: the residual, then `x + MLP(LN(x))`."""
        length, dim = _length(x), x.shape[2]
        x = x + self._residual(attention_branch, self.attention_scale, training)
        normed = ops.reshape(self.mlp_norm(x, training=training), (-1, dim))
        if self.activation == "gelu" and _native_kernels(training) and _float32(normed) and _plain_dense(self.mlp_dense_1):
            # The matmul, then its bias and the GELU as one compiled kernel each way.
            hidden = tensorflow_kernels.bias_gelu(ops.matmul(normed, self.mlp_dense_1.kernel), self.mlp_dense_1.bias)
        else:
            hidden = mlp_activation(self.mlp_dense_1(normed), self.activation, training)
        branch = self.mlp_dense_2(self.dropout(hidden, training=training))
        return x + self._residual(ops.reshape(branch, (-1, length, dim)), self.mlp_scale, training)

    def _residual(self, branch, scale, training):
        """What a branch adds to the residual stream: dropout, LayerScale, stochastic depth."""
        branch = self.dropout(branch, training=training)
        if scale is not None:
            branch = scale(branch)
        return self.drop_path(branch, training=training)

    def compute_output_shape(self, input_shape):
        return self.attention.compute_output_shape(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "dropout_rate": self.dropout_rate,
            "attention_dropout_rate": self.attention_dropout_rate,
            "drop_path_rate": self.drop_path_rate,
            "activation": self.activation,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "output_tokens": self.output_tokens,
            "layer_scale_init": self.layer_scale_init,
        }


@register
class TokenPooling(keras.layers.Layer):
    """Reduces the token sequence to one vector.

    `token`: the token at `token_index` (0, the class token; 1, DeiT's distillation token).
    `gap`: the mean of the patch tokens (the `num_prefix_tokens` before them excluded).
    `max`: their maximum, channel by channel.
    Input: [B, T, D]. Output: [B, D].
    """

    def __init__(self, mode="token", num_prefix_tokens=1, token_index=0, **kwargs):
        super().__init__(**kwargs)
        self.mode = mode
        self.num_prefix_tokens = num_prefix_tokens
        self.token_index = token_index

    def call(self, tokens):
        if self.mode == "token":
            # Not `tokens[:, i]`: XNNPACK has no kernel for a slice that drops an axis.
            return ops.reshape(tokens[:, self.token_index : self.token_index + 1], (-1, tokens.shape[-1]))
        if self.mode == "max":
            return ops.max(tokens[:, self.num_prefix_tokens :], axis=1)
        return ops.mean(tokens[:, self.num_prefix_tokens :], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {
            **super().get_config(),
            "mode": self.mode,
            "num_prefix_tokens": self.num_prefix_tokens,
            "token_index": self.token_index,
        }


@register
class LayerScale(keras.layers.Layer):
    """A learned per-channel scale of a residual branch (CaiT; DeiT-3, DINOv2).

    Input and output: [..., D]. Weight `gamma` [D], initialised to `init_value`.
    """

    def __init__(self, init_value=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.init_value = init_value

    def build(self, input_shape):
        self.gamma = self.add_weight(
            shape=(input_shape[-1],), initializer=keras.initializers.Constant(self.init_value), name="gamma"
        )

    def call(self, x):
        return x * ops.cast(self.gamma, x.dtype)

    def get_config(self):
        return {**super().get_config(), "init_value": self.init_value}


@register
class AttentionPooling(keras.layers.Layer):
    """Attention pooling with a learned query (big_vision's MAPHead, timm's
    `AttentionPoolLatent`; SigLIP): one latent token attends to the tokens, then an MLP
    refines it, `x + MLP(LN(x))`.

    Weights: `latent` [1, 1, D]; Dense layers `query` (D -> D, on the latent), `key_value`
    (D -> 2D: k | v, each heads-major), `output` (D -> D), `mlp_dense_1` (D -> mlp_dim),
    `mlp_dense_2` (mlp_dim -> D); LayerNorm `norm`. The first `num_prefix_tokens` tokens
    (class, registers) are not pooled. Input: [B, T, D]. Output: [B, D].
    """

    def __init__(self, num_heads, mlp_dim, activation="gelu", layer_norm_epsilon=1e-6, num_prefix_tokens=0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.activation = activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self.num_prefix_tokens = num_prefix_tokens
        self.norm = LayerNorm(epsilon=layer_norm_epsilon, dtype=self.dtype_policy, name="norm")

    def build(self, input_shape):
        dim = input_shape[-1]
        self.head_dim = dim // self.num_heads
        self.latent = self.add_weight(shape=(1, 1, dim), initializer=TOKEN_INIT, name="latent")
        for name, units, inputs in (
            ("query", dim, dim), ("key_value", 2 * dim, dim), ("output", dim, dim),
            ("mlp_dense_1", self.mlp_dim, dim), ("mlp_dense_2", dim, self.mlp_dim),
        ):
            dense = keras.layers.Dense(units, kernel_initializer=DENSE_KERNEL_INIT, dtype=self.dtype_policy, name=name)
            dense.build((None, inputs))
            setattr(self, "output_projection" if name == "output" else name, dense)
        self.norm.build((None, dim))

    def call(self, tokens, training=None):
        tokens = tokens[:, self.num_prefix_tokens :]
        length, dim = _length(tokens), tokens.shape[2]
        # The latent as one token per image: zeros of the batch's shape plus the latent, so
        # that no op reads the batch size at run time (as in ClassToken).
        latent = tokens[:, :1] * ops.cast(0.0, tokens.dtype) + ops.cast(self.latent, tokens.dtype)
        query = ops.reshape(self.query(ops.reshape(latent, (-1, dim))), (-1, 1, self.num_heads, self.head_dim))
        key_value = ops.reshape(self.key_value(ops.reshape(tokens, (-1, dim))), (-1, length, 2, self.num_heads, self.head_dim))
        key, value = _split_leading(ops.transpose(key_value, (2, 0, 3, 1, 4)), 2)
        x = self.output_projection(_attend(ops.transpose(query, (0, 2, 1, 3)), key, value))  # [B, D]
        branch = self.mlp_dense_2(mlp_activation(self.mlp_dense_1(self.norm(x, training=training)), self.activation, training))
        return x + branch

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "activation": self.activation,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "num_prefix_tokens": self.num_prefix_tokens,
        }
