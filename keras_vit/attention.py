"""Where a ViT looks: the attention probabilities of every block, and attention rollout.

    maps = keras_vit.attention_maps(model, images)          # per block: [B, heads, T, T]
    heat = keras_vit.attention_rollout(model, images)       # [B, grid_h, grid_w]

The maps come from a second pass over the model's own layers (the same weights), block by
block, so the model's forward pass and training step are untouched: no extra outputs, and
the last block of a token-pooling model, which computes the class token alone in the
model, gives its full T x T attention here. Works on any Keras backend.
"""

import numpy as np
from keras import ops

from keras_vit import layers
from keras_vit.config import config_of

HEAD_FUSIONS = ("mean", "max", "min")


def attention_maps(model, images, batch_size=32):
    """The attention probabilities of every block of a keras_vit model.

    Args:
        model: a keras_vit model (any pooling and family).
        images: float [B, H, W, C], normalised as the model expects.
        batch_size: images per pass.

    Returns:
        A list with one float32 array [B, heads, T, T] per block, T the number of tokens
        (prefix tokens first: class, distillation, registers; then the patches, row-major):
        `maps[i][b, h, q, k]` is how much query token q attends to key token k.
    """
    config_of(model)
    images = np.asarray(images, np.float32)
    batches = [_maps_of_batch(model, images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return [np.concatenate([batch[block] for batch in batches]) for block in range(len(batches[0]))] if batches else []


def _maps_of_batch(model, images):
    images = ops.convert_to_tensor(images)
    x, maps = images, []
    for layer in model.layers[1:]:  # after the input layer, in graph order
        if isinstance(layer, layers.TransformerBlock):
            x, probabilities = layer.with_attention(x)
            maps.append(ops.convert_to_numpy(ops.cast(probabilities, "float32")))
        elif maps:
            continue  # the head
        elif isinstance(layer, layers.PositionEmbedding) and layer.resize_method:
            x = layer([x, images])  # a dynamic image size: resized to these images' grid
        else:  # the embedding stages: patches, tokens, positions, pre-norm
            x = layer(x, training=False)
    return maps


def _check_rollout_options(head_fusion, discard_ratio):
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"Unknown head_fusion {head_fusion!r}: expected one of {HEAD_FUSIONS}.")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio!r}.")


def rollout(maps, num_prefix_tokens, class_token, grid_size, head_fusion="mean", discard_ratio=0.0):
    """Attention rollout (Abnar & Zuidema, 2020) of attention maps (see `attention_maps`).

    Each block's attention, fused over the heads (`head_fusion`: "mean", "max" or "min"),
    with the lowest `discard_ratio` of its entries set to 0 (never the class token's
    attention to itself), plus the identity for the residual, rows renormalised to 1; the
    blocks' matrices multiplied in order. The relevance of the patches is the class token's
    row of the product (or, without a class token, the mean of the patch tokens' rows).

    Returns: float32 [B, grid_h, grid_w].
    """
    _check_rollout_options(head_fusion, discard_ratio)
    batch, tokens = maps[0].shape[0], maps[0].shape[-1]
    result = np.broadcast_to(np.eye(tokens), (batch, tokens, tokens)).astype(np.float64)
    for attention in maps:
        fused = getattr(np, head_fusion)(np.asarray(attention, np.float64), axis=1)  # [B, T, T]
        if discard_ratio:
            flat = fused.reshape(batch, -1).copy()
            lowest = np.argsort(flat, axis=-1, kind="stable")[:, : int(flat.shape[-1] * discard_ratio)]
            for b in range(batch):
                flat[b, lowest[b][lowest[b] != 0]] = 0.0  # index 0: the class token's own attention
            fused = flat.reshape(batch, tokens, tokens)
        step = fused + np.eye(tokens)
        step = step / step.sum(-1, keepdims=True)
        result = step @ result
    patches = result[:, num_prefix_tokens:, num_prefix_tokens:]
    relevance = result[:, 0, num_prefix_tokens:] if class_token else patches.mean(axis=1)
    return relevance.reshape(batch, *grid_size).astype(np.float32)


def attention_rollout(model, images, head_fusion="mean", discard_ratio=0.0, batch_size=32):
    """Attention rollout of `images` through a keras_vit model: float32 [B, grid_h, grid_w],
    the relevance of each patch to the class token (or, without one, to the patch tokens on
    average). See `rollout` for the fusion and discarding options."""
    config = config_of(model)
    _check_rollout_options(head_fusion, discard_ratio)
    maps = attention_maps(model, images, batch_size)
    height, width = np.asarray(images).shape[1:3]
    grid = tuple(
        -(-side // patch) if config.dynamic_image_pad else side // patch for side, patch in zip((height, width), config.patch_size)
    )
    return rollout(maps, config.num_prefix_tokens, config.class_token, grid, head_fusion, discard_ratio)
