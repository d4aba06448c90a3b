"""Resizing a position-embedding grid, the way each reference implementation does it.

Both methods are separable: the grid is multiplied by one interpolation matrix per axis,
`out = R_h @ grid @ R_w.T`, so a non-square grid is no special case. The matrices are
written with `keras.ops` and dense (every output row over every input column), so that the
same formula serves when a checkpoint is loaded (`resize_position_embedding`, NumPy) and,
with `dynamic_image_size`, inside the model's graph for a grid known only at run time
(`resize_position_embedding_in_graph`).

- `bilinear`: the original ViT code (`scipy.ndimage.zoom(grid, zoom, order=1)`): linear
  interpolation with the corner samples aligned.
- `bicubic`: timm's `resample_abs_pos_embed` (`F.interpolate(mode="bicubic",
  antialias=True)`): PIL-style cubic filter (a = -0.5) on half-pixel centres, widened when
  shrinking, weights renormalised at the borders.
"""

import numpy as np
from keras import ops

RESIZE_METHODS = ("bilinear", "bicubic")


def _cubic_filter(x, a=-0.5):
    x = ops.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return ops.where(x < 1.0, near, ops.where(x < 2.0, far, ops.zeros_like(x)))


def interpolation_matrix(in_size, out_size, method):
    """[out_size, in_size] float32 matrix that resamples one axis with `method`.

    `in_size` is an int; `out_size` an int or a scalar tensor known only at run time.
    """
    if method not in RESIZE_METHODS:
        raise ValueError(f"Unknown resize method {method!r}: expected one of {RESIZE_METHODS}.")
    out_f = ops.cast(out_size, "float32")
    rows = ops.cast(ops.arange(out_size), "float32")[:, None]
    cols = ops.cast(ops.arange(in_size), "float32")[None, :]
    if method == "bilinear":  # aligned corners: output i samples input i * (in - 1) / (out - 1)
        source = rows * float(in_size - 1) / ops.maximum(out_f - 1.0, 1.0)
        return ops.maximum(1.0 - ops.abs(cols - source), 0.0)
    scale = float(in_size) / out_f
    support = ops.maximum(scale, 1.0)  # the filter widens by the shrink factor (antialias)
    weights = _cubic_filter((cols + 0.5 - scale * (rows + 0.5)) / support)
    return weights / ops.sum(weights, axis=1, keepdims=True)


def resize_position_embedding(embedding, source_grid, target_grid, num_prefix_tokens=1, method="bilinear"):
    """Resize a learned position embedding to another patch grid (NumPy, when loading).

    Args:
        embedding: array [1, P + Hs * Ws, D] (or without the leading 1), P prefix tokens
            (class, distillation, registers) first, then the grid row-major.
        source_grid: (Hs, Ws) of `embedding`.
        target_grid: (Ht, Wt) wanted.
        num_prefix_tokens: P; those rows are kept as they are.
        method: "bilinear" (original ViT) or "bicubic" (timm).

    Returns:
        float32 array [1, P + Ht * Wt, D].
    """
    embedding = np.asarray(embedding, np.float64)
    if embedding.ndim == 2:
        embedding = embedding[None]
    (hs, ws), (ht, wt) = tuple(source_grid), tuple(target_grid)
    prefix, grid = embedding[:, :num_prefix_tokens], embedding[:, num_prefix_tokens:]
    if grid.shape[1] != hs * ws:
        raise ValueError(
            f"Position embedding has {grid.shape[1]} grid tokens, which is not the "
            f"{hs}x{ws} grid it was said to have."
        )
    rows, cols = (np.asarray(ops.convert_to_numpy(interpolation_matrix(s, t, method)), np.float64) for s, t in ((hs, ht), (ws, wt)))
    resized = np.einsum("ih,hwd,jw->ijd", rows, grid.reshape(hs, ws, -1), cols).reshape(1, ht * wt, -1)
    return np.concatenate([prefix, resized], axis=1).astype(np.float32)


def resize_position_embedding_in_graph(embedding, source_grid, target_grid, num_prefix_tokens, method):
    """`resize_position_embedding` inside a model: `embedding` a tensor [1, P + Hs * Ws, D],
    `target_grid` (Ht, Wt) run-time scalars; returns [1, P + Ht * Wt, D] in its dtype."""
    (hs, ws), (ht, wt) = tuple(source_grid), target_grid
    dim = embedding.shape[-1]
    prefix, grid = embedding[:, :num_prefix_tokens], embedding[:, num_prefix_tokens:]
    grid = ops.cast(ops.reshape(grid, (hs, ws, dim)), "float32")
    rows, cols = interpolation_matrix(hs, ht, method), interpolation_matrix(ws, wt, method)
    resized = ops.einsum("ih,hwd,jw->ijd", rows, grid, cols)
    resized = ops.cast(ops.reshape(resized, (1, -1, dim)), embedding.dtype)
    return ops.concatenate([prefix, resized], axis=1) if num_prefix_tokens else resized
