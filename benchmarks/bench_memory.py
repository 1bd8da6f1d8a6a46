"""Peak RSS of extracting one 60 s 1920x1080 video vs one 6 s 1920x1080 video (tiny preset).

    .venv/bin/python benchmarks/bench_memory.py [--threads 2] [--backend decord|pyav]

The videos are generated once with ffmpeg (testsrc2, libx264 ultrafast, 1 Mbit/s) into
benchmarks/results/videos/ (git-ignored by size; delete at will). Each extraction runs in a fresh
subprocess (`lmmvqa extract` on a one-video manifest) and reports its own peak RSS
(getrusage ru_maxrss); a baseline subprocess that only imports the package and loads the models
gives the fixed cost. Writes benchmarks/results/memory.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {repo!r})
import torch
torch.set_num_threads({threads})
from pipeline.core import resolve
features = resolve.resolve({{"datasets": {{"x": {{"format": "generic", "labels": "x.csv"}}}},
                            "models": {{"preset": "tiny"}}, "sampling": {{"backend": {backend!r}}}}}).features
from pipeline.features.extract import extract_shard
from pipeline.features.extractor import Extractor
video = {video!r}
t0 = time.perf_counter()
if video:
    # decode_workers=0: decode inside this process, so its peak RSS covers the decoder too
    summary = extract_shard(features, "bench", {manifest!r}, None, 0, {out!r}, device="cpu", threads={threads}, progress=False,
                            decode_workers=0)
else:
    Extractor(features, "cpu", {threads})
    summary = {{}}
print(json.dumps({{"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "wall_s": time.perf_counter() - t0, **summary}}))
"""


def make_video(path: Path, seconds: int) -> Path:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size=1920x1080:rate=30:duration={seconds}",
                        "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "1M", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def run_child(video: Path | None, threads: int, backend: str, tmp: Path) -> dict:
    manifest = tmp / "m.csv"
    if video:
        manifest.write_text(f"id,path,shard\nv,{video},0\n")
    code = CHILD.format(repo=str(REPO), threads=threads, backend=backend, video=str(video) if video else "",
                        manifest=str(manifest), out=str(tmp / f"{video.stem if video else 'none'}.zarr"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="decord", choices=["decord", "pyav"])
    args = ap.parse_args(argv)
    vids = RESULTS / "videos"
    t0 = time.perf_counter()
    short, long = make_video(vids / "1080p_6s.mp4", 6), make_video(vids / "1080p_60s.mp4", 60)
    print(f"videos ready ({time.perf_counter() - t0:.0f} s)", flush=True)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        rows["models only"] = run_child(None, args.threads, args.backend, Path(tmp))
        for name, v in (("6 s 1080p", short), ("60 s 1080p", long)):
            rows[name] = run_child(v, args.threads, args.backend, Path(tmp))
    print(f"\n{'run':14s} {'peak RSS MB':>12s} {'wall s':>8s}")
    for k, r in rows.items():
        print(f"{k:14s} {r['peak_rss_mb']:12.0f} {r['wall_s']:8.1f}")
    ratio = rows["60 s 1080p"]["peak_rss_mb"] / rows["6 s 1080p"]["peak_rss_mb"]
    print(f"\npeak RSS 60 s / 6 s = {ratio:.2f}  (backend {args.backend})")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"backend": args.backend, "threads": args.threads, "runs": rows, "ratio_60s_over_6s": round(ratio, 3)}
    (RESULTS / f"memory_{args.backend}.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
