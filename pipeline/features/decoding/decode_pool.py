"""Decode worker processes that feed the encoders of an extraction job, ahead of them and in order.

`DecodePool(workers, prefetch)` decodes videos in `workers` processes (0 = one background thread of
the calling process), each video once, while the models run. At most workers + prefetch (default
2 x workers) videos are in flight; `result` returns them in the order they were submitted, so what
the encoders see (order of videos, bytes, batches) is identical whatever the worker count.
`decode_worker_count` says how many workers a job gets (`features.decode_workers`, else the job's
threads).

* Start method: `forkserver` (`spawn` where there is none). Never `fork`: the parent has torch's
  OpenMP pool running and possibly CUDA initialised, and a forked child of such a process can
  deadlock or fail on its first CUDA / OpenMP call. The fork server is a fresh process that imports
  the decode stack (this module, decode, torch, decord, av) once and forks the workers from there,
  so a worker starts in milliseconds and shares the imported pages copy-on-write (measured here
  after decoding 720p clips into 224-px chunks: ~100 MB private memory per worker; with spawn ~4 s
  of imports and ~360 MB private memory per worker). The pool is started from a helper thread
  before the models load, so the fork server's imports overlap the model loading.
* Each worker decodes with the extraction's `decode.VideoSampler` (the same settings and frame sizes,
  `VideoSampler.decode`), with torch at 1 thread and the decoder at max(1, threads // workers)
  threads. The workers import the decode stack only, never the encoders' libraries (transformers,
  torchvision), so they start quickly.
* Decoded frames come back through shared memory: one block of `in-flight` slots, each sized for
  the largest possible output (max_keyframes key frames + max_seconds chunks); the worker copies
  its uint8 arrays into its slot and returns only shapes + metadata; this process copies them once,
  from the slot straight into the batch's staging buffers (`result(hold=True)`, then
  `staging.BatchStage.add`), and frees the slot before submitting the next video. Passing an 80 MB
  decoded video (paper sizes: 16 chunks of 32 x 224 x 224 x 3) back through the pool's pipe cost the
  receiving process ~250 ms of CPU, through shared memory ~14 ms (measured on 2 CPU cores). The block is reserved with posix_fallocate when created; where
  /dev/shm is too small (e.g. a default 64 MB Docker container) the pool says so on stderr and
  returns arrays through the pipe instead (same results, slower). An output larger than a slot
  also goes through the pipe.
* Known limit: staging a decoded video (one copy, slot -> batch buffer) and writing the store run
  on the extraction process's one thread, serially with the encoders;
  at many workers per GPU that thread, not the decoders, may become the limit (`decode_wait_s` near
  0 in the timings says so). On 2 cores with the encoders stubbed it is ~5 ms of CPU per 21 MB
  tiny-preset video (plus the stub's CRC) against ~0.5 s in a decode worker
  (`benchmarks/bench_decode_pool.py`).
* A worker that dies (a decoder crash, e.g. a segfault on a broken file) loses every video in
  flight: the pool restarts and decodes those again one at a time, in order; a video that kills
  its worker again goes to the failures table ("the decoder process died ..."), the others are
  kept, and the shard carries on in parallel (`DecodePool._recover`).
* Each video has a deadline per backend (`core.deadline.DecodeDeadline`, `sampling.decode_deadline`): a
  worker writes into a small shared table which task it runs, since when, which backend, and the
  deadline (`base_s` until the header is read, then scaled by the video's duration, frame rate and
  size). While this process waits for a result it checks that table; a worker past its task's
  deadline (a decoder looping forever on a damaged stream) is killed (SIGKILL). That video is then
  decoded with the fallback backend (`sampling.fallback_backend`), under a deadline of its own; when
  the fallback times out too (or the header read itself hung, or there is no fallback) the video goes
  to the failures table with each backend and "timed out", and the next video goes on. It is never
  given to the backend that timed out again. The other videos in flight are lost with the pool and
  decoded again as after a crash (above). With 0 workers (one thread) there is no deadline: a thread
  cannot be killed.
* A worker exits by itself when the extraction process dies (a watchdog thread notices that it or
  the worker's parent is gone), so `kill -9` of an extraction leaves no decoder running; the shared-memory block is then removed by
  multiprocessing's resource tracker, or, when the tracker was killed too (kill -9 of the process
  group), by the next extraction on the machine (`remove_stale_shm`: blocks are named
  lmmvqa-<pid>-<random>, and those of dead pids are unlinked).
"""
from __future__ import annotations

import dataclasses
import errno
import multiprocessing
import os
import secrets
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path

import numpy as np
import torch

from pipeline.core import deadline
from pipeline.core.errors import UserError
from pipeline.features.decoding.decode import VideoSampler
from pipeline.features.decoding.sampling import DecodedVideo

# modules a fork server imports once for all decode workers (see "Start method" above)
WORKER_PRELOAD = ["pipeline.features.decoding.decode_pool", "pipeline.features.decoding.decode", "torch", "decord", "av"]


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def decode_worker_count(features, threads: int | None = None, decode_workers: int | None = None) -> int:
    """Decode worker processes: `decode_workers`, else `features.decode_workers` (the resolved
    `FeatureSettings`), else the job's `threads` (`--threads`, else the config's `threads`: the caller
    passes them), else the CPUs available to this process."""
    if decode_workers is None:
        decode_workers = features.decode_workers
    if decode_workers is None:
        decode_workers = int(threads or 0) or available_cpus()
    if int(decode_workers) < 0:
        raise UserError(f"decode workers must be >= 0, got {decode_workers}")
    return int(decode_workers)


def _slot_bytes(sampler: VideoSampler) -> int:
    """Bytes of the largest decoded output (max_keyframes key frames + max_seconds chunks), 64-aligned."""
    return -(-sampler.max_bytes // 64) * 64


_WORKER: dict = {}
# the shared table of running tasks: per slot, these fields (doubles); backend -1 = reading the header
STATUS_FIELDS = ("serial", "pid", "started", "deadline_s", "backend")
POLL_S = 0.25  # how often a waiting result() checks the deadlines


def _worker_init(main_pid: int, status=None) -> None:
    """Decode-worker start: torch at one thread, the shared task table, and a watchdog that ends the
    worker when the extraction process (or the fork server between them) is gone."""
    torch.set_num_threads(1)
    _WORKER["status"] = status
    deadline.exit_when_orphaned(main_pid)


def _deadline_callbacks(sampler: VideoSampler, slot: int | None, serial: int) -> dict:
    """Write this task into the shared table (see STATUS_FIELDS) and return the decode callbacks that
    keep its deadline and backend up to date there; {} without a table or a deadline."""
    status = _WORKER.get("status")
    if status is None or slot is None or sampler.deadline is None:
        return {}
    i = slot * len(STATUS_FIELDS)
    status[i + 1], status[i + 2] = os.getpid(), time.monotonic()
    status[i + 3], status[i + 4] = sampler.deadline.base_s, -1
    status[i] = serial  # last: the row is complete once the parent sees this task's serial
    backends = [sampler.backend, sampler.fallback]

    def on_facts(facts):
        status[i + 3] = sampler.deadline.seconds(**facts)

    def on_backend(name):
        status[i + 4] = backends.index(name)

    return {"on_facts": on_facts, "on_backend": on_backend}


def _worker_ready() -> int:
    return os.getpid()


def _worker_shm(name: str):
    if _WORKER.get("shm_name") != name:
        _WORKER["shm"] = shared_memory.SharedMemory(name=name)
        _WORKER["shm_name"] = name
    return _WORKER["shm"]


def _worker_decode(sampler: VideoSampler, path: str, shm_name: str | None, offset: int, capacity: int,
                   slot: int | None = None, serial: int = 0):
    """-> (payload, error, seconds, cpu seconds of the worker incl. decoder threads); payload
    ("shm", kf_shape, ch_shape, meta, chunk_ids) with the frames in the slot at `offset`, ("inline",
    DecodedVideo), or None when the video failed (error = message)."""
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        d = sampler.decode(path, **_deadline_callbacks(sampler, slot, serial))
    except Exception as exc:  # DecodeError and anything a broken file provokes in a decoder
        return None, f"{type(exc).__name__}: {exc}", time.perf_counter() - t0, time.process_time() - c0
    dt = time.perf_counter() - t0
    n_kf, n_ch = d.keyframes.nbytes, d.chunks.nbytes
    if shm_name is None or n_kf + n_ch > capacity or d.keyframes.dtype != np.uint8 or d.chunks.dtype != np.uint8:
        return ("inline", d), None, dt, time.process_time() - c0
    buf = _worker_shm(shm_name).buf
    np.frombuffer(buf, np.uint8, n_kf, offset).reshape(d.keyframes.shape)[...] = d.keyframes
    np.frombuffer(buf, np.uint8, n_ch, offset + n_kf).reshape(d.chunks.shape)[...] = d.chunks
    return ("shm", d.keyframes.shape, d.chunks.shape, d.meta, d.chunk_ids), None, dt, time.process_time() - c0


def _decode_here(sampler: VideoSampler, path: str):
    t0 = time.perf_counter()
    try:
        return ("inline", sampler.decode(path)), None, time.perf_counter() - t0, None
    except Exception as exc:  # DecodeError and anything a broken file provokes in a decoder
        return None, f"{type(exc).__name__}: {exc}", time.perf_counter() - t0, None


SHM_PREFIX = "lmmvqa-"
SHM_DIR = Path("/dev/shm")


def remove_stale_shm(folder: Path = SHM_DIR) -> list[str]:
    """Unlink the shared-memory blocks of extraction processes that no longer run (named
    lmmvqa-<pid>-<random>). A kill -9 of the whole process group (Snakemake's, a job's) takes the
    resource tracker with it, which would otherwise leave the block in /dev/shm until reboot."""
    removed = []
    if not folder.is_dir():
        return removed
    for f in folder.glob(f"{SHM_PREFIX}*"):
        try:
            pid = int(f.name[len(SHM_PREFIX):].split("-")[0])
            os.kill(pid, 0)
        except ValueError:
            continue
        except ProcessLookupError:
            try:
                f.unlink()
                removed.append(f.name)
            except OSError:  # another user's, or gone meanwhile
                pass
        except PermissionError:  # alive, another user's
            continue
    return removed


def _reserve_shm(nbytes: int):
    """A shared-memory block of `nbytes` with its pages reserved (posix_fallocate), or None (and a
    line on stderr) where /dev/shm cannot hold it."""
    remove_stale_shm()
    try:
        shm = shared_memory.SharedMemory(name=f"{SHM_PREFIX}{os.getpid()}-{secrets.token_hex(4)}", create=True,
                                         size=nbytes)
    except OSError as exc:
        print(f"decode workers: no shared memory ({exc}); decoded frames go through the pipe", file=sys.stderr)
        return None
    fd = getattr(shm, "_fd", -1)
    if fd >= 0 and hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, nbytes)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
                shm.close()
                shm.unlink()
                print(f"decode workers: shared memory cannot hold {nbytes / 2**20:.0f} MB ({exc}); decoded frames "
                      "go through the pipe (slower): give the job a larger /dev/shm or fewer decode_workers",
                      file=sys.stderr)
                return None
            # EOPNOTSUPP / EINVAL: the file system cannot reserve; pages are then allocated on write
    return shm


@dataclass
class _Task:
    path: str
    slot: int | None
    future: object = None
    done: tuple | None = None  # the worker's answer once known (set by result or crash recovery)
    sampler: VideoSampler | None = None  # this attempt's, when not the pool's (the fallback after a timeout)
    serial: int = 0  # this attempt's number in the shared task table
    timed_out: tuple | None = None  # (backend index, note) once this attempt's worker was killed at its deadline
    notes: list = field(default_factory=list)  # the attempts that timed out before this one


class DecodePool:
    """Decodes videos ahead of the encoders, `workers` processes (0: one thread of this process),
    at most `in_flight` videos decoding or decoded-and-waiting; `result` returns them in the order
    they were submitted. Start it before loading the models (the workers start meanwhile), then
    `start(sampler)`, then `submit(path)` / `result(task)` (oldest first); `close()` in all cases."""

    def __init__(self, workers: int, prefetch: int | None = None, start_method: str | None = None):
        self.workers = int(workers)
        self.in_flight = self.workers + (max(1, self.workers) if prefetch is None else max(1, int(prefetch)))
        self.shm = None
        self.slot = 0
        self.cpu_s: float | None = 0.0 if self.workers else None  # decode CPU seconds of the workers
        self.free: deque[int] = deque()
        self.outstanding: deque[_Task] = deque()  # submitted, not yet returned by result(), in order
        self.crashes = 0
        self.timeouts = 0  # videos that went to the failures table because every backend timed out
        self.start_method = None
        self.status = None  # the shared task table (STATUS_FIELDS per slot)
        self._serial = 0
        if self.workers:
            self.start_method = start_method or deadline.start_method()
            ctx = multiprocessing.get_context(self.start_method)
            self.status = ctx.RawArray("d", len(STATUS_FIELDS) * self.in_flight)
            self.pool = self._new_pool()
        else:
            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
        self._warm: list = []
        self._launch_error: BaseException | None = None
        # Starting the processes blocks until the fork server has imported the decode stack (seconds):
        # a helper thread does it, so it overlaps the model loading of this thread.
        self._launcher = threading.Thread(target=self._launch, name="decode-pool-launch", daemon=True)
        self._launcher.start()

    def _new_pool(self) -> ProcessPoolExecutor:
        # Workers must share this process's resource tracker (spawn and forkserver pass it on; a plain
        # fork only if it runs already): a tracker of a worker's own would unlink the shared-memory
        # block when that worker dies.
        resource_tracker.ensure_running()
        ctx = multiprocessing.get_context(self.start_method)
        if self.start_method == "forkserver":
            ctx.set_forkserver_preload(WORKER_PRELOAD)
        return ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_worker_init,
                                   initargs=(os.getpid(), self.status))

    def _launch(self) -> None:
        try:
            if self.workers:  # one task per worker makes the executor start every process now
                self._warm = [self.pool.submit(_worker_ready) for _ in range(self.workers)]
        except BaseException as exc:  # re-raised by start()
            self._launch_error = exc

    def start(self, sampler: VideoSampler) -> None:
        """Decode with `sampler` (the extraction's, `Extractor.sampler`); the workers split its threads."""
        self._launcher.join()
        if self._launch_error is not None:
            raise RuntimeError(f"could not start {self.workers} decode workers: {self._launch_error}") from None
        self.sampler = sampler
        if not self.workers:
            return
        self.sampler = dataclasses.replace(sampler, threads=max(1, (sampler.threads or available_cpus()) // self.workers))
        self.slot = _slot_bytes(sampler)
        self.shm = _reserve_shm(self.slot * self.in_flight)
        self.free = deque(range(self.in_flight))

    def worker_pids(self) -> list[int]:
        """Process ids of the decode workers (none for the in-process thread)."""
        for f in self._warm:
            f.result()
        return sorted(getattr(self.pool, "_processes", None) or {}) if self.workers else []

    def _submit_task(self, task: "_Task"):
        shm_name = self.shm.name if self.shm is not None else None
        self._serial += 1
        task.serial, task.timed_out = self._serial, None
        return self.pool.submit(_worker_decode, task.sampler or self.sampler, task.path, shm_name,
                                task.slot * self.slot, self.slot, task.slot, task.serial)

    def _wait(self, future):
        """future.result(), checking the deadlines of every task in flight while waiting: a worker past
        its task's deadline is killed (the pool then breaks: BrokenProcessPool)."""
        while True:
            try:
                return future.result(timeout=POLL_S)
            except FutureTimeout:
                self._kill_overdue()

    def _kill_overdue(self) -> None:
        if self.status is None:
            return
        now, n = time.monotonic(), len(STATUS_FIELDS)
        for task in self.outstanding:
            f = task.future
            if task.done is not None or task.timed_out or f is None or f.done():
                continue
            row = self.status[task.slot * n:(task.slot + 1) * n]
            if int(row[0]) != task.serial:  # not started yet
                continue
            _, pid, started, limit, backend = row
            if now - started <= limit:
                continue
            sampler = task.sampler or self.sampler
            name = "the stream header (pyav)" if backend < 0 else (sampler.backend, sampler.fallback)[int(backend)]
            task.timed_out = (int(backend), f"{name} timed out after {limit:.1f} s")
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:  # it ended meanwhile
                pass

    def _after_timeout(self, task: "_Task") -> None:
        """The task's attempt was killed at its deadline: the fallback backend next (never the same
        backend again), or a failure naming each backend that timed out."""
        backend, note = task.timed_out
        task.notes.append(note)
        task.timed_out = None
        sampler = task.sampler or self.sampler
        if backend == 0 and sampler.fallback and sampler.fallback != sampler.backend:
            task.sampler = dataclasses.replace(sampler, backend=sampler.fallback, fallback=None)
            return
        self.timeouts += 1
        task.done = (None, "DecodeError: " + "; ".join(task.notes) + " (the decode deadline, sampling.decode_deadline)",
                     0.0, None)

    def _new_pool_after_break(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = self._new_pool()

    def submit(self, path: str) -> "_Task":
        if not self.workers:
            task = _Task(path, None)
            task.future = self.pool.submit(_decode_here, self.sampler, path)
            return task
        task = _Task(path, self.free.popleft())  # never empty: at most in_flight tasks are outstanding
        self.outstanding.append(task)
        try:
            task.future = self._submit_task(task)
        except BrokenProcessPool:
            self._recover()
        return task

    def _recover(self) -> None:
        """A worker died (a decoder crash, e.g. a segfault on a broken file): every outstanding task is
        lost. Start a new pool and decode them again ONE AT A TIME, in order, so that a video that
        kills its worker again is identified and becomes a failure; then carry on in parallel."""
        for task in self.outstanding:  # keep what finished before the crash
            f = task.future
            if task.done is None and f is not None and f.done() and not f.cancelled() and f.exception() is None:
                task.done = f.result()
        self._new_pool_after_break()
        for task in self.outstanding:  # killed at their deadline: not suspects of a crash
            if task.done is None and task.timed_out:
                self._after_timeout(task)
        for task in self.outstanding:
            while task.done is None:
                task.future = self._submit_task(task)
                try:
                    task.done = self._wait(task.future)
                except BrokenProcessPool:
                    self._new_pool_after_break()
                    if task.timed_out:
                        self._after_timeout(task)
                        continue
                    self.crashes += 1
                    task.done = (None, "DecodeError: the decoder process died while decoding this video (a crash in "
                                       "the decoder, e.g. a segfault)", 0.0, None)

    def result(self, task: "_Task", hold: bool = False):
        """-> (DecodedVideo or None, error message or None, decode seconds), for the oldest task.
        hold=True: the frames are views on the task's shared-memory slot (no copy), valid until
        `release(task)`, which must follow before the next `submit` can have the slot."""
        slot = task.slot
        try:
            if task.done is None:
                try:
                    task.done = self._wait(task.future)
                except BrokenProcessPool:
                    self._recover()
            if self.workers:
                assert self.outstanding and self.outstanding[0] is task, "results are taken in submission order"
                self.outstanding.popleft()
            payload, error, dt, cpu = task.done
            if cpu is not None:
                self.cpu_s += cpu
            if payload is not None and task.notes:  # decoded by the fallback after a timeout: say so
                meta = payload[1].meta if payload[0] == "inline" else payload[3]
                meta["decode_retries"] = task.notes + list(meta.get("decode_retries") or [])
            if payload is None or payload[0] == "inline":
                return (payload[1] if payload else None), error, dt
            _, kf_shape, ch_shape, meta, chunk_ids = payload
            off = slot * self.slot
            n_kf, n_ch = int(np.prod(kf_shape)), int(np.prod(ch_shape))
            kf = np.frombuffer(self.shm.buf, np.uint8, n_kf, off).reshape(kf_shape)
            ch = np.frombuffer(self.shm.buf, np.uint8, n_ch, off + n_kf).reshape(ch_shape)
            if not hold:
                kf, ch = kf.copy(), ch.copy()
            return DecodedVideo(kf, ch, meta, chunk_ids), None, dt
        except BaseException:
            self.release(task)
            raise
        finally:
            if not hold:
                self.release(task)

    def release(self, task: "_Task") -> None:
        """Give the task's shared-memory slot back (after `result(task, hold=True)`)."""
        if task.slot is not None:
            self.free.append(task.slot)
            task.slot = None

    def close(self) -> None:
        self._launcher.join()
        if self.workers and any(t.done is None for t in self.outstanding):  # left early: do not wait for
            for proc in list((getattr(self.pool, "_processes", None) or {}).values()):  # a decode that may hang
                proc.kill()
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.shm is not None:
            try:
                self.shm.close()
            except BufferError:  # a view still referenced (e.g. by a traceback): unmapped at exit
                pass
            self.shm.unlink()
            self.shm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

