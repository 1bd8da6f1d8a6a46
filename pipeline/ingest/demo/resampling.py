"""Separable image resampling by (out, in) matrices (bilinear, box, nearest), shared by the scenes (they
upsample their noise grids) and the `downup` distortion (it pixelates)."""
from __future__ import annotations

import math

import numpy as np


def resize_matrix(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """(n_out, n_in) resampling matrix: 'bilinear', 'box' (area average) or 'nearest'."""
    m = np.zeros((n_out, n_in), dtype=np.float32)
    scale = n_in / n_out
    if mode == "nearest":
        idx = np.minimum((np.arange(n_out) + 0.5) * scale, n_in - 1).astype(int)
        m[np.arange(n_out), idx] = 1.0
    elif mode == "box":
        for o in range(n_out):
            a, b = o * scale, (o + 1) * scale
            for i in range(int(math.floor(a)), min(n_in, int(math.ceil(b)))):
                m[o, i] = min(b, i + 1) - max(a, i)
        m /= m.sum(axis=1, keepdims=True)
    else:  # bilinear, align corners = False
        x = np.clip((np.arange(n_out) + 0.5) * scale - 0.5, 0, n_in - 1)
        i0 = np.floor(x).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        f = (x - i0).astype(np.float32)
        m[np.arange(n_out), i0] += 1.0 - f
        m[np.arange(n_out), i1] += f
    return m


def resize(img: np.ndarray, h: int, w: int, mode: str = "bilinear") -> np.ndarray:
    """`img` (H, W, ...) resampled to (h, w, ...) as float32, rows then columns."""
    a_h = resize_matrix(img.shape[0], h, mode)
    a_w = resize_matrix(img.shape[1], w, mode)
    out = np.tensordot(a_h, img, axes=(1, 0))  # (h, W, C...)
    out = np.tensordot(out, a_w, axes=(1, 1))  # (h, C..., w)
    return np.ascontiguousarray(np.moveaxis(out, -1, 1)).astype(np.float32)

