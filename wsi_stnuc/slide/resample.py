"""Resample an image window to an exact output grid with fractional offset and scale.

Separable: each axis gets a sparse (n_out x n_in) weight matrix, so a tile costs two sparse
matrix products instead of a Python loop. Area averaging when shrinking (each output pixel is
the exact mean of the input area it covers, fractional edges weighted) and bilinear when
enlarging, both in the pixel-area convention (pixel i covers ``[i, i+1)``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

_EPS = 1e-9


def axis_weights(n_out: int, n_in: int, offset: float, scale: float) -> sp.csr_matrix:
    """Weights mapping ``n_in`` input samples to ``n_out`` outputs along one axis.

    Output pixel ``u`` covers input ``[offset + u*scale, offset + (u+1)*scale)``.
    """
    u = np.arange(n_out, dtype=np.float64)
    if scale > 1 + _EPS:
        # area: overlap of [a, a + scale) with every input pixel it touches
        start = offset + u * scale
        k = int(np.ceil(scale)) + 1
        idx = np.floor(start)[:, None] + np.arange(k)[None, :]
        lo = np.maximum(idx, start[:, None])
        hi = np.minimum(idx + 1, start[:, None] + scale)
        weights = np.clip(hi - lo, 0.0, None) / scale
    else:
        # bilinear between the two input pixel centres around the output centre
        pos = offset + (u + 0.5) * scale - 0.5
        i0 = np.floor(pos)
        t = pos - i0
        idx = np.stack([i0, i0 + 1], axis=1)
        weights = np.stack([1 - t, t], axis=1)
    rows = np.repeat(np.arange(n_out), idx.shape[1])
    cols = np.clip(idx, 0, n_in - 1).astype(np.int64).ravel()
    return sp.csr_matrix((weights.ravel(), (rows, cols)), shape=(n_out, n_in))


def resample_region(
    image: np.ndarray,
    offset: tuple[float, float],
    scale: tuple[float, float],
    out_shape: tuple[int, int],
) -> np.ndarray:
    """Resample ``image`` (H x W x C uint8) to ``out_shape`` (height, width).

    ``offset`` = (x, y) of the output's top-left corner in input pixels, ``scale`` = (x, y)
    input pixels per output pixel. Returns uint8, rounded.
    """
    in_h, in_w, channels = image.shape
    out_h, out_w = out_shape
    wy = axis_weights(out_h, in_h, offset[1], scale[1]).astype(np.float32)
    wx = axis_weights(out_w, in_w, offset[0], scale[0]).astype(np.float32)
    flat = image.reshape(in_h, in_w * channels).astype(np.float32)
    rows = np.asarray(wy @ flat).reshape(out_h, in_w, channels)
    cols = rows.transpose(1, 0, 2).reshape(in_w, out_h * channels)
    out = np.asarray(wx @ cols).reshape(out_w, out_h, channels).transpose(1, 0, 2)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
