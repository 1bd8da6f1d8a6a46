"""Full-reference scores of a variant against its lossless segment, in one ffmpeg run.

The variant is brought to the reference's frame rate (frame repetition: ffmpeg `fps`) and resolution
(bicubic), as a player would show it, then compared frame by frame with the reference: VMAF (model
vmaf_v0.6.1) and PSNR of the luma plane from libvmaf, SSIM of the luma plane from ffmpeg's `ssim`
filter (libvmaf's float_ssim costs half a VMAF run more). Each is the mean over the reference's frames;
VMAF is clipped to [0, 100]. `to_mos` maps the chosen metric to the 0-100 label.
"""
from __future__ import annotations

import json
import tempfile
from fractions import Fraction
from pathlib import Path

from pipeline.synth import ffmpeg

METRICS = ("vmaf", "psnr", "ssim")
VMAF_MODEL = "vmaf_v0.6.1"


def score(variant: Path, reference: Path, width: int, height: int, rate: Fraction, frames: int) -> dict:
    """{vmaf, psnr, ssim, frames} of a variant against its reference segment (`frames` frames at `rate`)."""
    r = f"{rate.numerator}/{rate.denominator}"
    graph = ";".join([
        f"[0:v]setpts=PTS-STARTPTS,fps={r},scale={width}:{height}:flags=bicubic,setsar=1,format=yuv420p,"
        f"trim=end_frame={frames}[dist]",
        "[1:v]setpts=PTS-STARTPTS,format=yuv420p,split[ref1][ref2]",
        "[dist][ref1]ssim=stats_file=ssim.log[dist2]",
        f"[dist2][ref2]libvmaf=model=version={VMAF_MODEL}:feature=name=psnr:n_threads=1:log_fmt=json:"
        "log_path=vmaf.json",
    ])
    with tempfile.TemporaryDirectory(prefix="lmmvqa-fr-") as work:  # relative log names: no escaping
        ffmpeg.run(["-threads", "1", "-i", Path(variant).resolve(), "-r", r, "-threads", "1", "-i",
                    Path(reference).resolve(), "-filter_complex", graph, "-filter_complex_threads", "1",
                    "-f", "null", "-"], cwd=work)
        log = json.loads((Path(work) / "vmaf.json").read_text())
        ssim = [float(part.split(":")[1]) for line in (Path(work) / "ssim.log").read_text().splitlines()
                for part in line.split() if part.startswith("Y:")]
    pooled = log["pooled_metrics"]
    return {"vmaf": round(min(100.0, max(0.0, float(pooled["vmaf"]["mean"]))), 4),
            "psnr": round(float(pooled["psnr_y"]["mean"]), 4),
            "ssim": round(sum(ssim) / len(ssim), 6),
            "frames": len(log["frames"])}


def to_mos(scores: dict, metric: str) -> float:
    """The label on 0-100 from the chosen metric (config `synth.metric`; the schema documents the maps)."""
    if metric == "vmaf":
        value = scores["vmaf"]
    elif metric == "psnr":
        value = 100.0 * (scores["psnr"] - 20.0) / 30.0
    elif metric == "ssim":
        value = 100.0 * (2.0 * scores["ssim"] - 1.0)
    else:
        raise ValueError(f"unknown metric {metric!r} (one of {METRICS})")
    return round(min(100.0, max(0.0, value)), 4)
