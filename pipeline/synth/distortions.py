"""The distortion ladder: a registry of families, one function each, with their parameter ranges.

A family turns a lossless segment into an ffmpeg recipe: filters applied to the segment, then one encode
(codec + CRF), so every variant is a file as video delivery would hand it over. Its parameters run from
`weak` to `strong`; a ladder of `levels` levels splits that range into equal shares and draws each level's
value inside its share (the middle 70 %), seeded per variant, so a stronger level always has stronger
parameters. Integer parameters are spaced evenly instead (a single level draws any integer in the range).
Parameters marked `ladder=False` (the high-quality encode after a non-codec distortion) are drawn over their
whole range at every level.

Adding a family is one decorated function here, e.g.

    @family("sharpen", levels=2, codec="h264", about="unsharp mask, then a high-quality H.264 encode",
            amount=Param(0.5, 2.5, 0.0, 5.0), crf=CARRIER)
    def _sharpen(p, seg, rng):
        return Recipe([f"unsharp=5:5:{p['amount']}"], "h264", p["crf"], seg.width, seg.height, seg.rate)

and the config's `synth.families` can then name it; the others are untouched.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable

import numpy as np

from pipeline.core.errors import UserError
from pipeline.synth.transmission import Loss

CODECS = ("h264", "hevc", "vp9", "mjpeg")
# containers each codec can travel in (config `synth.containers` weighs them)
CONTAINERS = {"h264": ("mp4", "mkv"), "hevc": ("mp4", "mkv"), "vp9": ("webm", "mkv", "mp4"),
              "mjpeg": ("mp4", "mkv")}
SHARE = (0.15, 0.85)  # where inside its share of the range a level's value is drawn


@dataclass(frozen=True)
class Param:
    """A parameter's default range, from `weak` to `strong`, and the bounds a config may set it to."""
    weak: float
    strong: float
    low: float
    high: float
    integer: bool = False
    ladder: bool = True


@dataclass(frozen=True)
class Segment:
    """What a family knows about the segment it distorts: its size, frame rate and length."""
    width: int
    height: int
    rate: Fraction
    frames: int


@dataclass
class Recipe:
    """Filters on the segment (an ffmpeg -vf chain), then an encode; the size and rate of the result.
    With `loss`, the filtered segment first travels as a damaged stream (pipeline/synth/transmission.py)
    and what the player shows is the encode's input."""
    filters: list[str]
    codec: str
    crf: float
    width: int
    height: int
    rate: Fraction
    loss: Loss | None = None


@dataclass(frozen=True)
class Family:
    name: str
    levels: int
    codec: str
    about: str
    params: dict[str, Param]
    build: Callable[[dict, Segment, np.random.Generator], Recipe] = field(compare=False)
    kind: str = "delivery"


REGISTRY: dict[str, Family] = {}
# what a family imitates: "delivery" = what encoding and adaptive streaming do to a video (`families:
# null` takes these); opt-in by name: "capture" = what a camera does to a still before anyone encodes it,
# "transmission" = what a lossy network does to a stream on its way to the player
KINDS = ("delivery", "capture", "transmission")


def family(name: str, levels: int, codec: str, about: str, kind: str = "delivery", **params: Param):
    """Register a family: `build(params, segment, rng) -> Recipe` under `name` with its default ladder."""
    if codec not in CODECS:
        raise ValueError(f"family {name}: codec {codec!r} not in {CODECS}")
    if kind not in KINDS:
        raise ValueError(f"family {name}: kind {kind!r} not in {KINDS}")

    def register(build):
        if name in REGISTRY:
            raise ValueError(f"distortion family {name!r} registered twice")
        REGISTRY[name] = Family(name, int(levels), codec, about, dict(params), build, kind)
        return build

    return register


# ------------------------------------------------------------------------------------------------
# encoders
# ------------------------------------------------------------------------------------------------
def encoder_args(codec: str, crf: float) -> list[str]:
    """ffmpeg output options of a codec at a CRF: one thread and fixed presets, so the bytes repeat."""
    if codec == "h264":
        return ["-c:v", "libx264", "-preset", "medium", "-crf", f"{crf:g}", "-threads", "1", "-pix_fmt", "yuv420p"]
    if codec == "hevc":
        return ["-c:v", "libx265", "-preset", "medium", "-crf", f"{crf:g}", "-pix_fmt", "yuv420p", "-tag:v", "hvc1",
                "-x265-params", "pools=none:frame-threads=1:log-level=error"]
    if codec == "vp9":  # the realtime mode: libvpx's good-quality modes cost 4x more
        return ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "6", "-crf", str(int(round(crf))),
                "-b:v", "0", "-threads", "1", "-row-mt", "0", "-pix_fmt", "yuv420p"]
    if codec == "mjpeg":  # every frame a JPEG, as a camera writes stills (the "crf" is JPEG's q, 2-31)
        return ["-c:v", "mjpeg", "-q:v", str(int(round(crf))), "-threads", "1", "-pix_fmt", "yuvj420p"]
    raise ValueError(f"unknown codec {codec!r}")


# ------------------------------------------------------------------------------------------------
# filter helpers shared by families
# ------------------------------------------------------------------------------------------------
def _even(x: float) -> int:
    return max(16, int(round(x / 2.0)) * 2)


def _rate(rate: Fraction) -> str:
    return f"{rate.numerator}/{rate.denominator}"


def _downscaled(seg: Segment, factor: float) -> tuple[int, int, str]:
    w, h = _even(seg.width / factor), _even(seg.height / factor)
    return w, h, f"scale={w}:{h}:flags=bicubic"


def _blur(sigma: float) -> str:
    return f"gblur=sigma={sigma:g}"


def _noise(strength: int, rng: np.random.Generator) -> str:
    """Temporal noise on every plane (ffmpeg's noise filter), its seed drawn from the variant's."""
    return f"noise=alls={int(strength)}:allf=t:all_seed={int(rng.integers(1, 2**31 - 1))}"


def _dropped(frames: int, fraction: float, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Runs (first, last) of frames lost in bursts of 1-4 (never the first frame), about `fraction` of them."""
    lost: set[int] = set()
    target = min(int(round(fraction * frames)), frames - 1)
    while len(lost) < target:
        start = int(rng.integers(1, frames))
        lost.update(range(start, min(frames, start + int(rng.integers(1, 5)))))
    runs: list[tuple[int, int]] = []
    for i in sorted(lost):
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


CARRIER = Param(14.0, 20.0, 0.0, 51.0, ladder=False)  # the H.264 encode after a non-codec distortion


def _motion_blur(length: int, rng: np.random.Generator) -> str:
    """A camera shake's streak: a box `length` pixels long, horizontal or vertical (drawn)."""
    size = max(1, int(length) // 2)
    return f"avgblur=sizeX={size}:sizeY=1" if rng.integers(2) == 0 else f"avgblur=sizeX=1:sizeY={size}"


def _exposure(stops: float, rng: np.random.Generator) -> str:
    """Under- or over-exposure (drawn) by `stops` on the RGB values: a gain of 2^-stops that darkens, or
    of 2^stops that brightens and clips the highlights."""
    g = f"{2.0 ** -float(stops):.4f}"
    if rng.integers(2) == 0:
        return f"colorlevels=romax={g}:gomax={g}:bomax={g}"
    return f"colorlevels=rimax={g}:gimax={g}:bimax={g}"


# ------------------------------------------------------------------------------------------------
# the families
# ------------------------------------------------------------------------------------------------
@family("x264", levels=4, codec="h264", about="H.264 (libx264, preset medium) at a CRF ladder",
        crf=Param(14.0, 46.0, 0.0, 51.0))
def _x264(p, seg, rng):
    return Recipe([], "h264", p["crf"], seg.width, seg.height, seg.rate)


@family("x265", levels=1, codec="hevc", about="HEVC (libx265, preset medium) at a CRF ladder",
        crf=Param(20.0, 46.0, 0.0, 51.0))
def _x265(p, seg, rng):
    return Recipe([], "hevc", p["crf"], seg.width, seg.height, seg.rate)


@family("vp9", levels=1, codec="vp9", about="VP9 (libvpx, realtime mode, speed 6) at a CRF ladder",
        crf=Param(24, 60, 0, 63, integer=True))
def _vp9(p, seg, rng):
    return Recipe([], "vp9", p["crf"], seg.width, seg.height, seg.rate)


@family("downscale", levels=1, codec="h264", about="a smaller rendition (bicubic), as an adaptive-bitrate "
        "ladder sends it; scored after bicubic upscaling", factor=Param(1.5, 4.0, 1.0, 16.0), crf=CARRIER)
def _downscale(p, seg, rng):
    w, h, scale = _downscaled(seg, p["factor"])
    return Recipe([scale], "h264", p["crf"], w, h, seg.rate)


@family("downup", levels=1, codec="h264", about="scaled down and up again (bicubic) in the file",
        factor=Param(1.5, 4.0, 1.0, 16.0), crf=CARRIER)
def _downup(p, seg, rng):
    _, _, scale = _downscaled(seg, p["factor"])
    return Recipe([scale, f"scale={seg.width}:{seg.height}:flags=bicubic"], "h264", p["crf"],
                  seg.width, seg.height, seg.rate)


@family("blur", levels=2, codec="h264", about="Gaussian blur (sigma in pixels)",
        sigma=Param(0.6, 2.6, 0.1, 20.0), crf=CARRIER)
def _blur_family(p, seg, rng):
    return Recipe([_blur(p["sigma"])], "h264", p["crf"], seg.width, seg.height, seg.rate)


@family("noise", levels=2, codec="h264", about="temporal noise on every plane (ffmpeg noise, alls)",
        strength=Param(6, 34, 1, 100, integer=True), crf=CARRIER)
def _noise_family(p, seg, rng):
    return Recipe([_noise(p["strength"], rng)], "h264", p["crf"], seg.width, seg.height, seg.rate)


@family("fps_drop", levels=1, codec="h264", about="frame rate divided (a lower-rate file; scored with "
        "frame repetition)", divisor=Param(2, 4, 2, 10, integer=True), crf=CARRIER)
def _fps_drop(p, seg, rng):
    rate = seg.rate / int(p["divisor"])
    return Recipe([f"fps={_rate(rate)}"], "h264", p["crf"], seg.width, seg.height, rate)


@family("stutter", levels=1, codec="h264", about="every n-th frame held n times, at the full rate",
        hold=Param(2, 5, 2, 10, integer=True), crf=CARRIER)
def _stutter(p, seg, rng):
    low = seg.rate / int(p["hold"])
    return Recipe([f"fps={_rate(low)}", f"fps={_rate(seg.rate)}"], "h264", p["crf"], seg.width, seg.height,
                  seg.rate)


@family("drops", levels=1, codec="h264", about="frames lost in bursts of 1-4, the last shown frame held",
        fraction=Param(0.1, 0.5, 0.01, 0.9), crf=CARRIER)
def _drops(p, seg, rng):
    lost = _dropped(seg.frames, p["fraction"], rng)
    keep = "select='not(" + "+".join(f"between(n,{a},{b})" for a, b in lost) + ")'" if lost else "null"
    return Recipe([keep, f"fps={_rate(seg.rate)}"], "h264", p["crf"], seg.width, seg.height, seg.rate)


@family("down_x264", levels=1, codec="h264", about="a smaller rendition at a compressing CRF",
        factor=Param(1.5, 3.0, 1.0, 16.0), crf=Param(24.0, 40.0, 0.0, 51.0))
def _down_x264(p, seg, rng):
    w, h, scale = _downscaled(seg, p["factor"])
    return Recipe([scale], "h264", p["crf"], w, h, seg.rate)


@family("blur_noise_x264", levels=1, codec="h264", about="blur, then temporal noise, at a compressing CRF",
        sigma=Param(0.5, 1.5, 0.1, 20.0), strength=Param(4, 16, 1, 100, integer=True),
        crf=Param(22.0, 36.0, 0.0, 51.0))
def _blur_noise_x264(p, seg, rng):
    return Recipe([_blur(p["sigma"]), _noise(p["strength"], rng)], "h264", p["crf"], seg.width, seg.height,
                  seg.rate)


@family("fps_x264", levels=1, codec="h264", about="a lower frame rate at a compressing CRF",
        divisor=Param(2, 3, 2, 10, integer=True), crf=Param(22.0, 38.0, 0.0, 51.0))
def _fps_x264(p, seg, rng):
    rate = seg.rate / int(p["divisor"])
    return Recipe([f"fps={_rate(rate)}"], "h264", p["crf"], seg.width, seg.height, rate)


# capture-like families: what a phone or camera does to a still before anyone encodes it (photos rated by
# people are dominated by these); label them by SSIM or PSNR (`synth.metric`): VMAF barely sees exposure
# and can even rise with it
@family("motion_blur", levels=2, codec="h264", kind="capture",
        about="camera-shake streak: a box blur along one axis (horizontal or vertical, drawn; length in pixels)",
        length=Param(4, 24, 2, 200, integer=True), crf=CARRIER)
def _motion_blur_family(p, seg, rng):
    return Recipe([_motion_blur(p["length"], rng)], "h264", p["crf"], seg.width, seg.height, seg.rate)


@family("exposure", levels=2, codec="h264", kind="capture",
        about="under- or over-exposure (drawn) by a number of stops on the RGB values; over-exposure clips "
        "the highlights", stops=Param(0.4, 1.6, 0.05, 4.0), crf=CARRIER)
def _exposure_family(p, seg, rng):
    return Recipe([_exposure(p["stops"], rng)], "h264", p["crf"], seg.width, seg.height, seg.rate)


@family("jpeg", levels=3, codec="mjpeg", kind="capture",
        about="every frame a JPEG (Motion JPEG) at a quantiser ladder (q 2-31, higher = coarser)",
        q=Param(6, 31, 2, 31, integer=True))
def _jpeg(p, seg, rng):
    return Recipe([], "mjpeg", p["q"], seg.width, seg.height, seg.rate)


@family("capture_mix", levels=2, codec="mjpeg", kind="capture",
        about="a phone-like mix: Gaussian blur, an exposure error (drawn: under or over) and sensor noise, "
        "saved as JPEG", sigma=Param(0.4, 1.6, 0.1, 20.0), strength=Param(4, 18, 1, 100, integer=True),
        stops=Param(0.2, 1.0, 0.05, 4.0), q=Param(4, 20, 2, 31, integer=True))
def _capture_mix(p, seg, rng):
    return Recipe([_blur(p["sigma"]), _exposure(p["stops"], rng), _noise(p["strength"], rng)], "mjpeg", p["q"],
                  seg.width, seg.height, seg.rate)


@family("packet_loss", levels=2, codec="h264", kind="transmission",
        about="H.264 in MPEG-TS (4 slices a frame, a key frame a second) losing a share of its 188-byte "
        "packets (percent) in bursts of 1-8; what the player conceals and shows, re-encoded",
        percent=Param(0.2, 3.0, 0.01, 50.0), sent_crf=Param(18.0, 28.0, 0.0, 51.0, ladder=False), crf=CARRIER)
def _packet_loss(p, seg, rng):
    loss = Loss(p["percent"], p["sent_crf"], gop=max(1, int(round(float(seg.rate)))),
                seed=int(rng.integers(1, 2**31 - 1)))
    return Recipe([], "h264", p["crf"], seg.width, seg.height, seg.rate, loss=loss)


# ------------------------------------------------------------------------------------------------
# the configured ladder
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rung:
    """One family as a config sets it: its levels and each parameter's (weak, strong) range."""
    family: Family
    levels: int
    ranges: dict[str, tuple[float, float]]


def ladder(families: dict | None, where: str = "synth.families") -> list[Rung]:
    """The config's `synth.families` (None = every delivery family at its defaults), checked against the
    registry; a UserError names the key that is wrong."""
    chosen = {name: {} for name, fam in REGISTRY.items() if fam.kind == "delivery"} if families is None else families
    if not chosen:
        raise UserError(f"{where}: no distortion family (known: {', '.join(REGISTRY)})")
    rungs = []
    for name, over in chosen.items():
        if name not in REGISTRY:
            raise UserError(f"{where}.{name}: unknown distortion family (known: {', '.join(REGISTRY)})")
        fam = REGISTRY[name]
        over = dict(over or {})
        levels = over.pop("levels", fam.levels)
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise UserError(f"{where}.{name}.levels: must be an integer >= 1, got {levels!r}")
        ranges = {}
        for pname, spec in fam.params.items():
            value = over.pop(pname, (spec.weak, spec.strong))
            ranges[pname] = _range(value, spec, f"{where}.{name}.{pname}")
        if over:
            raise UserError(f"{where}.{name}: unknown parameter(s) {', '.join(sorted(over))} "
                            f"(it has: levels, {', '.join(fam.params)})")
        rungs.append(Rung(fam, levels, ranges))
    return rungs


def _range(value, spec: Param, where: str) -> tuple[float, float]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise UserError(f"{where}: must be [weak, strong], two numbers, got {value!r}")
    weak, strong = float(value[0]), float(value[1])
    if not (spec.low <= weak <= spec.high and spec.low <= strong <= spec.high):
        raise UserError(f"{where}: {value!r} outside [{spec.low:g}, {spec.high:g}]")
    if weak > strong:
        raise UserError(f"{where}: weak {weak:g} > strong {strong:g} (the range runs from weak to strong)")
    if spec.integer and (weak != int(weak) or strong != int(strong)):
        raise UserError(f"{where}: integer parameter, got {value!r}")
    return weak, strong


def variant_seed(seed: int, *key) -> int:
    """A variant's seed: a hash of the config seed and the variant's place (reference, segment, family, level),
    so adding references or families never changes another variant."""
    text = "/".join(str(k) for k in (int(seed), *key))
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


def draw(rung: Rung, level: int, seed: int) -> dict:
    """The parameters of level `level` (0 = weakest) of a rung, from the variant's seed."""
    rng = np.random.default_rng(seed)
    n = rung.levels
    out = {}
    for pname, spec in rung.family.params.items():
        weak, strong = rung.ranges[pname]
        if spec.integer:
            if not spec.ladder or n == 1:
                value = int(rng.integers(int(weak), int(strong) + 1))
            else:
                value = int(round(weak + (strong - weak) * level / (n - 1)))
        else:
            if spec.ladder:
                value = weak + (strong - weak) * (level + rng.uniform(*SHARE)) / n
            else:
                value = rng.uniform(weak, strong)
            value = round(float(value), 2)
        out[pname] = value
    return out


def recipe(family_name: str, params: dict, segment: Segment, seed: int) -> Recipe:
    """The recipe of a planned variant (the seed also drives a family's own draws, e.g. which frames drop)."""
    rng = np.random.default_rng([seed, 1])
    return REGISTRY[family_name].build(params, segment, rng)


def container(codec: str, weights: dict[str, float], seed: int) -> str:
    """A container for a codec, drawn by the config's weights among those the codec fits."""
    names = [c for c in CONTAINERS[codec] if weights.get(c, 0) > 0]
    if not names:
        raise UserError(f"synth.containers: no container with weight > 0 fits {codec} "
                        f"(it travels in {', '.join(CONTAINERS[codec])})")
    p = np.array([weights[c] for c in names], dtype=float)
    return names[int(np.random.default_rng([seed, 2]).choice(len(names), p=p / p.sum()))]
