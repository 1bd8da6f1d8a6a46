"""Frames as the encoders see them: each decoded frame becomes a key frame view (`keyframe_mode`) or a
chunk frame, resized in torch (antialiased bilinear) or, for an exact halving, in integer arithmetic
with the same bytes.

* Resize (`stretch`): every frame is resized directly (no crop, aspect ratio not kept) to `key_size` x
  `key_size` for the key frames and `chunk_size` x `chunk_size` for the chunks. The decoder's scaler
  makes max(key_size, chunk_size) (decode.py); the other size(s) are made from it here with an
  antialiased bilinear resize (`resize_to`).
* Key-frame modes (`keyframe_mode`): `stretch` (above; the default, as the paper samples), `crop`
  (short side resized to the size, then the centre square, for key frames and chunks alike) and
  `fragments` (FAST-VQA-style: a `fragment_grid` x `fragment_grid` mosaic of key_size / grid pixel
  patches taken at the video's own resolution from the centre of each grid cell, so compression,
  noise and blur are seen unscaled; frames smaller than key_size are upscaled just enough first).
  `native` (the whole frame at its own resolution and aspect ratio, resized only where its short side
  exceeds `native_max_short_side`, never upscaled: key frames differ in size from video to video, so
  only a CNN vision arch, which pools over any size, takes them; chunks as in `stretch`).
  `crop`, `fragments` and `native` decode at the native size and resize in torch.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.settings import NATIVE_MAX_SHORT_SIDE

KEYFRAME_MODES = ("stretch", "crop", "fragments", "native")


def resize_to(frames: np.ndarray, h: int, w: int) -> np.ndarray:
    """uint8 [n, H, W, 3] -> uint8 [n, h, w, 3] (antialiased bilinear). Halving both sides (e.g. 224-px
    decoded frames -> 112-px chunks) takes `_halve`, the same bytes ~3x faster."""
    if frames.shape[1] == 2 * h and frames.shape[2] == 2 * w and h >= 3 and w >= 3:
        return _halve(frames)
    return _resize_float(frames, h, w)


def _halve(frames: np.ndarray) -> np.ndarray:
    """`_resize_float(frames, H / 2, W / 2)`, byte for byte, in integer arithmetic. At scale 2 torch's
    antialiased bilinear weights away from the border are exactly 1/8, 3/8, 3/8, 1/8 per axis (input
    pixels 2i-1 .. 2i+2 for output i), so the float path computes S / 64 exactly, S = the integer sum
    of the 4 x 4 pixels weighted by (1, 3, 3, 1) x (1, 3, 3, 1) (at most 16320: int16), and rounds it
    half to even; that is done here on int16 (row pass first, on whole rows). The border rows and
    columns (renormalised, inexact weights) come from the float path on the 4-pixel strips that
    feed them: torch computes the weights of an output pixel from its position relative to the input
    edge and the scale (2 in both), so the strip gives the same bytes as the whole frame."""
    frames = np.ascontiguousarray(frames)
    n, hh, ww, c = frames.shape
    h, w = hh // 2, ww // 2
    x = frames
    v = np.add(x[:, 1 : hh - 4 : 2], x[:, 4 : hh - 1 : 2], dtype=np.int16)  # rows 2i-1 + 2i+2, i = 1 .. h-2
    mid = np.add(x[:, 2 : hh - 3 : 2], x[:, 3 : hh - 2 : 2], dtype=np.int16)  # rows 2i + 2i+1
    mid *= 3
    v += mid
    # planar [n, h-2, c, column parity, w] so that the column pass runs on contiguous rows
    v = np.ascontiguousarray(v.reshape(n, h - 2, w, 2, c).transpose(0, 1, 4, 3, 2))
    even, odd = v[:, :, :, 0], v[:, :, :, 1]  # columns 2j, 2j+1
    s = odd[..., : w - 2] + even[..., 2:]  # columns 2j-1 + 2j+2, j = 1 .. w-2
    mid = even[..., 1 : w - 1] + odd[..., 1 : w - 1]
    mid *= 3
    s += mid
    odd_q = s >> 6  # round(S / 64) half to even: (S + 31 + (S // 64) % 2) // 64
    odd_q &= 1
    s += 31
    s += odd_q
    s >>= 6
    out = np.empty((n, h, w, c), np.uint8)
    out[:, 1 : h - 1, 1 : w - 1] = s.transpose(0, 1, 3, 2)
    # border rows: first + last 4 rows side by side -> 4 rows, of which the first and last are the borders
    rows = _resize_float(np.concatenate([frames[:, :4], frames[:, hh - 4 :]], axis=1), 4, w)
    out[:, 0], out[:, h - 1] = rows[:, 0], rows[:, 3]
    cols = _resize_float(np.concatenate([frames[:, :, :4], frames[:, :, ww - 4 :]], axis=2), h, 4)
    out[:, :, 0], out[:, :, w - 1] = cols[:, :, 0], cols[:, :, 3]
    return out


def _resize_float(frames: np.ndarray, h: int, w: int) -> np.ndarray:
    """`resize_to` in torch: float32 antialiased bilinear, rounded half to even."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    y = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _resize_square(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 [n, h, w, 3] -> uint8 [n, size, size, 3] (antialiased bilinear)."""
    if frames.shape[1] == size and frames.shape[2] == size:
        return frames
    return resize_to(frames, size, size)


def centre_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 [n, h, w, 3] -> [n, size, size, 3]: short side resized to `size`, centre square."""
    h, w = frames.shape[1:3]
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    if (nh, nw) != (h, w):
        frames = resize_to(frames, nh, nw)
    y, x = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(frames[:, y : y + size, x : x + size])


def fragments(frames: np.ndarray, size: int, grid: int = 7) -> np.ndarray:
    """uint8 [n, h, w, 3] -> [n, size, size, 3]: a grid x grid mosaic of (size / grid)-pixel patches,
    each cut at native resolution around the centre of its cell of the frame."""
    h, w = frames.shape[1:3]
    fh, fw = fragment_frame_size(h, w, size, grid)
    if (fh, fw) != (h, w):
        frames = resize_to(frames, fh, fw)
    p, ys, xs = fragment_origins(fh, fw, size, grid)
    out = np.empty((len(frames), size, size, 3), np.uint8)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            out[:, i * p : (i + 1) * p, j * p : (j + 1) * p] = frames[:, y : y + p, x : x + p]
    return out


def fragment_frame_size(h: int, w: int, size: int, grid: int) -> tuple[int, int]:
    """The frame size fragments are cut from: the frame's own, or upscaled just enough for every patch
    to fit when a side is shorter than `size`."""
    if size % grid:
        raise ValueError(f"fragments: key size {size} is not a multiple of the grid {grid}")
    if h < size or w < size:
        s = size / min(h, w)
        return max(size, math.ceil(h * s)), max(size, math.ceil(w * s))
    return h, w


def fragment_origins(h: int, w: int, size: int, grid: int) -> tuple[int, list[int], list[int]]:
    """(patch side, top rows, left columns) of the grid x grid fragments of an h x w frame: one patch of
    size / grid pixels around the centre of each cell."""
    p = size // grid
    ys = [int(min(h - p, max(0, round((i + 0.5) * h / grid - p / 2)))) for i in range(grid)]
    xs = [int(min(w - p, max(0, round((j + 0.5) * w / grid - p / 2)))) for j in range(grid)]
    return p, ys, xs


def tensor_view(x: torch.Tensor, size: int, mode: str, grid: int = 7) -> torch.Tensor:
    """`spatial_view` of float frames [n, 3, H, W] already on the encoder's device, for a vision model
    that makes its own view of the whole key frame (`models.vision.whole_frame`): `stretch` (resized to
    size x size) or `fragments` (the same patches as `fragments`, cut from the frame as given). Resizing
    is antialiased bilinear in float, not rounded to bytes."""
    h, w = x.shape[2:]
    if mode == "stretch":
        return x if (h, w) == (size, size) else F.interpolate(x, size=(size, size), mode="bilinear",
                                                              antialias=True, align_corners=False)
    if mode != "fragments":
        raise ValueError(f"a view of the whole frame is made for keyframe_mode stretch or fragments, not {mode!r}")
    fh, fw = fragment_frame_size(h, w, size, grid)
    if (fh, fw) != (h, w):
        x = F.interpolate(x, size=(fh, fw), mode="bilinear", antialias=True, align_corners=False)
    p, ys, xs = fragment_origins(fh, fw, size, grid)
    rows = [torch.cat([x[:, :, y : y + p, xx : xx + p] for xx in xs], 3) for y in ys]
    return torch.cat(rows, 2)


def native_view(frames: np.ndarray, max_short_side: int = NATIVE_MAX_SHORT_SIDE) -> np.ndarray:
    """uint8 [n, h, w, 3] -> the same frames, resized (aspect ratio kept, antialiased bilinear) so that
    their short side is `max_short_side` when it is longer; smaller frames are returned as they are."""
    h, w = frames.shape[1:3]
    short = min(h, w)
    if short <= max_short_side:
        return frames
    s = max_short_side / short
    nh, nw = (max_short_side, max(1, round(w * s))) if h <= w else (max(1, round(h * s)), max_short_side)
    return resize_to(frames, nh, nw)


def spatial_view(frames: np.ndarray, size: int, mode: str = "stretch", grid: int = 7,
                 max_short_side: int = NATIVE_MAX_SHORT_SIDE) -> np.ndarray:
    """Frames as the vision encoder sees them (see `keyframe_mode` in the module docstring)."""
    if mode == "native":
        return native_view(frames, max_short_side)
    if mode == "stretch":
        return _resize_square(frames, size)
    if mode == "crop":
        return centre_crop(frames, size)
    if mode == "fragments":
        return fragments(frames, size, grid)
    raise ValueError(f"unknown keyframe_mode {mode!r} (one of {KEYFRAME_MODES})")


def chunk_view(frames: np.ndarray, size: int, mode: str = "stretch") -> np.ndarray:
    """Chunk frames for the motion role: centre-cropped in `crop` mode, else the whole frame resized."""
    return spatial_view(frames, size, "crop" if mode == "crop" else "stretch")
