"""What a demo video shows: procedural scenes rendered at any "content time" t (in frames, fractional
allowed), so the temporal distortions only re-time them.

`texture` (multi-octave value noise drifting, two layers), `grating` (2-3 drifting sinusoid /
square-ish gratings), `shapes` (many moving hard-edged shapes, some striped, over a smooth
background), `gradient` (moving linear + radial colour gradients with a few shapes), `pan` (camera
pan over a large procedural landscape with "buildings" and glyph signs), `text` (rows of random
bitmap glyphs scrolling like credits or a ticker). Every scene has sharp edges and steady motion
(1.5-4 px per frame at 224 px), so blur and the temporal distortions have something to act on.
"""
from __future__ import annotations

import math

import numpy as np

from pipeline.ingest.demo.resampling import resize

CONTENTS = ["texture", "grating", "shapes", "gradient", "pan", "text"]


def _value_noise(rng: np.random.Generator, h: int, w: int, cells: list[float], gains: list[float]) -> np.ndarray:
    """Multi-octave value noise in [0, 1]; `cells` = cell sizes in pixels."""
    out = np.zeros((h, w), dtype=np.float32)
    for cell, g in zip(cells, gains):
        gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
        out += g * resize(rng.random((gh, gw)).astype(np.float32), h, w, "bilinear")
    out -= out.min()
    out /= max(float(out.max()), 1e-6)
    return out


def _palette(rng: np.random.Generator, n: int = 4) -> np.ndarray:
    """n random RGB colours, the first dark and the last bright."""
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


class _MovingShape:
    """A disc, rect, ring or diamond (plain or striped) moving at constant speed and bouncing off the borders."""

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


class Scene:
    """One video's scene of kind `kind` (one of CONTENTS): everything random is drawn here, from `rng`, so
    `render(t)` is a pure function of the content time t (in frames, fractional allowed) and gives
    float32 (H, W, 3) in [0, 1]."""

    def __init__(self, kind: str, rng: np.random.Generator, w: int, h: int, n_frames: int):
        self.kind, self.w, self.h = kind, w, h
        sx, sy = w / 224.0, h / 224.0
        self.scale = math.sqrt(sx * sy)
        speed = float(rng.uniform(1.5, 4.0))  # px per frame at 224
        ang = float(rng.uniform(0, 2 * np.pi))
        self.v = (speed * sx * math.cos(ang), speed * sy * math.sin(ang))
        self.shapes: list[_MovingShape] = []
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
                self.shapes.append(_MovingShape(rng, w, h, size * self.scale, speed * self.scale))

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
