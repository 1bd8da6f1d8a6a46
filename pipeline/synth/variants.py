"""Encode and score one shard of a reference's planned variants.

`lmmvqa synth-variants --plan plan.csv --reference KEY --shard N --segments DIR --out DIR [--threads T]`

For each variant of the shard: the family's recipe (pipeline/synth/distortions.py) applied to its lossless
segment and encoded (one encoder thread, bit-exact flags: the same plan gives the same bytes), then
scored against the segment (pipeline/synth/fr_metrics.py). T variants run at once. Writes DIR/<name>
videos, DIR/scores.csv (`SCORE_COLUMNS`) and DIR/failures.csv (`id, path, stage, error`: variants whose
encode or scoring failed; the others go on), the folder as a whole. When the reference's segment could
not be cut, the shard is empty (the collect step lists the reference's error once).
"""
from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import pandas as pd

from pipeline.core import atomic
from pipeline.core.errors import FAILURE_COLUMNS
from pipeline.synth import distortions as D
from pipeline.synth import ffmpeg, transmission
from pipeline.synth.fr_metrics import score
from pipeline.synth.plan import read_plan, segment_of
from pipeline.synth.segments import count_frames, read_segments

SCORE_COLUMNS = ["name", "vmaf", "psnr", "ssim", "width", "height", "fps", "frames", "scored_frames", "seconds"]
SCORES_TABLE = "scores.csv"
FAILURES_TABLE = "failures.csv"


def encode(row, segment_file: Path, out: Path) -> D.Recipe:
    """Apply a planned variant's recipe to its segment and encode it to `out`."""
    rate = Fraction(row["rate"])
    recipe = D.recipe(row["family"], json.loads(row["params"]), segment_of(row), int(row["seed"]))
    r = f"{rate.numerator}/{rate.denominator}"
    args = ["-r", r, "-threads", "1", "-i", segment_file]
    if recipe.filters:
        args += ["-vf", ",".join(recipe.filters)]
    if recipe.loss is not None:
        transmission.send_and_receive(args, recipe.loss, D.encoder_args("h264", recipe.loss.crf),
                                      D.encoder_args(recipe.codec, recipe.crf), out)
        return recipe
    ffmpeg.run([*args, "-an", *D.encoder_args(recipe.codec, recipe.crf), *ffmpeg.BITEXACT, out])
    return recipe


def make_variant(row, segment: dict, folder: Path, tmp: Path) -> tuple[dict | None, dict | None]:
    """(scores row, None) or (None, failure row) of one variant."""
    t0 = time.perf_counter()
    out = tmp / row["name"]
    stage = "encode"
    try:
        recipe = encode(row, folder / segment["file"], out)
        stage = "score"
        fr = score(out, folder / segment["file"], int(segment["width"]), int(segment["height"]),
                   Fraction(segment["rate"]), int(segment["frames"]))
        return {"name": row["name"], "vmaf": fr["vmaf"], "psnr": fr["psnr"], "ssim": fr["ssim"],
                "width": recipe.width, "height": recipe.height, "fps": round(float(recipe.rate), 4),
                "frames": count_frames(out), "scored_frames": fr["frames"],
                "seconds": round(time.perf_counter() - t0, 3)}, None
    except (ffmpeg.FFmpegError, OSError, ValueError, KeyError) as exc:
        out.unlink(missing_ok=True)
        return None, {"id": row["name"], "path": row["name"], "stage": stage,
                      "error": " ".join(str(exc).split()) or type(exc).__name__}


def build_shard(plan: pd.DataFrame, reference: str, shard: int, segments_dir: Path, out: Path,
                threads: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Encode + score the variants of (reference, shard) into the folder `out` (appears whole)."""
    rows = plan[(plan["reference"] == reference) & (plan["shard"] == int(shard))]
    if rows.empty:
        raise SystemExit(f"synth-variants: no variants planned for reference '{reference}' shard {shard}")
    segments = {int(s["segment"]): s for s in read_segments(segments_dir).to_dict("records")}
    with atomic.directory(out) as tmp:
        jobs = [r for r in rows.to_dict("records") if segments.get(int(r["segment"]), {}).get("file")]
        with ThreadPoolExecutor(max(1, int(threads))) as pool:  # each variant is two ffmpeg processes
            results = list(pool.map(lambda r: make_variant(r, segments[int(r["segment"])], segments_dir, tmp), jobs))
        scores = pd.DataFrame([s for s, _ in results if s], columns=SCORE_COLUMNS)
        failures = pd.DataFrame([f for _, f in results if f], columns=FAILURE_COLUMNS)
        failures.to_csv(tmp / FAILURES_TABLE, index=False, lineterminator="\n")
        scores.drop(columns="seconds").to_csv(tmp / SCORES_TABLE, index=False, lineterminator="\n")
    return scores, failures


def read_scores(folder) -> pd.DataFrame:
    return pd.read_csv(Path(folder) / SCORES_TABLE, dtype={"name": str})


def read_failures(folder) -> pd.DataFrame:
    return pd.read_csv(Path(folder) / FAILURES_TABLE, dtype=str, keep_default_na=False)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", required=True, help="the dataset's plan (lmmvqa synth-plan)")
    p.add_argument("--reference", required=True, help="reference key (the plan's `reference` column)")
    p.add_argument("--shard", type=int, required=True, help="shard of the reference's variants")
    p.add_argument("--segments", required=True, help="the reference's segments folder (lmmvqa synth-segments)")
    p.add_argument("--out", required=True, help="output folder: the variants, scores.csv, failures.csv")
    p.add_argument("--threads", type=int, default=1, help="variants encoded + scored at once (default: 1)")


def main(args) -> int:
    t0 = time.perf_counter()
    scores, failures = build_shard(read_plan(args.plan), args.reference, args.shard, Path(args.segments),
                                   Path(args.out), args.threads)
    wall = time.perf_counter() - t0
    per = scores["seconds"].mean() if len(scores) else float("nan")
    print(f"synth-variants: {args.reference} shard {args.shard}: {len(scores)} variants, {len(failures)} failed, "
          f"{wall:.1f} s ({per:.2f} s each, {args.threads} at once) -> {args.out}")
    return 0
