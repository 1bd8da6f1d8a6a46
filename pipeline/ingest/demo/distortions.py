"""How a demo video is degraded: the spatial distortions applied to each rendered frame and the temporal
ones that re-time which content a frame shows.

Strength s in [0, 1]; parameters are in "224 units", i.e. as seen after the key frame is resized to
224x224, and scaled to the source size sx = W/224, sy = H/224. Applied per frame in this order:
exposure -> blur -> downup -> noise -> (encode with crf, `pipeline.ingest.demo.video`).

| name          | what                                                    | parameter(s)                        |
|---------------|---------------------------------------------------------|-------------------------------------|
| `blur`        | gaussian blur                                           | sigma224 = 0.4 + 2.6 s              |
| `noise`       | additive white gaussian noise (per pixel, per frame)    | sigma = (3 + 37 s) sqrt(sx sy) /255 |
| `compression` | libx264 (mp4/mkv only) at crf = 30 + 21 s               | crf 30 .. 51 (clean: crf 20)        |
| `downup`      | box downscale, nearest-neighbour upscale (pixelation)   | factor224 = 1.5 + 4.5 s             |
| `exposure`    | mode `over` (gain, clipped highlights), `under` (gamma  | see `_exposure`                     |
|               | + darkening) or `low_contrast` (washed-out haze)        |                                     |
| `stutter`     | frame repetition: frame rate divided by r               | r = 1 + 5 s, t_i = floor(i/r) r     |
| `drops`       | bursts of frozen frames, then a jump (dropped frames)   | frozen fraction 0.15 + 0.45 s,      |
|               |                                                         | mean burst length 2 + 6 s           |
| `judder`      | uneven frame timing (2-periodic)                        | t_i = i - 0.9 s (i mod 2)           |

Each distortion's weight in the MOS formula is in `pipeline.ingest.demo.labels.WEIGHTS`.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter1d

from pipeline.ingest.demo.resampling import resize_matrix

SPATIAL = ["blur", "noise", "compression", "downup", "exposure"]
TEMPORAL = ["stutter", "drops", "judder"]
DISTORTIONS = SPATIAL + TEMPORAL
EXPOSURE_MODES = ["over", "under", "low_contrast"]


def content_times(params: dict, rng: np.random.Generator) -> np.ndarray:
    """Content time shown by each output frame (temporal distortions re-time the content)."""
    n = params["n_frames"]
    i = np.arange(n, dtype=np.float64)
    s = params["s_stutter"]
    if s > 0:
        r = 1.0 + 5.0 * s
        return np.floor(i / r) * r
    s = params["s_judder"]
    if s > 0:
        return i - 0.9 * s * (i % 2)
    s = params["s_drops"]
    if s > 0:
        frozen = np.zeros(n, dtype=bool)
        target, mean_len = (0.15 + 0.45 * s) * n, 2.0 + 6.0 * s
        guard = 0
        while frozen.sum() < target and guard < 10 * n:
            guard += 1
            length = 1 + int(rng.geometric(1.0 / mean_len))
            start = int(rng.integers(1, max(2, n - 1)))
            frozen[start:start + length] = True
        t = i.copy()
        for k in range(1, n):
            if frozen[k]:
                t[k] = t[k - 1]
        return t
    return i


def _exposure(img: np.ndarray, s: float, mode: str) -> np.ndarray:
    """Over-exposure (gain, clipped), under-exposure (gamma, darker) or low contrast (washed out)."""
    if mode == "over":
        return np.clip(img * (1.0 + 1.5 * s) + 0.25 * s, 0, 1)
    if mode == "under":
        return np.power(img, 1.0 + 1.5 * s) * (1.0 - 0.55 * s)
    m = 0.5 + 0.15 * s  # low contrast: washed-out, slightly lifted
    return m + (img - m) * (1.0 - 0.75 * s)


class FrameDistorter:
    """The spatial distortions of one video's parameters, applied to each rendered frame in the documented
    order; `rng` draws the per-frame noise."""

    def __init__(self, params: dict, rng: np.random.Generator):
        self.p, self.rng = params, rng
        w, h = params["width"], params["height"]
        self.sx, self.sy = w / 224.0, h / 224.0
        s = params["s_downup"]
        if s > 0:
            f = 1.5 + 4.5 * s
            lw, lh = max(4, int(round(224.0 / f))), max(4, int(round(224.0 / f)))
            self.down_h, self.down_w = resize_matrix(h, lh, "box"), resize_matrix(w, lw, "box")
            self.up_h = resize_matrix(lh, h, "nearest").argmax(axis=1)
            self.up_w = resize_matrix(lw, w, "nearest").argmax(axis=1)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        p = self.p
        if p["s_exposure"] > 0:
            img = _exposure(img, p["s_exposure"], p["exposure_mode"])
        if p["s_blur"] > 0:
            sig = 0.4 + 2.6 * p["s_blur"]
            img = gaussian_filter1d(img, sig * self.sy, axis=0, mode="nearest", truncate=3.0)
            img = gaussian_filter1d(img, sig * self.sx, axis=1, mode="nearest", truncate=3.0)
        if p["s_downup"] > 0:
            low = np.tensordot(self.down_h, img, axes=(1, 0))
            low = np.moveaxis(np.tensordot(low, self.down_w, axes=(1, 1)), -1, 1)
            img = low[self.up_h][:, self.up_w]
        if p["s_noise"] > 0:
            sd = (3.0 + 37.0 * p["s_noise"]) * math.sqrt(self.sx * self.sy) / 255.0
            img = img + self.rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sd)
        return img
