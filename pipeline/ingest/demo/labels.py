"""What each demo video is and the label that says so: its parameters, drawn from (seed, index) alone, and
its MOS from a formula, one row of labels.csv.

MOS formula
-----------
    mos_formula = 100 - sum_k w_k * s_k          (s_k = 0 for distortions not present)
    mos         = clip(mos_formula + e, 0, 100),  e ~ N(0, 2.5^2) seeded per video ("subjective" noise)

rounded to 3 decimals, with the weights w_k in `WEIGHTS`. The strengths are sampled so that MOS covers
0-100 roughly uniformly: a target impairment T ~ U(0, 96) is drawn; T < 4 gives a clean video,
otherwise 1 or 2 distortions (at most one temporal) whose impairments w_k s_k add up to T (strengths
clipped to [0.03, 1]). Spatial distortions are drawn about four times as often as temporal ones, since
the latter are only visible to the motion encoder. Sizes 256x192 .. 480x270 (even), 2-4 s at 24/25/30
fps. Videos without `compression` are encoded at high quality (x264 crf 20, VP9 crf 24, x265 crf 20),
mostly mp4/h264, some webm/VP9 and mkv/h264 or mkv/HEVC.

labels.csv columns
------------------
`name` (file name relative to `videos/`), `mos`, then `mos_formula`, `content`, `width`, `height`,
`fps`, `n_frames`, `duration`, `container` (mp4/webm/mkv), `codec` (h264/vp9/hevc), `crf`,
`distortions` ("+"-joined names, "" when clean), `s_<name>` for each distortion (0 = absent),
`exposure_mode`.
"""
from __future__ import annotations

import numpy as np

from pipeline.ingest.demo.distortions import DISTORTIONS, EXPOSURE_MODES, TEMPORAL
from pipeline.ingest.demo.scenes import CONTENTS

SIZES = [(256, 192), (320, 180), (320, 240), (384, 216), (426, 240), (480, 270)]
FPS = [24, 25, 30]
DURATION = (2.0, 4.0)

WEIGHTS = {"blur": 75.0, "noise": 65.0, "compression": 70.0, "downup": 65.0, "exposure": 55.0,
           "stutter": 45.0, "drops": 40.0, "judder": 30.0}
PICK_PROB = {"blur": 1.0, "noise": 1.0, "compression": 1.0, "downup": 0.9, "exposure": 0.9,
             "stutter": 0.45, "drops": 0.35, "judder": 0.3}
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



def video_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """The random stream `stream` of video `index`: 0 its parameters, 1 its scene, 2 its noise distortion,
    3 its dropped frames. Separate streams keep each video a function of (seed, index) alone."""
    return np.random.default_rng(np.random.SeedSequence([abs(int(seed)), int(seed < 0), int(index), stream]))


def _pick(rng: np.random.Generator, names: list[str]) -> str:
    p = np.array([PICK_PROB[n] for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def sample_params(seed: int, index: int) -> dict:
    """All parameters of video `index` (pure function of seed and index)."""
    rng = video_rng(seed, index, 0)
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


def clean_params(params: dict) -> dict:
    """The same content undistorted, encoded losslessly (FFV1 in Matroska): a reference for the synth
    stage (pipeline/synth), named `clean_<index>.mkv`, MOS 100."""
    return {**params, "name": f"clean_{params['index']:04d}.mkv", "mos": 100.0, "mos_formula": 100.0,
            "container": "mkv", "codec": "ffv1", "crf": 0.0, "distortions": "", "exposure_mode": "",
            **{f"s_{d}": 0.0 for d in DISTORTIONS}}
