"""Resizing a position-embedding grid, the way each reference implementation does it.

Both methods are separable: the grid is multiplied by one interpolation matrix per axis,
`out = R_h @ grid @ R_w.T`, so a non-square grid is no special case.

- `bilinear`: the original ViT code (`scipy.ndimage.zoom(grid, zoom, order=1)`): linear
  interpolation with the corner samples aligned.
- `bicubic`: timm's `resample_abs_pos_embed` (`F.interpolate(mode="bicubic",
  antialias=True)`): PIL-style cubic filter (a = -0.5) on half-pixel centres, widened when
  shrinking, weights renormalised at the borders.
"""

import numpy as np

RESIZE_METHODS = ("bilinear", "bicubic")


def _linear_align_corners(in_size, out_size):
    matrix = np.zeros((out_size, in_size), np.float64)
    if in_size == 1 or out_size == 1:
        matrix[:, 0] = 1.0
        return matrix
    src = np.arange(out_size) * (in_size - 1) / (out_size - 1)
    lo = np.clip(np.floor(src).astype(int), 0, in_size - 2)
    frac = src - lo
    matrix[np.arange(out_size), lo] = 1.0 - frac
    matrix[np.arange(out_size), lo + 1] += frac
    return matrix


def _cubic_filter(x, a=-0.5):
    x = np.abs(x)
    return np.where(
        x < 1.0,
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0,
        np.where(x < 2.0, (((x - 5.0) * x + 8.0) * x - 4.0) * a, 0.0),
    )


def _cubic_antialias(in_size, out_size):
    scale = in_size / out_size
    support = 2.0 * max(scale, 1.0)
    inv_scale = 1.0 / max(scale, 1.0)
    matrix = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        taps = np.arange(lo, hi)
        weights = _cubic_filter((taps - center + 0.5) * inv_scale)
        matrix[i, lo:hi] = weights / weights.sum()
    return matrix


def interpolation_matrix(in_size, out_size, method):
    """[out_size, in_size] matrix that resamples one axis with `method`."""
    if method == "bilinear":
        return _linear_align_corners(in_size, out_size)
    if method == "bicubic":
        return _cubic_antialias(in_size, out_size)
    raise ValueError(f"Unknown resize method {method!r}: expected one of {RESIZE_METHODS}.")


def resize_position_embedding(embedding, source_grid, target_grid, num_prefix_tokens=1, method="bilinear"):
    """Resize a learned position embedding to another patch grid.

    Args:
        embedding: array [1, P + Hs * Ws, D] (or without the leading 1), P prefix tokens
            (class token) first, then the grid row-major.
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
    grid = grid.reshape(hs, ws, -1)
    rows, cols = interpolation_matrix(hs, ht, method), interpolation_matrix(ws, wt, method)
    resized = np.einsum("ih,hwd,jw->ijd", rows, grid, cols).reshape(1, ht * wt, -1)
    return np.concatenate([prefix, resized], axis=1).astype(np.float32)
