"""Snakemake at LSVQ scale: DAG build (dry run) time and peak memory, and a no-op rerun, for 39,075 videos.

Placeholder video files are enough for the DAG: the manifest is built for real (it only reads label
rows and fingerprints files), then `snakemake -n` plans every probe/extract/prompt/train/evaluate
job, and a second `snakemake --touch`-then-`-n` measures how quickly an up-to-date workflow is
recognised as such. Goal: <= 15 s each on a 2-core machine.

    python benchmarks/bench_dag.py [--videos 39075] [--shard-size 256]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results"


def snakemake(workdir: Path, *args: str) -> tuple[float, float, str]:
    """Run snakemake in a child; return (seconds, peak RSS MiB of the child, tail of output)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", "2", "--scheduler", "greedy", *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, max(peak, before) / 1024, (proc.stdout + proc.stderr)[-2000:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=39075)
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--keep", action="store_true", help="keep the temporary workdir")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lmmvqa-dag-"))
    videos = work / "videos"
    videos.mkdir()
    rows = ["name,mos"]
    for i in range(args.videos):
        name = f"v{i:06d}.mp4"
        (videos / name).touch()
        rows.append(f"{name},{(i * 37) % 100 + 0.5:.3f}")
    (work / "labels.csv").write_text("\n".join(rows) + "\n")
    cfg = {
        "datasets": {"big": {"format": "generic", "labels": str(work / "labels.csv"), "videos": str(videos)}},
        "features": {"shard_size": args.shard_size},
        "experiments": {"big": {"train": ["big:train"], "test": ["big:test"]}},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))

    t_manifest, _, _ = snakemake(work, "results/manifest/big.csv")
    t_dry, rss_dry, out = snakemake(work, "-n", "--quiet", "rules")
    jobs = [line for line in out.splitlines() if line.strip().startswith(("extract", "probe", "total"))]
    # mark everything as done, then time the no-op rerun
    t_touch, _, _ = snakemake(work, "--touch", "--quiet")
    t_noop, rss_noop, out_noop = snakemake(work, "-n", "--quiet")
    result = {
        "videos": args.videos,
        "shard_size": args.shard_size,
        "manifest_s": round(t_manifest, 2),
        "dry_run_s": round(t_dry, 2),
        "dry_run_peak_rss_mib": round(rss_dry, 1),
        "noop_rerun_s": round(t_noop, 2),
        "noop_peak_rss_mib": round(rss_noop, 1),
        "job_summary": jobs,
        "noop_output": out_noop.strip().splitlines()[-1:] if out_noop.strip() else ["(nothing to do)"],
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "dag.json").write_text(json.dumps(result, indent=2))
    print(f"{'measure':<28}{'value':>12}")
    for key in ("videos", "manifest_s", "dry_run_s", "dry_run_peak_rss_mib", "noop_rerun_s", "noop_peak_rss_mib"):
        print(f"{key:<28}{result[key]:>12}")
    print("jobs:", "; ".join(j.strip() for j in jobs))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print("workdir:", work)


if __name__ == "__main__":
    main()
