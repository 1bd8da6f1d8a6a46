"""The small workflow config the workflow-level tests share, and how they run Snakemake on it.

`MINI` is the demo made small: 10 generated videos in 2 folds and 3 shards, the default preset with
the demo's fragments sampling, a few training steps. `device: auto` makes the GPU stages ask for a
GPU (they run on the CPU here), so the one session-wide run of it (`shared_run` in conftest.py), every
job submitted through the SLURM profile to a fake SLURM, serves both tests/test_slurm.py (what was
submitted) and tests/test_workflow.py (what was produced, and what reruns when things change).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import fake_slurm
import yaml
from conftest import REPO

BIN = Path(sys.executable).parent

MINI = {
    "datasets": {
        "demo": {
            "format": "generic",
            "labels": "resources/demo/labels.csv",
            "videos": "resources/demo/videos",
            "generate": {"n_videos": 10, "seed": 3},
            "split": {"scheme": "kfold", "k": 2, "seed": 0},
        }
    },
    "sampling": {"max_keyframes": 2, "max_seconds": 2, "keyframe_mode": "fragments"},  # the demo's, small
    "features": {"shard_size": 4},
    "training": {"max_steps": 3, "batch_size": 4, "val_fraction": 0.2, "checkpoint_every": 2},
    "evaluation": {"bootstrap": 20},
    "experiments": {"demo": {"train": ["demo:train"], "test": ["demo:test"], "holdout_fold": 0}},
    "device": "auto",
}


def write_config(workdir: Path, cfg: dict) -> None:
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def planned_rules(workdir: Path) -> dict[str, int]:
    """rule -> job count of a dry run (empty when everything is up to date)."""
    out = snakemake(workdir, "-n", "--quiet", "rules").stdout
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("job", "total"):
            counts[parts[0]] = int(parts[1])
    return counts


@dataclass
class SlurmRun:
    work: Path  # the workflow's directory
    state: Path  # the fake SLURM's records (calls.jsonl, jobs/)
    proc: subprocess.CompletedProcess

    def save(self, path: Path) -> None:
        """For the other test workers of the session (conftest.py `shared_run`)."""
        p = self.proc
        path.write_text(json.dumps({"work": str(self.work), "state": str(self.state), "args": p.args,
                                    "returncode": p.returncode, "stdout": p.stdout, "stderr": p.stderr}))

    @classmethod
    def load(cls, path: Path) -> "SlurmRun":
        d = json.loads(path.read_text())
        proc = subprocess.CompletedProcess(d["args"], d["returncode"], d["stdout"], d["stderr"])
        return cls(Path(d["work"]), Path(d["state"]), proc)


def run_through_slurm(work: Path, state: Path) -> SlurmRun:
    """MINI in `work`, submitted job by job through profiles/slurm to the fake SLURM recording in `state`."""
    write_config(work, MINI)
    fake_slurm.install(state / "bin", state)
    env = dict(os.environ, PATH=f"{state / 'bin'}:{BIN}:{os.environ['PATH']}")
    env.pop("SLURM_JOB_ID", None)
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
           "--configfile", str(work / "config.yaml"), "--workflow-profile", str(REPO / "profiles/slurm"),
           "--jobs", "2", "--latency-wait", "5", "--seconds-between-status-checks", "1",
           "--slurm-init-seconds-before-status-checks", "1", "--slurm-keep-successful-logs", "--retries", "0"]
    # 14 jobs, each a Snakemake process of its own
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    return SlurmRun(work, state, proc)
