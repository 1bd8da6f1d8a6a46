"""`lmmvqa demo-data`: the whole synthetic demo dataset, every video and its label file.

`generate(out_dir, n_videos=240, seed=0, workers=2)` writes

    out_dir/videos/demo_0000.mp4, ...   (mp4/h264 mostly, some webm/VP9 and mkv/h264 or mkv/HEVC)
    out_dir/labels.csv                  (generic label format, written last, via temp file + rename)

and returns the label table as a DataFrame. CLI: `lmmvqa demo-data --out DIR [--n-videos N]
[--seed S] [--workers W] [--clean]`. `--clean` (`clean=True`) renders the same contents without any
distortion, losslessly (FFV1 in Matroska, `clean_0000.mkv`, ...): references for a synth dataset
(pipeline/synth), which distorts them itself and labels the results with a full-reference metric.

Determinism: every video's parameters and pixels come from a numpy RNG seeded by (seed, index)
only (`labels.video_rng`), so the same seed gives byte-identical labels.csv (and, with
single-threaded bit-exact encoders, identical video bytes) whatever `workers` is, and the first N
videos of a larger set are the same as a set of N.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from pathlib import Path

import pandas as pd

from pipeline.core.errors import UserError
from pipeline.ingest.demo.labels import LABEL_COLUMNS, clean_params, sample_params
from pipeline.ingest.demo.video import render_video


def _render_one(job: tuple[int, int, str, bool]) -> dict:
    """Sample, render and write one video of the pool's job list; its label row back."""
    seed, index, videos, clean = job
    params = sample_params(seed, index)
    params = clean_params(params) if clean else params
    render_video(params, Path(videos) / params["name"])
    return params


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
            rows.append(_render_one(j))
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(workers, len(jobs))) as pool:
            for r in pool.imap_unordered(_render_one, jobs, chunksize=1):
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
    """A video's rough render cost (pixels x frames; blur and noise cost more), to start the costliest first."""
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
