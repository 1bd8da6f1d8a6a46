"""Synthetic demo VQA dataset: procedural videos with graded, known distortions and a formula MOS.

`generate(out_dir, n_videos=240, seed=0, workers=2)` writes

    out_dir/videos/demo_0000.mp4, ...   (mp4/h264 mostly, some webm/VP9 and mkv/h264 or mkv/HEVC)
    out_dir/labels.csv                  (generic label format, written last, via temp file + rename)

and returns the label table as a DataFrame. CLI: `lmmvqa demo-data --out DIR [--n-videos N]
[--seed S] [--workers W] [--clean]`. `--clean` (`clean=True`) renders the same contents without any
distortion, losslessly (FFV1 in Matroska, `clean_0000.mkv`, ...): references for a synth dataset
(pipeline/synth), which distorts them itself and labels the results with a full-reference metric.

Content (numpy, rendered at "content time" t in frames, so temporal distortions only re-time it)
-------------------------------------------------------------------------------------------------
`texture` (multi-octave value noise drifting, two layers), `grating` (2-3 drifting sinusoid /
square-ish gratings), `shapes` (many moving hard-edged shapes, some striped, over a smooth
background), `gradient` (moving linear + radial colour gradients with a few shapes), `pan` (camera
pan over a large procedural landscape with "buildings" and glyph signs), `text` (rows of random
bitmap glyphs scrolling like credits or a ticker). 2-4 s, sizes 256x192 .. 480x270 (even), 24/25/30
fps. Every content type has sharp edges and steady motion (1.5-4 px per frame at 224 px), so blur
and the temporal distortions have something to act on.

Distortions (strength s in [0, 1]; parameters are in "224 units", i.e. as seen after the key frame
is resized to 224x224, and scaled to the source size sx = W/224, sy = H/224)
-------------------------------------------------------------------------------------------------
Applied per frame in this order: exposure -> blur -> downup -> noise -> (encode with crf).

| name          | what                                                    | parameter(s)                        | weight w |
|---------------|---------------------------------------------------------|-------------------------------------|----------|
| `blur`        | gaussian blur                                           | sigma224 = 0.4 + 2.6 s              | 75 |
| `noise`       | additive white gaussian noise (per pixel, per frame)    | sigma = (3 + 37 s) sqrt(sx sy) /255 | 65 |
| `compression` | libx264 (mp4/mkv only) at crf = 30 + 21 s               | crf 30 .. 51 (clean: crf 20)        | 70 |
| `downup`      | box downscale, nearest-neighbour upscale (pixelation)   | factor224 = 1.5 + 4.5 s             | 65 |
| `exposure`    | mode `over` (gain, clipped highlights), `under` (gamma  | see `_exposure`                     | 55 |
|               | + darkening) or `low_contrast` (washed-out haze)        |                                     |    |
| `stutter`     | frame repetition: frame rate divided by r               | r = 1 + 5 s, t_i = floor(i/r) r     | 45 |
| `drops`       | bursts of frozen frames, then a jump (dropped frames)   | frozen fraction 0.15 + 0.45 s,      | 40 |
|               |                                                         | mean burst length 2 + 6 s           |    |
| `judder`      | uneven frame timing (2-periodic)                        | t_i = i - 0.9 s (i mod 2)           | 30 |

Videos without `compression` are encoded at high quality (x264 crf 20, VP9 crf 24, x265 crf 20).

MOS formula
-----------
    mos_formula = 100 - sum_k w_k * s_k          (s_k = 0 for distortions not present)
    mos         = clip(mos_formula + e, 0, 100),  e ~ N(0, 2.5^2) seeded per video ("subjective" noise)

rounded to 3 decimals. The strengths are sampled so that MOS covers 0-100 roughly uniformly: a
target impairment T ~ U(0, 96) is drawn; T < 4 gives a clean video, otherwise 1 or 2 distortions
(at most one temporal) whose impairments w_k s_k add up to T (strengths clipped to [0.03, 1]).
Spatial distortions are drawn about four times as often as temporal ones, since the latter are
only visible to the motion encoder.

labels.csv columns
------------------
`name` (file name relative to `videos/`), `mos`, then `mos_formula`, `content`, `width`, `height`,
`fps`, `n_frames`, `duration`, `container` (mp4/webm/mkv), `codec` (h264/vp9/hevc), `crf`,
`distortions` ("+"-joined names, "" when clean), `s_<name>` for each distortion above (0 = absent),
`exposure_mode`.

Determinism: every video's parameters and pixels come from a numpy RNG seeded by (seed, index)
only, so the same seed gives byte-identical labels.csv (and, with single-threaded bit-exact
encoders, identical video bytes) whatever `workers` is, and the first N videos of a larger set are
the same as a set of N.
"""
from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter1d

from pipeline.core.errors import UserError

# ---------------------------------------------------------------------------------------------
# Constants (documented in the module docstring)
# ---------------------------------------------------------------------------------------------
SIZES = [(256, 192), (320, 180), (320, 240), (384, 216), (426, 240), (480, 270)]
FPS = [24, 25, 30]
DURATION = (2.0, 4.0)
CONTENTS = ["texture", "grating", "shapes", "gradient", "pan", "text"]

SPATIAL = ["blur", "noise", "compression", "downup", "exposure"]
TEMPORAL = ["stutter", "drops", "judder"]
DISTORTIONS = SPATIAL + TEMPORAL
WEIGHTS = {"blur": 75.0, "noise": 65.0, "compression": 70.0, "downup": 65.0, "exposure": 55.0,
           "stutter": 45.0, "drops": 40.0, "judder": 30.0}
PICK_PROB = {"blur": 1.0, "noise": 1.0, "compression": 1.0, "downup": 0.9, "exposure": 0.9,
             "stutter": 0.45, "drops": 0.35, "judder": 0.3}
EXPOSURE_MODES = ["over", "under", "low_contrast"]
MOS_NOISE_SD = 2.5
TARGET_MAX = 96.0
CLEAN_BELOW = 4.0
MIN_STRENGTH = 0.03

# (container, codec, probability) for videos without the compression distortion
CONTAINERS = [("mp4", "h264", 0.70), ("webm", "vp9", 0.15), ("mkv", "h264", 0.08), ("mkv", "hevc", 0.07)]
CLEAN_CRF = {"h264": 20.0, "vp9": 24.0, "hevc": 20.0}

LABEL_COLUMNS = (["name", "mos", "mos_formula", "content", "width", "height", "fps", "n_frames", "duration",
                  "container", "codec", "crf", "distortions"]
                 + [f"s_{d}" for d in DISTORTIONS] + ["exposure_mode"])


# ---------------------------------------------------------------------------------------------
# MOS formula and parameter sampling
# ---------------------------------------------------------------------------------------------
def mos_formula(strengths: dict[str, float]) -> float:
    """100 - sum_k w_k s_k (no clipping, no noise). Unknown names are an error."""
    total = 0.0
    for name, s in strengths.items():
        if name not in WEIGHTS:
            raise ValueError(f"unknown distortion {name!r}")
        total += WEIGHTS[name] * float(s)
    return 100.0 - total


def mos_from_strengths(strengths: dict[str, float], noise: float = 0.0) -> float:
    """The label: clip(mos_formula + noise, 0, 100), 3 decimals."""
    return round(min(100.0, max(0.0, mos_formula(strengths) + noise)), 3)


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([abs(int(seed)), int(seed < 0), int(index), stream]))


def _pick(rng: np.random.Generator, names: list[str]) -> str:
    p = np.array([PICK_PROB[n] for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def sample_params(seed: int, index: int) -> dict:
    """All parameters of video `index` (pure function of seed and index)."""
    rng = _rng(seed, index, 0)
    w, h = SIZES[int(rng.integers(len(SIZES)))]
    fps = FPS[int(rng.integers(len(FPS)))]
    duration = float(rng.uniform(*DURATION))
    n_frames = int(round(duration * fps))
    content = CONTENTS[int(rng.integers(len(CONTENTS)))]

    target = float(rng.uniform(0.0, TARGET_MAX))
    n_two = rng.random() < 0.45
    split = float(rng.uniform(0.3, 0.7))
    strengths: dict[str, float] = {}
    if target >= CLEAN_BELOW:
        k1 = _pick(rng, DISTORTIONS)
        chosen = [k1]
        if n_two or target > 0.95 * WEIGHTS[k1]:
            others = [d for d in DISTORTIONS if d != k1 and not (k1 in TEMPORAL and d in TEMPORAL)]
            enough = [d for d in others if WEIGHTS[k1] + WEIGHTS[d] >= target / 0.97]
            chosen.append(_pick(rng, enough or others))
        if len(chosen) == 1:
            parts = [target]
        else:
            parts = [split * target, (1.0 - split) * target]
        s = [p / WEIGHTS[k] for p, k in zip(parts, chosen)]
        if len(s) == 2:  # move impairment a saturated distortion cannot carry to the other one
            for a, b in ((0, 1), (1, 0)):
                if s[a] > 1.0:
                    s[b] += (s[a] - 1.0) * WEIGHTS[chosen[a]] / WEIGHTS[chosen[b]]
                    s[a] = 1.0
        for k, v in zip(chosen, s):
            strengths[k] = round(min(1.0, max(MIN_STRENGTH, v)), 3)

    exposure_mode = EXPOSURE_MODES[int(rng.integers(len(EXPOSURE_MODES)))] if "exposure" in strengths else ""
    if "compression" in strengths:
        container, codec = ("mp4", "h264") if rng.random() < 0.85 else ("mkv", "h264")
        crf = round(30.0 + 21.0 * strengths["compression"], 1)
    else:
        probs = np.array([c[2] for c in CONTAINERS])
        container, codec, _ = CONTAINERS[int(rng.choice(len(CONTAINERS), p=probs / probs.sum()))]
        crf = CLEAN_CRF[codec]
    noise = float(rng.normal(0.0, MOS_NOISE_SD))
    mos_f = round(mos_formula(strengths), 3)
    return {
        "index": index, "seed": seed, "name": f"demo_{index:04d}.{container}",
        "mos": mos_from_strengths(strengths, noise), "mos_formula": mos_f,
        "content": content, "width": w, "height": h, "fps": fps, "n_frames": n_frames,
        "duration": round(n_frames / fps, 3), "container": container, "codec": codec, "crf": crf,
        "distortions": "+".join(k for k in DISTORTIONS if k in strengths),
        **{f"s_{d}": float(strengths.get(d, 0.0)) for d in DISTORTIONS},
        "exposure_mode": exposure_mode,
    }


# ---------------------------------------------------------------------------------------------
# Small image helpers
# ---------------------------------------------------------------------------------------------
def _resize_matrix(n_in: int, n_out: int, mode: str) -> np.ndarray:
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


def _resize(img: np.ndarray, h: int, w: int, mode: str = "bilinear") -> np.ndarray:
    a_h = _resize_matrix(img.shape[0], h, mode)
    a_w = _resize_matrix(img.shape[1], w, mode)
    out = np.tensordot(a_h, img, axes=(1, 0))  # (h, W, C...)
    out = np.tensordot(out, a_w, axes=(1, 1))  # (h, C..., w)
    return np.ascontiguousarray(np.moveaxis(out, -1, 1)).astype(np.float32)


def _value_noise(rng: np.random.Generator, h: int, w: int, cells: list[float], gains: list[float]) -> np.ndarray:
    """Multi-octave value noise in [0, 1]; `cells` = cell sizes in pixels."""
    out = np.zeros((h, w), dtype=np.float32)
    for cell, g in zip(cells, gains):
        gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
        out += g * _resize(rng.random((gh, gw)).astype(np.float32), h, w, "bilinear")
    out -= out.min()
    out /= max(float(out.max()), 1e-6)
    return out


def _palette(rng: np.random.Generator, n: int = 4) -> np.ndarray:
    cols = rng.uniform(0.08, 0.92, size=(n, 3)).astype(np.float32)
    cols[0] = cols[0] * 0.5 + 0.04  # a dark and a bright anchor: full tonal range
    cols[-1] = cols[-1] * 0.4 + 0.55
    return cols


def _colorize(field: np.ndarray, pal: np.ndarray, levels: int = 1024) -> np.ndarray:
    """Map a [0, 1] field through a piecewise-linear palette (via a lookup table)."""
    x = np.linspace(0.0, 1.0, levels) * (len(pal) - 1)
    i0 = np.minimum(x.astype(int), len(pal) - 2)
    f = (x - i0)[:, None]
    lut = (pal[i0] * (1 - f) + pal[i0 + 1] * f).astype(np.float32)
    idx = (np.clip(field, 0.0, 1.0) * np.float32(levels - 1) + np.float32(0.5)).astype(np.intp)
    return np.take(lut, idx, axis=0)


def _glyphs(rng: np.random.Generator, n: int = 48) -> np.ndarray:
    """n random 7x5 bitmap 'letters' (bool)."""
    g = rng.random((n, 7, 5)) < 0.45
    g[:, :, 0] |= rng.random((n, 7)) < 0.5  # a stroke on the left makes them letter-like
    return g


def _text_sheet(rng, h: int, w: int, px: int, bg: np.ndarray, pal: np.ndarray) -> np.ndarray:
    """Rows of glyphs (each glyph pixel = px x px) on a background image."""
    img = bg.copy()
    glyphs = _glyphs(rng)
    gh, gw = 7 * px, 5 * px
    line = gh + 3 * px
    y = int(rng.integers(px, 3 * px))
    while y + gh < h:
        color = pal[int(rng.integers(len(pal)))]
        if float(np.abs(color - bg[min(y, h - 1), 0]).sum()) < 0.6:
            color = 1.0 - color
        x = int(rng.integers(px, 6 * px))
        while x + gw < w:
            if rng.random() < 0.15:  # word gap
                x += gw
                continue
            mask = np.kron(glyphs[int(rng.integers(len(glyphs)))], np.ones((px, px), dtype=bool))
            img[y:y + gh, x:x + gw][mask] = color
            x += gw + px
        y += line
    return img


class _Shape:
    def __init__(self, rng, w: int, h: int, size: float, speed: float):
        self.kind = ["disc", "rect", "ring", "diamond"][int(rng.integers(4))]
        self.r = float(size * rng.uniform(0.5, 1.5))
        self.w, self.h = w, h
        self.p0 = np.array([rng.uniform(0, w), rng.uniform(0, h)])
        ang = rng.uniform(0, 2 * np.pi)
        self.v = speed * rng.uniform(0.7, 1.3) * np.array([np.cos(ang), np.sin(ang)])
        self.color = rng.uniform(0.05, 0.95, 3).astype(np.float32)
        self.color2 = (1.0 - self.color) * 0.8 + 0.1
        self.stripes = rng.random() < 0.4
        self.period = max(2.0, size / rng.uniform(2.0, 5.0))

    def pos(self, t: float) -> tuple[float, float]:
        p = self.p0 + self.v * t
        span = np.array([self.w, self.h], dtype=float)
        q = np.mod(p, 2 * span)
        q = np.where(q > span, 2 * span - q, q)  # bounce off the borders
        return float(q[0]), float(q[1])

    def draw(self, img: np.ndarray, t: float) -> None:
        cx, cy = self.pos(t)
        r = self.r
        x0, x1 = max(0, int(cx - r)), min(self.w, int(cx + r) + 1)
        y0, y1 = max(0, int(cy - r)), min(self.h, int(cy + r) + 1)
        if x1 <= x0 or y1 <= y0:
            return
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dx, dy = xx - cx, yy - cy
        if self.kind == "disc":
            mask = dx * dx + dy * dy <= r * r
        elif self.kind == "ring":
            d2 = dx * dx + dy * dy
            mask = (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
        elif self.kind == "diamond":
            mask = np.abs(dx) + np.abs(dy) <= r
        else:
            mask = (np.abs(dx) <= r) & (np.abs(dy) <= 0.6 * r)
        region = img[y0:y1, x0:x1]
        if self.stripes:
            band = (np.floor((dx + dy) / self.period) % 2).astype(bool)
            region[mask & band] = self.color
            region[mask & ~band] = self.color2
        else:
            region[mask] = self.color


# ---------------------------------------------------------------------------------------------
# Content renderers: render(t) -> float32 (H, W, 3) in [0, 1]; t in frames (may be fractional)
# ---------------------------------------------------------------------------------------------
class _Content:
    def __init__(self, kind: str, rng: np.random.Generator, w: int, h: int, n_frames: int):
        self.kind, self.w, self.h = kind, w, h
        sx, sy = w / 224.0, h / 224.0
        self.scale = math.sqrt(sx * sy)
        speed = float(rng.uniform(1.5, 4.0))  # px per frame at 224
        ang = float(rng.uniform(0, 2 * np.pi))
        self.v = (speed * sx * math.cos(ang), speed * sy * math.sin(ang))
        self.shapes: list[_Shape] = []
        t_max = n_frames + 2
        pal = _palette(rng)
        if kind in ("texture", "pan", "text"):
            if kind == "pan":  # mostly horizontal pans
                self.v = (speed * sx * (1 if rng.random() < 0.5 else -1), speed * sy * float(rng.uniform(-0.3, 0.3)))
            if kind == "text":  # credits (vertical) or ticker (horizontal)
                if rng.random() < 0.5:
                    self.v = (0.0, -speed * sy)
                else:
                    self.v = (-speed * sx, 0.0)
            cw = w + int(math.ceil(abs(self.v[0]) * t_max)) + 2
            ch = h + int(math.ceil(abs(self.v[1]) * t_max)) + 2
            self.canvas = self._canvas(kind, rng, ch, cw, pal)
            self.off0 = (0.0 if self.v[0] >= 0 else cw - w - 1.0, 0.0 if self.v[1] >= 0 else ch - h - 1.0)
            if kind == "texture":  # a second, semi-transparent layer moving the other way
                self.layer = _colorize(_value_noise(rng, h, w, [6 * self.scale, 2.5 * self.scale], [1, 0.6]),
                                       _palette(rng))
                self.layer_alpha = _value_noise(rng, h, w, [60 * self.scale], [1]) > 0.55
                self.layer_v = -1.0 * np.array(self.v)
        elif kind == "grating":
            self.x1 = (np.arange(w, dtype=np.float32) / sx).astype(np.float32)  # 224 units
            self.y1 = (np.arange(h, dtype=np.float32) / sy).astype(np.float32)
            self.gratings = []
            for _ in range(int(rng.integers(2, 4))):
                period = float(rng.uniform(5.0, 28.0))  # px at 224
                th = float(rng.uniform(0, np.pi))
                k = 2 * np.pi / period
                omega = k * float(rng.uniform(1.5, 4.0)) * (1 if rng.random() < 0.5 else -1)
                sharp = float(rng.uniform(1.0, 6.0))
                self.gratings.append((k * math.cos(th), k * math.sin(th), omega, sharp, float(rng.uniform(0, 6.3))))
            self.pal = pal
        else:  # shapes / gradient
            if kind == "shapes":
                self.bg = _colorize(_value_noise(rng, h, w, [80 * self.scale, 30 * self.scale], [1, 0.4]), pal * 0.8 + 0.1)
                n_shapes, size = int(rng.integers(8, 15)), 18.0
            else:
                yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
                self.xx, self.yy = xx / w, yy / h
                self.grad = (float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0.004, 0.012)))
                self.pal = pal
                self.levels = int(rng.integers(6, 12))
                n_shapes, size = int(rng.integers(3, 6)), 24.0
            for _ in range(n_shapes):
                self.shapes.append(_Shape(rng, w, h, size * self.scale, speed * self.scale))

    def _canvas(self, kind, rng, ch, cw, pal):
        s = self.scale
        if kind == "texture":
            field = _value_noise(rng, ch, cw, [40 * s, 12 * s, 4 * s, 1.5 * s], [1.0, 0.6, 0.45, 0.3])
            return _colorize(field, pal)
        if kind == "text":
            bg_field = _value_noise(rng, ch, cw, [150 * s], [1.0]) * 0.5
            bg_pal = _palette(rng, 2) * 0.5 + (0.45 if rng.random() < 0.5 else 0.0)
            bg = _colorize(bg_field, bg_pal)
            return _text_sheet(rng, ch, cw, max(2, int(round(3.0 * s))), bg, np.vstack([pal, [[0.95] * 3, [0.05] * 3]]))
        # pan: landscape = terrain noise + rectangles ("buildings", with windows) + glyph signs
        field = _value_noise(rng, ch, cw, [90 * s, 25 * s, 6 * s, 2 * s], [1.0, 0.5, 0.25, 0.15])
        img = _colorize(field, pal)
        n_build = int(cw * ch / (60 * 60 * s * s) * 0.35) + 1
        glyphs = _glyphs(rng, 24)
        for _ in range(n_build):
            bw, bh = int(rng.uniform(12, 50) * s), int(rng.uniform(12, 60) * s)
            x0, y0 = int(rng.integers(0, max(1, cw - bw))), int(rng.integers(0, max(1, ch - bh)))
            col = rng.uniform(0.05, 0.95, 3).astype(np.float32)
            img[y0:y0 + bh, x0:x0 + bw] = col
            win = max(2, int(3 * s))
            if rng.random() < 0.6:  # windows grid
                sub = img[y0:y0 + bh, x0:x0 + bw]
                rows = np.arange(sub.shape[0]) % (2 * win) >= win
                cols = np.arange(sub.shape[1]) % (2 * win) >= win
                sub[np.outer(rows, cols)] = 1.0 - col
            else:  # a sign with glyphs
                px = max(1, int(round(1.5 * s)))
                x = x0 + px
                while x + 5 * px < x0 + bw and y0 + 8 * px < y0 + bh:
                    m = np.kron(glyphs[int(rng.integers(len(glyphs)))], np.ones((px, px), dtype=bool))
                    img[y0 + px:y0 + px + 7 * px, x:x + 5 * px][m] = 1.0 - col
                    x += 6 * px
        return img

    def render(self, t: float) -> np.ndarray:
        w, h = self.w, self.h
        if self.kind in ("texture", "pan", "text"):
            ox = int(round(self.off0[0] + self.v[0] * t))
            oy = int(round(self.off0[1] + self.v[1] * t))
            ox = min(max(ox, 0), self.canvas.shape[1] - w)
            oy = min(max(oy, 0), self.canvas.shape[0] - h)
            img = self.canvas[oy:oy + h, ox:ox + w].copy()
            if self.kind == "texture":
                dx = int(round(self.layer_v[0] * t)) % w
                dy = int(round(self.layer_v[1] * t)) % h
                layer = np.roll(self.layer, (dy, dx), axis=(0, 1))
                alpha = np.roll(self.layer_alpha, (dy, dx), axis=(0, 1))
                img[alpha] = layer[alpha]
            return img
        if self.kind == "grating":
            acc = np.zeros((h, w), dtype=np.float32)
            for kx, ky, om, sharp, ph in self.gratings:  # cos(a + b) from 1-D parts; soft square wave
                a, b = kx * self.x1, ky * self.y1 - om * t + ph
                c = np.outer(np.cos(b), np.cos(a)) - np.outer(np.sin(b), np.sin(a))
                acc += np.clip(sharp * c, -1.0, 1.0)
            acc = acc / (2 * len(self.gratings)) + 0.5
            return _colorize(acc, self.pal)
        if self.kind == "shapes":
            img = self.bg.copy()
        else:
            ang, rate = self.grad
            ang = ang + rate * t
            lin = (np.cos(ang) * self.xx + np.sin(ang) * self.yy) * 0.7 + 0.15 + 0.15 * math.sin(0.05 * t)
            cx, cy = 0.5 + 0.3 * math.cos(0.03 * t), 0.5 + 0.3 * math.sin(0.041 * t)
            rad = np.exp(-((self.xx - cx) ** 2 + (self.yy - cy) ** 2) * 6.0)
            field = np.clip(0.7 * lin + 0.45 * rad, 0, 1)
            if self.levels:  # posterised bands: hard edges all over the gradient
                field = np.floor(field * self.levels) / (self.levels - 1)
            img = _colorize(field, self.pal)
        for s in self.shapes:
            s.draw(img, t)
        return img


# ---------------------------------------------------------------------------------------------
# Distortions
# ---------------------------------------------------------------------------------------------
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
    if mode == "over":
        return np.clip(img * (1.0 + 1.5 * s) + 0.25 * s, 0, 1)
    if mode == "under":
        return np.power(img, 1.0 + 1.5 * s) * (1.0 - 0.55 * s)
    m = 0.5 + 0.15 * s  # low contrast: washed-out, slightly lifted
    return m + (img - m) * (1.0 - 0.75 * s)


class _Distorter:
    def __init__(self, params: dict, rng: np.random.Generator):
        self.p, self.rng = params, rng
        w, h = params["width"], params["height"]
        self.sx, self.sy = w / 224.0, h / 224.0
        s = params["s_downup"]
        if s > 0:
            f = 1.5 + 4.5 * s
            lw, lh = max(4, int(round(224.0 / f))), max(4, int(round(224.0 / f)))
            self.down_h, self.down_w = _resize_matrix(h, lh, "box"), _resize_matrix(w, lw, "box")
            self.up_h = _resize_matrix(lh, h, "nearest").argmax(axis=1)
            self.up_w = _resize_matrix(lw, w, "nearest").argmax(axis=1)

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


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------
def _encoder(codec: str, crf: float, fps: int) -> tuple[str, dict]:
    g = str(2 * fps)
    if codec == "h264":
        return "libx264", {"preset": "superfast", "crf": f"{crf:.1f}", "threads": "1", "g": g}
    if codec == "vp9":
        return "libvpx-vp9", {"deadline": "realtime", "cpu-used": "8", "crf": f"{int(crf)}", "b": "0",
                              "threads": "1", "row-mt": "0", "g": g}
    if codec == "ffv1":
        return "ffv1", {"threads": "1"}
    if codec == "hevc":
        return "libx265", {"preset": "ultrafast", "crf": f"{crf:.1f}",
                           "x265-params": f"pools=none:frame-threads=1:log-level=error:keyint={g}"}
    raise ValueError(codec)


def render_video(params: dict, path: Path) -> None:
    """Render, distort and encode one video to `path` (written to a temp name, then renamed)."""
    rng = _rng(params["seed"], params["index"], 1)
    w, h, fps = params["width"], params["height"], params["fps"]
    content = _Content(params["content"], rng, w, h, params["n_frames"])
    distort = _Distorter(params, _rng(params["seed"], params["index"], 2))
    times = content_times(params, _rng(params["seed"], params["index"], 3))
    codec_name, options = _encoder(params["codec"], params["crf"], fps)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        with av.open(str(tmp), "w", format={"mkv": "matroska"}.get(params["container"], params["container"]),
                     options={"fflags": "+bitexact"}) as out:
            stream = out.add_stream(codec_name, rate=Fraction(fps))
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.thread_count = 1
            stream.options = options
            last_t, last = None, None
            for i, t in enumerate(times):
                if t != last_t:  # repeated content time = the very same frame (stutter, drops)
                    img = distort(content.render(float(t)))
                    last = np.ascontiguousarray(np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8))
                    last_t = t
                frame = av.VideoFrame.from_ndarray(last, format="rgb24")
                frame.pts = i
                frame.time_base = Fraction(1, fps)
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def clean_params(params: dict) -> dict:
    """The same content undistorted, encoded losslessly (FFV1 in Matroska): a reference for the synth
    stage (pipeline/synth), named `clean_<index>.mkv`, MOS 100."""
    return {**params, "name": f"clean_{params['index']:04d}.mkv", "mos": 100.0, "mos_formula": 100.0,
            "container": "mkv", "codec": "ffv1", "crf": 0.0, "distortions": "", "exposure_mode": "",
            **{f"s_{d}": 0.0 for d in DISTORTIONS}}


def _work(job: tuple[int, int, str, bool]) -> dict:
    seed, index, videos, clean = job
    params = sample_params(seed, index)
    params = clean_params(params) if clean else params
    render_video(params, Path(videos) / params["name"])
    return params


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------
def generate(out_dir, n_videos: int = 240, seed: int = 0, workers: int = 2, verbose: bool = False,
             clean: bool = False):
    """Write the demo dataset to out_dir (videos/ + labels.csv); return the label DataFrame. `clean`: the
    same contents without distortions, lossless (`clean_params`), to serve as references."""
    if int(n_videos) < 1:
        raise UserError(f"demo-data: --n-videos must be >= 1 (got {n_videos})")
    out = Path(out_dir)
    videos = out / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    labels = out / "labels.csv"
    if labels.exists():  # an interrupted re-run must not leave an old, complete-looking label file
        labels.unlink()
    jobs = [(int(seed), i, str(videos), bool(clean)) for i in range(int(n_videos))]
    # costliest first (more pixels x frames) so the pool ends evenly
    jobs.sort(key=lambda j: -_cost(sample_params(j[0], j[1])))
    t0 = time.time()
    rows: list[dict] = []
    workers = max(1, int(workers))
    if workers == 1 or len(jobs) == 1:
        for j in jobs:
            rows.append(_work(j))
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(workers, len(jobs))) as pool:
            for r in pool.imap_unordered(_work, jobs, chunksize=1):
                rows.append(r)
                if verbose and len(rows) % 20 == 0:
                    print(f"  {len(rows)}/{len(jobs)} videos ({time.time() - t0:.1f} s)", flush=True)
    rows.sort(key=lambda r: r["index"])
    keep = {r["name"] for r in rows}
    for f in videos.glob("clean_*" if clean else "demo_*"):  # stale videos of an earlier, larger set
        if f.name not in keep and f.is_file():
            f.unlink()
    df = pd.DataFrame(rows)[LABEL_COLUMNS]
    tmp = out / ".labels.csv.tmp"
    df.to_csv(tmp, index=False, float_format="%.3f", lineterminator="\n")
    os.replace(tmp, labels)
    return df


def _cost(p: dict) -> float:
    return p["width"] * p["height"] * p["n_frames"] * (1.5 if p["s_blur"] or p["s_noise"] else 1.0)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder: writes OUT/labels.csv and OUT/videos/")
    p.add_argument("--n-videos", type=int, default=240, help="number of videos (default: 240)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed -> identical dataset (default: 0)")
    p.add_argument("--workers", type=int, default=2, help="parallel worker processes (default: 2)")
    p.add_argument("--clean", action="store_true",
                   help="the contents without distortions, lossless FFV1 (references for a synth dataset)")


def main(args) -> int:
    t0 = time.time()
    df = generate(args.out, n_videos=args.n_videos, seed=args.seed, workers=args.workers, verbose=True,
                  clean=args.clean)
    print(f"demo-data: {len(df)} videos, MOS {df['mos'].min():.1f}..{df['mos'].max():.1f}, "
          f"{time.time() - t0:.1f} s -> {Path(args.out) / 'labels.csv'}")
    return 0
