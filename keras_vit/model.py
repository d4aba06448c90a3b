"""The functional ViT builder and the named variants (ViTTi16 ... ViTH14)."""

import keras
import numpy as np

from keras_vit import layers
from keras_vit.config import MODEL_SIZES, VARIANTS, ViTConfig


def build_vit(config, input_tensor=None, name="vit"):
    """Builds a functional `keras.Model` from a `ViTConfig`.

    Input: images [B, H, W, C], already normalised (see `keras_vit.preprocess_input`).
    Output, with `include_top`: [B, num_classes] (float32 logits, or probabilities with
    `classifier_activation="softmax"`). Without: [B, D] pooled features (through the
    representation layer when there is one), or [B, T, D] tokens when `pooling=None`.

    Layer names are stable (the checkpoint mappings rely on them): `patch_embedding`,
    `class_token`, `position_embedding`, `encoder_block_{i}`, `encoder_norm`, `pooling`,
    `pre_logits`, `head`. With `pooling="token"` the last block outputs the class token
    alone, [B, 1, D]; build with `pooling=None` to read every token of every block.
    """
    c = config
    if input_tensor is None:
        inputs = keras.Input(shape=(*c.image_size, c.num_channels), name="images")
    else:
        inputs = input_tensor
        if tuple(inputs.shape[1:3]) != c.image_size:
            raise ValueError(f"input_tensor shape {inputs.shape} does not match image_size {c.image_size}.")

    x = layers.PatchEmbedding(c.patch_size, c.hidden_dim, name="patch_embedding")(inputs)
    if c.class_token:
        x = layers.ClassToken(name="class_token")(x)
    x = layers.PositionEmbedding(c.grid_size, c.num_prefix_tokens, name="position_embedding")(x)
    x = keras.layers.Dropout(c.dropout_rate, name="embedding_dropout")(x)

    # Stochastic depth grows linearly with depth, 0 for the first block (as in timm/DeiT).
    drop_path_rates = np.linspace(0.0, c.drop_path_rate, c.num_layers)
    # With class-token pooling nothing reads the other tokens after the last attention, so
    # the last block computes only the class token's output (12 blocks: about 7% less work).
    class_token_only = c.pooling == "token"
    for i in range(c.num_layers):
        x = layers.TransformerBlock(
            num_heads=c.num_heads,
            mlp_dim=c.mlp_dim,
            dropout_rate=c.dropout_rate,
            attention_dropout_rate=c.attention_dropout_rate,
            drop_path_rate=float(drop_path_rates[i]),
            gelu_approximate=c.gelu_approximate,
            layer_norm_epsilon=c.layer_norm_epsilon,
            output_tokens=1 if class_token_only and i == c.num_layers - 1 else None,
            name=f"encoder_block_{i}",
        )(x)
    x = layers.LayerNorm(epsilon=c.layer_norm_epsilon, name="encoder_norm")(x)

    if c.pooling is not None:
        x = layers.TokenPooling(c.pooling, c.num_prefix_tokens, name="pooling")(x)
        if c.representation_size is not None:
            x = keras.layers.Dense(c.representation_size, activation="tanh", name="pre_logits")(x)
    if c.include_top:
        # Zero-initialised classifier, as in the paper; float32 so that logits stay float32
        # under mixed precision.
        x = keras.layers.Dense(c.num_classes, kernel_initializer="zeros", dtype="float32", name="head")(x)
        if c.classifier_activation is not None:
            x = keras.layers.Activation(c.classifier_activation, dtype="float32", name="predictions")(x)
    return keras.Model(inputs, x, name=name)


class _FromWeights:
    """Default of the options a checkpoint decides when `weights` is given (its classifier
    size, its pre-logits layer); without `weights` they fall back to 1000 and None."""

    def __repr__(self):
        return "FROM_WEIGHTS"


FROM_WEIGHTS = _FromWeights()


def _resolve_image_size(image_size, input_shape, default):
    if input_shape is not None:
        if len(input_shape) != 3:
            raise ValueError(f"input_shape must be (height, width, channels), got {input_shape!r}.")
        shape_size = tuple(input_shape[:2])
        if image_size is not None and ViTConfig(image_size=image_size, patch_size=1).image_size != shape_size:
            raise ValueError(f"image_size {image_size!r} and input_shape {input_shape!r} disagree.")
        return shape_size, input_shape[2]
    return (default if image_size is None else image_size), 3


def VisionTransformer(
    image_size=224,
    patch_size=16,
    hidden_dim=768,
    num_layers=12,
    num_heads=12,
    mlp_dim=3072,
    num_classes=FROM_WEIGHTS,
    include_top=True,
    pooling="token",
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
    """A Vision Transformer (Dosovitskiy et al., 2021) as a functional `keras.Model`.

    Args:
        image_size: int or (height, width); every side a multiple of `patch_size`.
        patch_size: int or (height, width) of the square patches cut by the stem.
        hidden_dim, num_layers, num_heads, mlp_dim: width, depth, heads, MLP size.
        num_classes: classifier outputs (with `include_top`); default 1000, or the
            checkpoint's when `weights` has a classifier.
        include_top: with the classifier; without it the model returns features.
        pooling: `"token"` (class token), `"gap"` (mean of patch tokens, no class token
            unless `class_token=True`), or None for the whole [B, T, D] token sequence
            (only with `include_top=False`).
        representation_size: width of the pre-logits Dense + tanh layer; None for none.
            Default none, or the checkpoint's pre-logits layer when `weights` has one
            (pass None to drop it).
        dropout_rate, attention_dropout_rate, drop_path_rate: regularisation; all off at
            inference. The drop-path rate grows linearly to `drop_path_rate` at the last block.
        classifier_activation: None for logits, or e.g. `"softmax"`.
        name: the model's name.
        weights: None, or a checkpoint to load: a path (original ViT `.npz`, timm
            `.safetensors`, Hugging Face folder), a URL, or a name such as
            `"augreg_in21k"` (see `keras_vit.weights.available_weights()`). Options not
            given explicitly (`num_classes`, `representation_size`, `gelu_approximate`,
            `layer_norm_epsilon`) then follow the checkpoint and its source.
        input_shape: (height, width, channels), an alternative to `image_size`.
        input_tensor: an existing Keras tensor to use as the model's input.
        **options: further `ViTConfig` fields: `class_token`, `num_channels`,
            `gelu_approximate`, `layer_norm_epsilon`.
    """
    explicit = {key for key in ("gelu_approximate", "layer_norm_epsilon") if key in options}
    explicit |= {key for key, value in (("num_classes", num_classes), ("representation_size", representation_size)) if value is not FROM_WEIGHTS}
    num_classes = 1000 if num_classes is FROM_WEIGHTS else num_classes
    representation_size = None if representation_size is FROM_WEIGHTS else representation_size
    size, channels = _resolve_image_size(image_size, input_shape, 224)
    config = ViTConfig(
        image_size=size,
        patch_size=patch_size,
        hidden_dim=hidden_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        mlp_dim=mlp_dim,
        num_classes=num_classes,
        include_top=include_top,
        pooling=pooling,
        representation_size=representation_size,
        dropout_rate=dropout_rate,
        attention_dropout_rate=attention_dropout_rate,
        drop_path_rate=drop_path_rate,
        classifier_activation=classifier_activation,
        **{"num_channels": channels, **options},
    )
    if weights is not None:
        from keras_vit.weights import SOURCE_DECIDED_FIELDS, build_with_weights

        from_weights = tuple(key for key in SOURCE_DECIDED_FIELDS if key not in explicit)
        return build_with_weights(config, weights, input_tensor=input_tensor, name=name, from_weights=from_weights)
    return build_vit(config, input_tensor=input_tensor, name=name)


def _make_variant(variant):
    size, patch = VARIANTS[variant]

    def builder(
        include_top=True,
        weights=None,
        input_shape=None,
        image_size=None,
        pooling="token",
        num_classes=FROM_WEIGHTS,
        classifier_activation=None,
        name=variant,
        input_tensor=None,
        **overrides,
    ):
        overrides = {**MODEL_SIZES[size], "patch_size": patch, **overrides}
        resolved_size, channels = _resolve_image_size(image_size, input_shape, 224)
        return VisionTransformer(
            image_size=resolved_size,
            num_classes=num_classes,
            include_top=include_top,
            pooling=pooling,
            classifier_activation=classifier_activation,
            name=name,
            weights=weights,
            input_tensor=input_tensor,
            **{"num_channels": channels, **overrides},
        )

    builder.__name__ = builder.__qualname__ = variant
    builder.__doc__ = (
        f"ViT-{size}/{patch}: {VisionTransformer.__doc__.splitlines()[0]}\n\n"
        "Same signature as `keras.applications` builders: `include_top`, `weights`, "
        "`input_shape` or `image_size` (default 224), `pooling`, `num_classes`, "
        "`classifier_activation`, plus any `VisionTransformer` keyword as an override. "
        "`num_classes` defaults to 1000, or to the classifier of `weights`."
    )
    return builder


VARIANT_BUILDERS = {variant: _make_variant(variant) for variant in VARIANTS}


def create_model(variant, **kwargs):
    """Builds a named variant by name: `create_model("ViTB16", num_classes=10)`."""
    if variant not in VARIANT_BUILDERS:
        raise ValueError(f"Unknown model {variant!r}: expected one of {sorted(VARIANT_BUILDERS)}.")
    return VARIANT_BUILDERS[variant](**kwargs)
