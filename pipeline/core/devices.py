"""Device resolution, and GPU assignment for jobs that share one machine.

Snakemake limits how many GPU jobs run at once (`--resources gpu=N`, see profiles/default), but it
does not say *which* GPU a job gets: every job asking for `cuda` would land on GPU 0. So each
`lmmvqa` command whose `--device` is `cuda` (no index) or `auto` takes a GPU of its own here:

- one lock file per GPU in a per-user folder of the machine's temp dir (`LMMVQA_GPU_LOCK_DIR`
  overrides), named by the GPU's UUID, held with `fcntl.flock` for the life of the process (the
  kernel releases it when the process ends, however it ends: no stale locks after kill -9);
- the first GPU whose lock is free wins; `cuda` becomes `cuda:<index>`; the choice goes to stderr,
  i.e. into the job's log. When every GPU is taken the job waits for one (it never shares a GPU).
- With one visible GPU (a one-GPU box, or a SLURM job that got one GPU) there is nothing to choose:
  `cuda:0`, no lock. With none, `auto` becomes `cpu`.

`CUDA_VISIBLE_DEVICES` is respected: indices are positions in the visible list (as in PyTorch), and
the locks are keyed by UUID, so jobs whose visible lists differ (SLURM allocations on one node) never
block each other on the same index. An explicit `cuda:N` is used as given, without a lock.

`lmmvqa launch` (pipeline/launch.py) takes N of these locks to run training on N GPUs.
"""
from __future__ import annotations

import fcntl
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline.core.errors import UserError

LOCK_DIR_ENV = "LMMVQA_GPU_LOCK_DIR"
_HELD: list["GpuLease"] = []  # leases of this process, kept open until it exits


def resolve_device(device=None):
    """The torch.device of a `device` setting: `auto` (or None) is `cuda` when CUDA is available,
    else `cpu`; `cuda` / `cuda:N` where CUDA is not available is a UserError; anything else
    (`cpu`, `cuda:N`, a torch.device) as given. Every stage resolves devices here."""
    import torch  # heavy: this module is imported by `lmmvqa` before any stage needs torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{device}' requested but CUDA is not available")
    return torch.device(device)


def lock_dir() -> Path:
    path = os.environ.get(LOCK_DIR_ENV) or str(Path(tempfile.gettempdir()) / f"lmmvqa-gpu-locks-{os.getuid()}")
    return Path(path)


def visible_gpus() -> list[str]:
    """One id per visible CUDA device, in PyTorch's index order: `GPU-<uuid>` where the driver gives
    one, else the entry of CUDA_VISIBLE_DEVICES (or the index)."""
    import torch

    if not torch.cuda.is_available():
        return []
    parent = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    ids = []
    for i in range(torch.cuda.device_count()):
        uuid = getattr(torch.cuda.get_device_properties(i), "uuid", None)
        ids.append(f"GPU-{uuid}" if uuid else (parent[i] if i < len(parent) else str(i)))
    return ids


@dataclass
class GpuLease:
    """GPUs held by this process: their visible indices, ids, and the open locked files."""
    indices: list[int]
    ids: list[str]
    files: list = field(default_factory=list, repr=False)

    def release(self) -> None:
        for f in self.files:
            f.close()  # closing the file drops its flock
        self.files = []
        if self in _HELD:
            _HELD.remove(self)


def _lock_name(gpu_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in gpu_id) + ".lock"


def acquire(n: int, gpus: list[str], directory: str | Path | None = None, wait: bool = True, poll: float = 1.0,
            log: Callable[[str], None] | None = None) -> GpuLease:
    """Lock `n` of `gpus` (ids by visible index); wait for free ones when `wait`, else raise UserError."""
    if n < 1 or n > len(gpus):
        raise UserError(f"asked for {n} GPU(s) but {len(gpus)} are visible")
    folder = Path(directory) if directory is not None else lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        lease = GpuLease([], [])
        for index, gpu_id in enumerate(gpus):
            f = open(folder / _lock_name(gpu_id), "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
            f.flush()
            lease.indices.append(index)
            lease.ids.append(gpu_id)
            lease.files.append(f)
            if len(lease.indices) == n:
                _HELD.append(lease)
                return lease
        lease.release()
        if not wait:
            raise UserError(f"no {n} free GPU(s) among {len(gpus)}: the others are held by other jobs "
                            f"(locks in {folder})")
        if not waited and log:
            log(f"waiting for {n} free GPU(s): all {len(gpus)} are held by other jobs (locks in {folder})")
        waited = True
        time.sleep(poll)


def job_log(msg: str) -> None:
    print(f"lmmvqa: {msg}", file=sys.stderr, flush=True)


def assign_device(device: str | None, gpus: list[str] | None = None, directory: str | Path | None = None,
                  wait: bool = True, log: Callable[[str], None] = job_log) -> str | None:
    """The device this process should use for `device` (see the module docstring)."""
    if device not in ("cuda", "auto") or "LOCAL_RANK" in os.environ:  # torchrun ranks use their local rank
        return device
    gpus = visible_gpus() if gpus is None else gpus
    if not gpus:
        return "cpu" if device == "auto" else device  # `cuda` without a GPU: the stage reports it
    if len(gpus) == 1:
        return "cuda:0"
    lease = acquire(1, gpus, directory, wait=wait, log=log)
    chosen = f"cuda:{lease.indices[0]}"
    log(f"device {device} -> {chosen} ({lease.ids[0]}; {len(gpus)} visible, lock in {directory or lock_dir()})")
    return chosen
