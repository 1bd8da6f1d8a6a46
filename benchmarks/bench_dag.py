"""Snakemake at LSVQ scale: DAG build (dry run) time and peak memory, and a real nothing-to-do rerun,
for 39,075 videos.

Placeholder video files are enough for the DAG: the manifest is built for real (it only reads label
rows and fingerprints files), then `snakemake -n` plans every probe/extract/prompt/train/evaluate
job. For the no-op rerun the workflow then runs once for real with a stand-in `lmmvqa` that creates
placeholder outputs (a folder for `directory()` outputs, an empty file otherwise), so every output is
present with Snakemake's metadata as after a real run (`--touch` creates no missing output: a `-n`
after it still plans every job); `snakemake -n` must then report nothing to do, and a plain
`snakemake` (not -n) is timed: what a user waits for when they rerun an up-to-date workflow.
Wall time depends on the machine's load; the CPU seconds of the Snakemake process are reported
beside it. Goal: <= 15 s each on a 2-core machine.

    python benchmarks/bench_dag.py [--videos 39075] [--shard-size 256]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results"


@dataclass
class Run:
    seconds: float  # wall clock
    cpu: float  # user + system CPU seconds of the Snakemake process and its children
    rss_mib: float  # peak RSS of the Snakemake process (its own, not the max over earlier children)
    out: str


def snakemake(workdir: Path, *args: str, tail: int | None = 2000, path_first: Path | None = None) -> Run:
    """Run snakemake in a child and measure it."""
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    env = dict(os.environ, PATH=f"{path_first}:{path}" if path_first else path)
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", "2", "--scheduler", "greedy", *args]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS (not the max over all children)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        out = log.read()
    if proc.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed:\n{out[-6000:]}")
    return Run(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out[-tail:] if tail else out)


DIR_PATTERNS = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.io import is_flagged
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings
work, snakefile = Path(sys.argv[1]), Path(sys.argv[2])
with SnakemakeApi(OutputSettings(quiet=True)) as api:
    wf = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=snakefile, workdir=work,
                      config_settings=ConfigSettings(configfiles=[work / "config.yaml"]))
    print(json.dumps([o.regex().pattern for r in wf._workflow.rules for o in r.output if is_flagged(o, "directory")]))
"""


STUB = """#!/bin/sh
# Stand-in for `lmmvqa` (benchmark only): create every still-missing output of the workflow, listed
# one per line as "d <folder>" or "f <file>". Snakemake deletes a job's outputs before running it, so
# each job recreates its own outputs (newer than its inputs) and Snakemake records its metadata.
while read -r kind path; do
  [ -e "$path" ] && continue
  if [ "$kind" = d ]; then mkdir -p "$path"; else mkdir -p "$(dirname "$path")"; : > "$path"; fi
done < "{listing}"
"""


def create_outputs(workdir: Path) -> tuple[int, float]:
    """Run the whole workflow with a stand-in `lmmvqa` that creates placeholder outputs (a folder for
    `directory()` outputs, an empty file otherwise), so that every output is present with the
    metadata of a real run. Returns (outputs, seconds of that run)."""
    import re

    out = snakemake(workdir, "--summary", tail=None).out
    missing = [line.split("\t")[0] for line in out.splitlines()
               if line.count("\t") >= 5 and line.split("\t")[4] == "missing"]
    proc = subprocess.run([sys.executable, "-c", DIR_PATTERNS, str(workdir), str(REPO / "Snakefile")],
                          capture_output=True, text=True, check=True)
    dirs = [re.compile(p) for p in json.loads(proc.stdout.strip().splitlines()[-1])]
    listing = workdir / "stub-outputs.txt"
    listing.write_text("".join(f"{'d' if any(p.match(rel) for p in dirs) else 'f'} {rel}\n" for rel in missing))
    stub_bin = workdir / "stub-bin"
    stub_bin.mkdir()
    (stub_bin / "lmmvqa").write_text(STUB.format(listing=listing))
    (stub_bin / "lmmvqa").chmod(0o755)
    return len(missing), snakemake(workdir, path_first=stub_bin).seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=39075)
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3, help="no-op reruns timed (the median is reported)")
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

    manifest = snakemake(work, "results/manifest/big.csv")
    dry = snakemake(work, "-n", "--quiet", "rules")
    jobs = [line.strip() for line in dry.out.splitlines() if line.strip().startswith(("extract", "probe", "total"))]
    # every output present, with the metadata of a run; then the plan must be empty
    n_outputs, t_stub = create_outputs(work)
    plan = snakemake(work, "-n", "--quiet", "rules").out
    if "Nothing to be done" not in plan:
        raise SystemExit(f"outputs created, but a dry run still plans jobs:\n{plan}")
    runs = [snakemake(work) for _ in range(args.repeats)]  # the real thing, not -n
    for run in runs:
        if "Nothing to be done" not in run.out or "missing provenance" in run.out:
            raise SystemExit(f"the rerun did something, or lacked metadata:\n{run.out}")
    noop = sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]  # the median run
    result = {
        "videos": args.videos,
        "shard_size": args.shard_size,
        "jobs_planned": int(next((j.split()[-1] for j in jobs if j.startswith("total")), "0")),
        "manifest_s": round(manifest.seconds, 2),
        "dry_run_s": round(dry.seconds, 2),
        "dry_run_cpu_s": round(dry.cpu, 2),
        "dry_run_peak_rss_mib": round(dry.rss_mib, 1),
        "outputs_created": n_outputs,
        "stub_run_s": round(t_stub, 2),
        "noop_rerun_s": round(noop.seconds, 2),
        "noop_rerun_cpu_s": round(noop.cpu, 2),
        "noop_rerun_runs_s": sorted(round(r.seconds, 2) for r in runs),
        "noop_peak_rss_mib": round(noop.rss_mib, 1),
        "load_average_1min": round(os.getloadavg()[0], 1),
        "job_summary": sorted(set(jobs)),
        "noop_output": [line for line in noop.out.strip().splitlines() if "Nothing to be done" in line],
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "dag.json").write_text(json.dumps(result, indent=2))
    print(f"{'measure':<28}{'value':>12}")
    for key in ("videos", "jobs_planned", "manifest_s", "dry_run_s", "dry_run_cpu_s", "dry_run_peak_rss_mib",
                "outputs_created", "stub_run_s", "noop_rerun_s", "noop_rerun_cpu_s", "noop_peak_rss_mib",
                "load_average_1min"):
        print(f"{key:<28}{result[key]:>12}")
    print("jobs:", "; ".join(result["job_summary"]))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print("workdir:", work)


if __name__ == "__main__":
    main()
