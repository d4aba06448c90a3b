"""The Vision Transformer model: `ViTModel` (a functional `keras.Model` that carries its
`ViTConfig`), the `VisionTransformer` builder and the named variants (ViTTi16 ... ViTH14)."""

import keras
import numpy as np

from keras_vit import layers
from keras_vit.config import MODEL_SIZES, VARIANTS, ViTConfig
from keras_vit.weights import (
    SOURCE_DECIDED_FIELDS,
    config_for_checkpoint,
    load_checkpoint,
    match_variant,
    read_weights,
)


def _vit_outputs(c, inputs):
    """The layers of the ViT of config `c` applied to `inputs` [B, H, W, C] (see `ViTModel`)."""
    x = layers.PatchEmbedding(c.patch_size, c.hidden_dim, use_bias=c.patch_bias, pad=c.dynamic_image_pad, name="patch_embedding")(inputs)
    x = _prefix_tokens_and_positions(c, x, inputs)
    x = keras.layers.Dropout(c.dropout_rate, name="embedding_dropout")(x)
    if c.pre_norm:
        x = layers.LayerNorm(epsilon=c.layer_norm_epsilon, name="pre_norm")(x)

    # Stochastic depth grows linearly with depth, 0 for the first block (as in timm/DeiT).
    drop_path_rates = np.linspace(0.0, c.drop_path_rate, c.num_layers)
    # With token pooling nothing reads the other tokens after the last attention, so the
    # last block computes only the pooled tokens' output (class, and distillation).
    pooled_tokens = 1 + int(c.distillation_token) if c.pooling == "token" else None
    for i in range(c.num_layers):
        x = layers.TransformerBlock(
            num_heads=c.num_heads,
            mlp_dim=c.mlp_dim,
            dropout_rate=c.dropout_rate,
            attention_dropout_rate=c.attention_dropout_rate,
            drop_path_rate=float(drop_path_rates[i]),
            activation=c.mlp_activation,
            layer_norm_epsilon=c.layer_norm_epsilon,
            output_tokens=pooled_tokens if i == c.num_layers - 1 else None,
            layer_scale_init=c.layer_scale_init,
            name=f"encoder_block_{i}",
        )(x)
    if not c.fc_norm:
        x = layers.LayerNorm(epsilon=c.layer_norm_epsilon, name="encoder_norm")(x)
    if c.pooling is None:
        return x
    return _head(c, x)


def _prefix_tokens_and_positions(c, patches, images):
    """[B, N, D] patch tokens -> [B, T, D]: [class, distillation, registers..., patches], with
    the position embedding added to all of them or (`embed_prefix_tokens=False`) to the
    patches alone, before the others are prepended (timm's `no_embed_class`). With a dynamic
    image size the embedding is resized to the patch grid of `images` at every call."""

    def add_positions(x, num_prefix_tokens):
        if not c.dynamic_image_size:
            return layers.PositionEmbedding(c.grid_size, num_prefix_tokens, name="position_embedding")(x)
        return layers.PositionEmbedding(
            c.grid_size, num_prefix_tokens, c.position_resize_method, c.patch_size, c.dynamic_image_pad, name="position_embedding"
        )([x, images])

    x = patches
    if not c.embed_prefix_tokens:
        x = add_positions(x, 0)
    if c.num_register_tokens:
        x = layers.ClassToken(c.num_register_tokens, layers.TOKEN_INIT, name="register_tokens")(x)
    if c.distillation_token:
        x = layers.ClassToken(1, layers.TOKEN_INIT, name="distillation_token")(x)
    if c.class_token:
        x = layers.ClassToken(name="class_token")(x)
    if c.embed_prefix_tokens:
        x = add_positions(x, c.num_prefix_tokens)
    return x


def _head(c, tokens):
    """Pooling, the optional norm after it and pre-logits layer, and the classifier:
    [B, T, D] -> [B, num_classes] logits (or probabilities), or [B, D] features."""
    if c.pooling == "map":
        x = layers.AttentionPooling(
            c.num_heads, c.mlp_dim, c.mlp_activation, c.layer_norm_epsilon, c.num_prefix_tokens, name="attention_pooling"
        )(tokens)
    else:
        x = layers.TokenPooling(c.pooling, c.num_prefix_tokens, name="pooling")(tokens)
    if c.fc_norm:
        x = layers.LayerNorm(epsilon=c.layer_norm_epsilon, name="fc_norm")(x)
    if c.representation_size is not None:
        x = keras.layers.Dense(c.representation_size, activation="tanh", name="pre_logits")(x)
    distilled = None
    if c.distillation_token:  # DeiT: the distillation token has a classifier of its own
        distilled = layers.TokenPooling("token", token_index=1, name="distillation_pooling")(tokens)
    if not c.include_top:
        return x if distilled is None else keras.layers.Average(name="pre_logits_mean")([x, distilled])
    # Zero-initialised classifier, as in the paper; float32 so that logits stay float32
    # under mixed precision.
    x = keras.layers.Dense(c.num_classes, kernel_initializer="zeros", dtype="float32", name="head")(x)
    if distilled is not None:  # at inference, the mean of the two classifiers (as DeiT and timm)
        distilled = keras.layers.Dense(c.num_classes, kernel_initializer="zeros", dtype="float32", name="head_dist")(distilled)
        x = keras.layers.Average(dtype="float32", name="logits_mean")([x, distilled])
    if c.classifier_activation is not None:
        x = keras.layers.Activation(c.classifier_activation, dtype="float32", name="predictions")(x)
    return x


@layers.register
class ViTModel(keras.Model):
    """A Vision Transformer (Dosovitskiy et al., 2021): a functional `keras.Model` that keeps
    the `ViTConfig` it was built from, as keras-hub's `Backbone` keeps its arguments.

    `model.vit_config` is that config: every architecture option (those a checkpoint decided
    too), the preprocessing its inputs need and its label set. It survives `.keras`
    save/load (also with `safe_mode=True`), so nothing has to read a model's architecture
    back from its kernel shapes or layer names.

    Input: images [B, H, W, C], already normalised (see `keras_vit.preprocess_input` and
    `vit_config.preprocessing`). Output, with `include_top`: [B, num_classes] (float32
    logits, or probabilities with `classifier_activation="softmax"`). Without: [B, D]
    pooled features (through the representation layer when there is one), or [B, T, D]
    tokens when `pooling=None`.

    Layer names are stable (the checkpoint mappings rely on them): `patch_embedding`,
    `class_token`, `distillation_token`, `register_tokens`, `position_embedding`,
    `pre_norm`, `encoder_block_{i}`, `encoder_norm`, `pooling` or `attention_pooling`,
    `fc_norm`, `pre_logits`, `head`, `head_dist`. With `pooling="token"` the last block
    outputs the pooled tokens alone, [B, 1, D] (2 with a distillation token); build with
    `pooling=None` to read every token of every block.
    """

    def __init__(self, config, input_tensor=None, **kwargs):
        config = config if isinstance(config, ViTConfig) else ViTConfig.from_dict(config)
        size = (None, None) if config.dynamic_image_size else config.image_size
        if input_tensor is None:
            inputs = keras.Input(shape=(*size, config.num_channels), name="images")
        else:
            inputs = input_tensor
            if not config.dynamic_image_size and tuple(inputs.shape[1:3]) != config.image_size:
                raise ValueError(f"input_tensor shape {inputs.shape} does not match image_size {config.image_size}.")
        super().__init__(inputs=inputs, outputs=_vit_outputs(config, inputs), **kwargs)
        self.vit_config = config

    def no_weight_decay(self):
        """The trainable variables weight decay should skip (as timm's `no_weight_decay`):
        every bias, normalisation and LayerScale weight (rank <= 1), the prefix tokens
        (class, distillation, registers) and the position embedding."""
        skipped = [
            variable
            for layer in self.layers
            if isinstance(layer, (layers.ClassToken, layers.PositionEmbedding))
            for variable in layer.trainable_variables
        ]
        skipped += [v for v in self.trainable_variables if len(v.shape) <= 1]
        return list({id(v): v for v in skipped}.values())

    def get_config(self):
        return {"config": self.vit_config.to_dict(), "name": self.name, "trainable": self.trainable}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)


def build_vit(config, input_tensor=None, name="vit"):
    """The `ViTModel` of a `ViTConfig` (randomly initialised)."""
    return ViTModel(config, input_tensor=input_tensor, name=name)


class _FromWeights:
    """Default of the options a checkpoint decides when `weights` is given (its classifier
    size, its pre-logits layer, its pooling head; for named weights, also the image size
    they were trained at); without `weights` they fall back to 1000, None, "token" and 224."""

    def __repr__(self):
        return "FROM_WEIGHTS"


FROM_WEIGHTS = _FromWeights()


def _input_size(image_size, input_shape, input_tensor):
    """The input's (height, width), channels and whether it takes any size, read as
    keras.applications reads them: from `input_shape`, else from `input_tensor`'s shape,
    else `image_size` with 3 channels. A side given as None means any size at run time;
    `image_size` then stays the size of the position embedding's grid (None: the default).
    Raises `ValueError` when they disagree."""
    given = "input_shape"
    if input_shape is None and input_tensor is not None:
        if len(input_tensor.shape) != 4:
            raise ValueError(f"input_tensor must be [batch, height, width, channels], got shape {input_tensor.shape}.")
        given, input_shape = "input_tensor shape", tuple(input_tensor.shape[1:])
    if input_shape is None:
        return image_size, 3, False
    if len(input_shape) != 3 or input_shape[2] is None:
        raise ValueError(f"{given} must be (height, width, channels) with a known channel count, got {input_shape!r}.")
    sides = tuple(input_shape[:2])
    if None in sides:
        return image_size, input_shape[2], True
    if image_size is not None and ViTConfig(image_size=image_size, patch_size=1).image_size != sides:
        raise ValueError(f"image_size {image_size!r} and {given} {input_shape!r} disagree.")
    return sides, input_shape[2], False


def _build_with_weights(config, weights, explicit, input_tensor, name):
    """Reads the checkpoint, lets it (and, for named weights, their entry) decide the options
    not in `explicit`, builds, loads."""
    variant = match_variant(config.hidden_dim, config.num_layers, config.num_heads, config.mlp_dim, config.patch_size)
    checkpoint, entry = read_weights(weights, variant)
    config = config_for_checkpoint(config, checkpoint, explicit)
    if entry is not None:  # what the publisher says the inputs and outputs are
        carried = {"preprocessing": entry.preprocessing}
        if entry.labels is not None and config.include_top and config.num_classes == entry.num_classes:
            carried["labels"] = entry.labels
        if "image_size" not in explicit:  # as keras.applications: the size the weights were trained at
            carried["image_size"] = entry.image_size
        config = config.replace(**{key: value for key, value in carried.items() if key not in explicit})
    model = build_vit(config, input_tensor=input_tensor, name=name)
    return load_checkpoint(model, checkpoint)


def VisionTransformer(
    image_size=FROM_WEIGHTS,
    patch_size=16,
    hidden_dim=768,
    num_layers=12,
    num_heads=12,
    mlp_dim=3072,
    num_classes=FROM_WEIGHTS,
    include_top=True,
    pooling=FROM_WEIGHTS,
    representation_size=FROM_WEIGHTS,
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
    drop_path_rate=0.0,
    classifier_activation=None,
    name="vit",
    weights=None,
    input_shape=None,
    input_tensor=None,
    **options,
):
    """A Vision Transformer (Dosovitskiy et al., 2021) as a `ViTModel` (a functional `keras.Model`).

    Args:
        image_size: int or (height, width); every side a multiple of `patch_size`.
            Default 224, or the size named weights were trained at (518 for DINOv2);
            with another size, the checkpoint's position embedding is resized.
        patch_size: int or (height, width) of the square patches cut by the stem.
        hidden_dim, num_layers, num_heads, mlp_dim: width, depth, heads, MLP size.
        num_classes: classifier outputs (with `include_top`); default 1000, or the
            checkpoint's when `weights` has a classifier.
        include_top: with the classifier; without it the model returns features.
        pooling: `"token"` (class token), `"gap"` or `"avg"` (mean of the patch tokens, no
            class token unless `class_token=True`), `"max"` (their maximum per channel),
            `"map"` (attention pooling with a learned query), or None for the whole
            [B, T, D] token sequence (only with `include_top=False`). Default "token", or
            the checkpoint's head when `weights` has one.
        representation_size: width of the pre-logits Dense + tanh layer; None for none.
            Default none, or the checkpoint's pre-logits layer when `weights` has one
            (pass None to drop it).
        dropout_rate, attention_dropout_rate, drop_path_rate: regularisation; all off at
            inference. The drop-path rate grows linearly to `drop_path_rate` at the last block.
        classifier_activation: None for logits, or e.g. `"softmax"`.
        name: the model's name.
        weights: None, or a checkpoint to load: a path (original ViT `.npz`, timm
            `.safetensors`, Hugging Face folder, OpenAI CLIP `.safetensors`), a URL, or a
            name such as `"augreg_in21k"` (see `keras_vit.weights.available_weights()`).
            Options not given explicitly then follow the checkpoint (its classifier, tokens,
            LayerScale, pooling head, ...) and its source (MLP activation, LayerNorm
            epsilon); one given that contradicts it is an error. Named weights also set
            the preprocessing and labels they were published with.
        input_shape: (height, width, channels), an alternative to `image_size`; with None
            sides, any size at run time (`dynamic_image_size=True`; `image_size` is then
            the size of the position embedding's grid).
        input_tensor: an existing Keras tensor [B, H, W, C] to use as the model's input;
            its shape sets the image size when neither of the above is given.
        **options: further `ViTConfig` fields: the family options (`class_token`,
            `distillation_token`, `num_register_tokens`, `embed_prefix_tokens`, `fc_norm`,
            `layer_scale_init`, `mlp_activation`, `pre_norm`, `patch_bias`),
            `num_channels`, `layer_norm_epsilon`, `preprocessing`, `labels`.
    """
    explicit = set(options) & set(SOURCE_DECIDED_FIELDS + ("preprocessing", "labels"))
    explicit |= {"mlp_activation"} if "gelu_approximate" in options else set()
    passed = (("num_classes", num_classes), ("representation_size", representation_size), ("pooling", pooling))
    explicit |= {key for key, value in passed if value is not FROM_WEIGHTS}
    size, channels, any_size = _input_size(None if image_size is FROM_WEIGHTS else image_size, input_shape, input_tensor)
    if size is not None:
        explicit.add("image_size")
    if any_size and not options.setdefault("dynamic_image_size", True):
        raise ValueError(f"an input of any size ({input_shape or input_tensor.shape}) needs dynamic_image_size=True.")
    config = ViTConfig(
        image_size=224 if size is None else size,
        patch_size=patch_size,
        hidden_dim=hidden_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        mlp_dim=mlp_dim,
        num_classes=1000 if num_classes is FROM_WEIGHTS else num_classes,
        include_top=include_top,
        pooling="token" if pooling is FROM_WEIGHTS else pooling,
        representation_size=None if representation_size is FROM_WEIGHTS else representation_size,
        dropout_rate=dropout_rate,
        attention_dropout_rate=attention_dropout_rate,
        drop_path_rate=drop_path_rate,
        classifier_activation=classifier_activation,
        **{"num_channels": channels, **options},
    )
    if weights is not None:
        return _build_with_weights(config, weights, explicit, input_tensor, name)
    return build_vit(config, input_tensor=input_tensor, name=name)


# ----------------------------------------------------------------------------- variants

_VARIANT_DOCSTRING = """ViT-{size}/{patch} ({hidden_dim} wide, {num_layers} blocks, {num_heads} heads, MLP {mlp_dim}, patch {patch}).

Same signature as the `keras.applications` builders; returns a `ViTModel`.

Args:
    include_top: with the classifier; without it the model returns features.
    weights: None, a checkpoint path or URL, or a weights name of this variant
        (`keras_vit.weights.available_weights("{variant}")`).
    input_shape: (height, width, channels), or use `image_size`; (None, None, 3) for
        any size at run time.
    image_size: int or (height, width), multiples of {patch}; default 224, or the size
        named `weights` were trained at.
    pooling: "token", "gap" (or "avg"), "max", "map", or None (token sequence, with
        include_top=False); default "token", or the head of `weights`.
    num_classes: classifier outputs; default 1000, or the classifier of `weights`.
    classifier_activation: None for logits, or e.g. "softmax".
    name: the model's name.
    input_tensor: an existing Keras tensor to use as the input (its shape sets the size).
    **overrides: any other `VisionTransformer` keyword (e.g. `drop_path_rate`).
"""


def _variant(variant, include_top, weights, input_shape, image_size, pooling, num_classes, classifier_activation, name, input_tensor, overrides):
    size, patch = VARIANTS[variant]
    options = {**MODEL_SIZES[size], "patch_size": patch, **overrides}
    return VisionTransformer(
        image_size=FROM_WEIGHTS if image_size is None else image_size,
        input_shape=input_shape,
        num_classes=num_classes,
        include_top=include_top,
        pooling=pooling,
        classifier_activation=classifier_activation,
        name=name,
        weights=weights,
        input_tensor=input_tensor,
        **options,
    )


def ViTTi16(include_top=True, weights=None, input_shape=None, image_size=None, pooling=FROM_WEIGHTS,
            num_classes=FROM_WEIGHTS, classifier_activation=None, name="ViTTi16", input_tensor=None, **overrides):
    return _variant("ViTTi16", include_top, weights, input_shape, image_size, pooling, num_classes,
                    classifier_activation, name, input_tensor, overrides)


def ViTS14(include_top=True, weights=None, input_shape=None, image_size=None, pooling=FROM_WEIGHTS,
           num_classes=FROM_WEIGHTS, classifier_activation=None, name="ViTS14", input_tensor=None, **overrides):
    return _variant("ViTS14", include_top, weights, input_shape, image_size, pooling, num_classes,
                    classifier_activation, name, input_tensor, overrides)


def ViTS16(include_top=True, weights=None, input_shape=None, image_size=None, pooling=FROM_WEIGHTS,
           num_classes=FROM_WEIGHTS, classifier_activation=None, name="ViTS16", input_tensor=None, **overrides):
    return _variant("ViTS16", include_top, weights, input_shape, image_size, pooling, num_classes,
                    classifier_activation, name, input_tensor, overrides)


def ViTS32(include_top=True, weights=None, input_shape=None, image_size=None, pooling=FROM_WEIGHTS,
           num_classes=FROM_WEIGHTS, classifier_activation=None, name="ViTS32", input_tensor=None, **overrides):
    return _variant("ViTS32", include_top, weights, input_shape, image_size, pooling, num_classes,
                    classifier_activation, name, input_tensor, overrides)


def ViTB8(include_top=True, weights=None, input_shape=None, image_size=None, pooling=FROM_WEIGHTS,
          num_classes=FROM_WEIGHTS, classifier_activation=None, name="ViTB8", input_tensor=None, **overrides):
    return _variant("ViTB8", include_top, weights, input_shape, image_size, pooling, num_classes,
                    classifier_activation, name, input_tensor, overrides)


def ViTB14(include_top=True, weights=None, input_shape=None, image_size=None, pooling=FROM_WEIGHTS,
           num_classes=FROM_WEIGHTS, classifier_activation=None, name="ViTB14", input_tensor=None, **overrides):
    return _variant("ViTB14", include_top, weights, input_shape, image_size, pooling, num_classes,
                    classifier_activation, name, input_tensor, overrides)


def ViTB16(include_top=True, weights=None, input_shape=None, image_size=None, pooling=FROM_WEIGHTS,
           num_classes=FROM_WEIGHTS, classifier_activation=None, name="ViTB16", input_tensor=None, **overrides):
    return _variant("ViTB16", include_top, weights, input_shape, image_size, pooling, num_classes,
                    classifier_activation, name, input_tensor, overrides)


def ViTB32(include_top=True, weights=None, input_shape=None, image_size=None, pooling=FROM_WEIGHTS,
           num_classes=FROM_WEIGHTS, classifier_activation=None, name="ViTB32", input_tensor=None, **overrides):
    return _variant("ViTB32", include_top, weights, input_shape, image_size, pooling, num_classes,
                    classifier_activation, name, input_tensor, overrides)


def ViTL14(include_top=True, weights=None, input_shape=None, image_size=None, pooling=FROM_WEIGHTS,
           num_classes=FROM_WEIGHTS, classifier_activation=None, name="ViTL14", input_tensor=None, **overrides):
    return _variant("ViTL14", include_top, weights, input_shape, image_size, pooling, num_classes,
                    classifier_activation, name, input_tensor, overrides)


def ViTL16(include_top=True, weights=None, input_shape=None, image_size=None, pooling=FROM_WEIGHTS,
           num_classes=FROM_WEIGHTS, classifier_activation=None, name="ViTL16", input_tensor=None, **overrides):
    return _variant("ViTL16", include_top, weights, input_shape, image_size, pooling, num_classes,
                    classifier_activation, name, input_tensor, overrides)


def ViTL32(include_top=True, weights=None, input_shape=None, image_size=None, pooling=FROM_WEIGHTS,
           num_classes=FROM_WEIGHTS, classifier_activation=None, name="ViTL32", input_tensor=None, **overrides):
    return _variant("ViTL32", include_top, weights, input_shape, image_size, pooling, num_classes,
                    classifier_activation, name, input_tensor, overrides)


def ViTH14(include_top=True, weights=None, input_shape=None, image_size=None, pooling=FROM_WEIGHTS,
           num_classes=FROM_WEIGHTS, classifier_activation=None, name="ViTH14", input_tensor=None, **overrides):
    return _variant("ViTH14", include_top, weights, input_shape, image_size, pooling, num_classes,
                    classifier_activation, name, input_tensor, overrides)


VARIANT_BUILDERS = {
    builder.__name__: builder
    for builder in (ViTTi16, ViTS14, ViTS16, ViTS32, ViTB8, ViTB14, ViTB16, ViTB32, ViTL14, ViTL16, ViTL32, ViTH14)
}


def _document(builder):
    size, patch = VARIANTS[builder.__name__]
    builder.__doc__ = _VARIANT_DOCSTRING.format(variant=builder.__name__, size=size, patch=patch, **MODEL_SIZES[size])


for _builder in VARIANT_BUILDERS.values():
    _document(_builder)


def create_model(variant, **kwargs):
    """Builds a named variant by name: `create_model("ViTB16", num_classes=10)`."""
    if variant not in VARIANT_BUILDERS:
        raise ValueError(f"Unknown model {variant!r}: expected one of {sorted(VARIANT_BUILDERS)}.")
    return VARIANT_BUILDERS[variant](**kwargs)
