"""`lmmvqa launch --gpus N -- train ...`: run a command on N GPUs of this machine.

It takes N GPU locks (pipeline/core/devices.py), sets `CUDA_VISIBLE_DEVICES` to those GPUs and starts
`torch.distributed.run` (torchrun) with N processes, one per GPU (DDP; see pipeline/training/train.py). With
N <= 1 it runs the command in this process.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

from pipeline.cli import main as run_command
from pipeline.core.devices import acquire, job_log, visible_gpus
from pipeline.core.errors import UserError


def torchrun_command(n: int, argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
            "-m", "pipeline.cli", *argv]


def launch(n: int, argv: list[str], gpus: list[str] | None = None, directory: str | Path | None = None,
           run: Callable[..., int] = subprocess.call, wait: bool = True) -> int:
    """Run the `lmmvqa` command `argv` on `n` GPUs of this machine (see the module docstring)."""
    argv = argv[1:] if argv[:1] == ["--"] else argv
    if not argv:
        raise UserError("launch: no command given (lmmvqa launch --gpus N -- train ...)")
    if n <= 1:
        return run_command(argv)
    if argv[0] != "train":
        raise UserError(f"launch --gpus {n}: only `train` runs on several GPUs (got `{argv[0]}`)")
    gpus = visible_gpus() if gpus is None else gpus
    if len(gpus) < n:
        raise UserError(f"launch --gpus {n}: only {len(gpus)} GPU(s) visible")
    lease = acquire(n, gpus, directory, wait=wait, log=job_log)
    parent = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    visible = ",".join(parent[i] if i < len(parent) else str(i) for i in lease.indices)
    job_log(f"launch: {n} processes on GPUs {visible} ({', '.join(lease.ids)})")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=visible)
    try:
        return int(run(torchrun_command(n, argv), env=env))
    finally:
        lease.release()


def configure_parser(parser) -> None:
    parser.add_argument("--gpus", type=int, default=1,
                        help="GPUs for the command: >1 runs it under torchrun, one process per GPU (train only)")
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="-- the lmmvqa command and its arguments")


def main(args) -> int:
    return launch(args.gpus, list(args.argv))
