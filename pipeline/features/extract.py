"""`lmmvqa extract`: decode each video of one manifest shard ONCE, encode key frames (CLIP) and
one-second chunks (SlowFast), write one Zarr feature store (see pipeline/features/store_writer.py).

    lmmvqa extract --config C --dataset D --manifest results/manifest/D.csv --videos DIR --shard N \\
                   --out cache/features/D/<settings>/shard-0000N.zarr [--device cpu|cuda|auto] [--threads T]
                   [--decode-workers N]

* Models are loaded once per shard (`encoders.load_vision` / `load_motion` from the resolved model
  specs), on `--device` (default: the config's `device`), fp32 on CPU, fp16 on CUDA unless the spec
  sets `dtype`.
* Videos are decoded by `decode.sample_video` (decord, then the fallback backend) in a pool of
  `features.decode_workers` worker PROCESSES (default: the job's threads, `--threads`; 0 = one
  background thread of this process), each video once, while the models run. At most
  workers + prefetch (default 2 x workers) videos are in flight; results are consumed in manifest
  order, so the store (order of videos, bytes of the features, batches of the forward passes) is
  identical whatever the worker count. See "Decode workers" below.
* Key frames / chunks of consecutive videos are batched together for the forward passes
  (`features.batch_size` frames or chunks per pass): each video is copied, as it arrives, into the
  host staging buffers of the next batch (`BatchStage`, reused batch after batch), page-locked
  (pinned) when the device is CUDA, so the encoders' host-to-device copies
  (`.to(device, non_blocking=True)`, one per forward pass) are asynchronous DMA.
* A video that cannot be decoded (corrupt, truncated, empty, not a video, missing) is written to the
  store's failures table with the message (the worker process catches the error and returns it);
  the shard still completes.
* The store is written to a temporary sibling folder and renamed when complete (StoreWriter).
  Attributes: dataset, shard, vision {source, config, tokens, width, ...}, motion {source, config,
  dim, ...}, sampling (+ key_size, chunk_size), settings_hash, code_version, device, per-video
  metadata (decode metadata + decode_s, vision_s, motion_s) and total timings.
* `CODE_VERSION` is `versions.code_version("extract")`, the hash of the extraction code, the value the
  workflow passes in `params:`.

`Extractor` is the reusable part (models + sampling settings): `Extractor(cfg, device, threads)`
then `.features(path) -> (spatial [K, T, W] float32, motion [S, M] float32, meta)`; `lmmvqa score`
uses it for videos outside a manifest.

Decode workers
--------------
* Start method: `forkserver` (`spawn` where there is none). Never `fork`: the parent has torch's
  OpenMP pool running and possibly CUDA initialised, and a forked child of such a process can
  deadlock or fail on its first CUDA / OpenMP call. The fork server is a fresh process that imports
  the decode stack (this module, decode, torch, decord, av) once and forks the workers from there,
  so a worker starts in milliseconds and shares the imported pages copy-on-write (measured here
  after decoding 720p clips into 224-px chunks: ~100 MB private memory per worker; with spawn ~4 s
  of imports and ~360 MB private memory per worker). The pool is started from a helper thread
  before the models load, so the fork server's imports overlap the model loading.
* Each worker rebuilds a model-less `Extractor` from `Extractor.decode_state()` and calls the same
  `Extractor.decode`, with torch at 1 thread and the decoder at max(1, threads // workers) threads.
* Decoded frames come back through shared memory: one block of `in-flight` slots, each sized for
  the largest possible output (max_keyframes key frames + max_seconds chunks); the worker copies
  its uint8 arrays into its slot and returns only shapes + metadata; this process copies them once,
  from the slot straight into the batch's staging buffers (`result(hold=True)`, `BatchStage.add`),
  and frees the slot before submitting the next video. Measured here: passing an 80 MB decoded video (paper sizes: 16 chunks of
  32 x 224 x 224 x 3) back through the pool's pipe costs this process ~250 ms of CPU per video,
  through shared memory ~14 ms. The block is reserved with posix_fallocate when created; where
  /dev/shm is too small (e.g. a default 64 MB Docker container) the pool says so on stderr and
  returns arrays through the pipe instead (same results, slower). An output larger than a slot
  also goes through the pipe.
* Known limit: staging a decoded video (one copy, slot -> batch buffer; two copies before
  `BatchStage`) and writing the store run on this process's one thread, serially with the encoders;
  at many workers per GPU that thread, not the decoders, may become the limit (`decode_wait_s` near
  0 in the timings says so). On 2 cores with the encoders stubbed it is ~5 ms of CPU per 21 MB
  tiny-preset video (plus the stub's CRC) against ~0.5 s in a decode worker
  (`benchmarks/bench_decode_pool.py`).
* A worker that dies (a decoder crash, e.g. a segfault on a broken file) loses every video in
  flight: the pool restarts and decodes those again one at a time, in order; a video that kills
  its worker again goes to the failures table ("the decoder process died ..."), the others are
  kept, and the shard carries on in parallel (`DecodePool._recover`).
* A worker exits by itself when this process dies (a watchdog thread notices that this process or
  its parent is gone), so
  `kill -9` of an extraction leaves no decoder running; the shared-memory block is then removed by
  multiprocessing's resource tracker, or, when the tracker was killed too (kill -9 of the process
  group), by the next extraction on the machine (`remove_stale_shm`: blocks are named
  lmmvqa-<pid>-<random>, and those of dead pids are unlinked).
"""
from __future__ import annotations

import argparse
import errno
import multiprocessing
import os
import secrets
import sys
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from pipeline.cli_args import add_config_arg, add_device_arg, add_no_progress_arg
from pipeline.core.config import load_config
from pipeline.core.errors import UserError
from pipeline.core.specs import SAMPLING_KEYS, feature_settings_hash, model_spec
from pipeline.core.versions import code_version
from pipeline.features import encoders
from pipeline.features.decode import DecodedVideo, sample_video
from pipeline.features.store_writer import StoreWriter
from pipeline.ingest.manifest import read_manifest

CODE_VERSION = code_version("extract")
# modules a fork-server imports once for all decode workers (see "Decode workers" above)
WORKER_PRELOAD = ["pipeline.features.extract", "pipeline.features.decode", "torch", "decord", "av"]


def host_buffer(shape, device) -> np.ndarray:
    """uint8 host staging array of `shape` for a transfer to `device`: page-locked (pinned) memory
    when the device is CUDA, so `.to(device, non_blocking=True)` from it is an asynchronous DMA copy;
    ordinary memory otherwise. The array owns its torch storage (the caching host allocator reuses
    freed pinned blocks)."""
    pin = torch.device(device).type == "cuda"
    return torch.empty(tuple(int(n) for n in shape), dtype=torch.uint8, pin_memory=pin).numpy()


def stack_host(arrays: list[np.ndarray], device) -> np.ndarray:
    """Concatenate uint8 arrays (axis 0) straight into one `host_buffer` for `device`: one copy."""
    first = arrays[0]
    out = host_buffer((sum(len(a) for a in arrays), *first.shape[1:]), device)
    np.concatenate(arrays, out=out)
    return out


class BatchStage:
    """The next forward-pass batch, gathered in two host staging buffers (`host_buffer`: pinned on
    CUDA) as the decoded videos arrive in manifest order: `add` copies a video's key frames and chunks
    ONCE, from wherever the pool returned them (a view on its shared-memory slot, or an array) to the
    end of the batch, so the slot can be reused at once and `Extractor.encode_staged` reads the batch
    in place. The buffers are sized for a full batch (batch_size - 1 + the largest video) and reused
    batch after batch: the encoders return only when their input is consumed (the features are copied
    back to the host). Same batches, same bytes as `Extractor.encode` of the videos."""

    def __init__(self, ex: "Extractor"):
        self.device = ex.device
        self.room = (ex.batch_size - 1 + int(ex.sampling["max_keyframes"]),
                     ex.batch_size - 1 + int(ex.sampling["max_seconds"]))
        self.kf = self.ch = None
        self.n_kf = self.n_ch = 0
        self.videos: list[tuple[str, dict, np.ndarray | None]] = []  # (id, meta, chunk_ids) per video
        self.counts: tuple[list[int], list[int]] = ([], [])

    def _put(self, buf, n: int, arr: np.ndarray, room: int):
        if buf is None or n + len(arr) > len(buf):  # first video, or an unforeseen size: a larger buffer
            if buf is not None and buf.shape[1:] != arr.shape[1:]:
                raise ValueError(f"decoded frames of shape {arr.shape[1:]} in a batch of {buf.shape[1:]}")
            grown = host_buffer((max(room, n + len(arr)), *arr.shape[1:]), self.device)
            if n:
                grown[:n] = buf[:n]
            buf = grown
        buf[n : n + len(arr)] = arr
        return buf

    def add(self, vid: str, d: DecodedVideo) -> None:
        self.kf = self._put(self.kf, self.n_kf, d.keyframes, self.room[0])
        self.ch = self._put(self.ch, self.n_ch, d.chunks, self.room[1])
        self.n_kf += len(d.keyframes)
        self.n_ch += len(d.chunks)
        self.counts[0].append(len(d.keyframes))
        self.counts[1].append(len(d.chunks))
        self.videos.append((vid, d.meta, d.chunk_ids))

    def full(self, batch_size: int) -> bool:
        return self.n_kf >= batch_size or self.n_ch >= batch_size

    def encode(self, ex: "Extractor"):
        """-> ([(id, meta, spatial, motion)], vision_s, motion_s) of the staged videos; empties the stage."""
        outs, vs, ms = ex.encode_staged(self.kf[: self.n_kf], self.ch[: self.n_ch], *self.counts,
                                        [ids for _, _, ids in self.videos])
        done = [(vid, meta, sp, mo) for (vid, meta, _), (sp, mo) in zip(self.videos, outs)]
        self.n_kf = self.n_ch = 0
        self.videos, self.counts = [], ([], [])
        return done, vs, ms


class Extractor:
    """Both encoders + the decode settings of a config; decode once, encode many."""

    def __init__(self, cfg: dict, device: str | None = None, threads: int | None = None):
        self.cfg = cfg
        threads = int(threads or cfg.get("threads") or 0)
        if threads > 0:
            torch.set_num_threads(threads)
        self.threads = threads
        self.device = encoders.resolve_device(device or cfg.get("device", "cpu"))
        s = cfg["sampling"]
        self.sampling = {k: s[k] for k in SAMPLING_KEYS}
        self.backend, self.fallback = s.get("backend", "decord"), s.get("fallback_backend", "pyav")
        self.batch_size = int(cfg["features"]["batch_size"])
        t0 = time.perf_counter()
        self.vision, self.vision_info = encoders.load_vision(model_spec(cfg, "vision"), self.device)
        self.motion, self.motion_info = encoders.load_motion(model_spec(cfg, "motion"), self.device,
                                                             slow_stride=self.sampling["slow_stride"])
        self.load_s = time.perf_counter() - t0
        self.key_size = int(self.vision_info["image_size"])
        self.chunk_size = int(self.motion_info["input_size"])

    @property
    def sampling_attrs(self) -> dict:
        return {**self.sampling, "key_size": self.key_size, "chunk_size": self.chunk_size,
                "backend": self.backend, "fallback_backend": self.fallback}

    def decode(self, path):
        s = self.sampling
        return sample_video(path, keyframe_fps=s["keyframe_fps"], max_keyframes=s["max_keyframes"],
                            chunk_frames=s["chunk_frames"], max_seconds=s["max_seconds"], key_size=self.key_size,
                            chunk_size=self.chunk_size, backend=self.backend, fallback=self.fallback,
                            threads=self.threads, keyframe_mode=s["keyframe_mode"],
                            fragment_grid=s["fragment_grid"])

    def encode(self, decoded: list) -> tuple[list[tuple[np.ndarray, np.ndarray]], float, float]:
        """Encode several decoded videos in shared batches -> ([(spatial, motion)], vision_s, motion_s)."""
        kf = stack_host([d.keyframes for d in decoded], self.device)  # pinned on CUDA
        ch = stack_host([d.chunks for d in decoded], self.device)
        return self.encode_staged(kf, ch, [len(d.keyframes) for d in decoded], [len(d.chunks) for d in decoded],
                                  [d.chunk_ids for d in decoded])

    def encode_staged(self, kf: np.ndarray, ch: np.ndarray, n_kf: list[int], n_ch: list[int],
                      chunk_ids: list) -> tuple[list[tuple[np.ndarray, np.ndarray]], float, float]:
        """`encode` of videos already staged one after the other in host buffers (`host_buffer`): key
        frames `kf`, chunks `ch`, `n_kf` / `n_ch` of them per video, and each video's chunk_ids."""
        t0 = time.perf_counter()
        spatial = encoders.encode_keyframes(self.vision, kf, self.device, self.batch_size)
        t1 = time.perf_counter()
        ids = np.concatenate(chunk_ids) if all(i is not None for i in chunk_ids) else None
        motion = encoders.encode_chunks(self.motion, ch, self.sampling["slow_stride"], self.device, self.batch_size,
                                        frame_ids=ids)
        t2 = time.perf_counter()
        kf_split, ch_split = np.cumsum(n_kf)[:-1], np.cumsum(n_ch)[:-1]
        return list(zip(np.split(spatial, kf_split), np.split(motion, ch_split))), t1 - t0, t2 - t1

    def decode_state(self) -> dict:
        """Everything but the models: what `decode` reads, picklable (sent to decode workers)."""
        return {k: v for k, v in vars(self).items() if not isinstance(v, torch.nn.Module)}

    @classmethod
    def decode_only(cls, state: dict) -> "Extractor":
        """A model-less Extractor from `decode_state()`: its `decode` is the same method."""
        obj = cls.__new__(cls)
        obj.__dict__.update(state)
        return obj

    def features(self, path) -> tuple[np.ndarray, np.ndarray, dict]:
        d = self.decode(path)
        outs, vs, ms = self.encode([d])
        spatial, motion = outs[0]
        return spatial, motion, dict(d.meta, vision_s=round(vs, 4), motion_s=round(ms, 4))


# ---------------------------------------------------------------------------------------------
# Decode workers (see "Decode workers" in the module docstring)
# ---------------------------------------------------------------------------------------------
def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def decode_worker_count(cfg: dict, threads: int | None = None, decode_workers: int | None = None) -> int:
    """Decode worker processes: `decode_workers`, else `features.decode_workers`, else the job's
    threads (`--threads`, else the config's `threads`, else the CPUs available to this process)."""
    if decode_workers is None:
        decode_workers = cfg["features"].get("decode_workers")
    if decode_workers is None:
        decode_workers = int(threads or cfg.get("threads") or 0) or available_cpus()
    if int(decode_workers) < 0:
        raise UserError(f"decode workers must be >= 0, got {decode_workers}")
    return int(decode_workers)


def _slot_bytes(ex: Extractor) -> int:
    """Bytes of the largest decoded output (max_keyframes key frames + max_seconds chunks), 64-aligned."""
    s = ex.sampling
    n = (int(s["max_keyframes"]) * ex.key_size**2 * 3
         + int(s["max_seconds"]) * int(s["chunk_frames"]) * ex.chunk_size**2 * 3)
    return -(-n // 64) * 64


_WORKER: dict = {}


def _worker_init(main_pid: int) -> None:
    """Decode-worker start: torch at one thread, and a watchdog that ends the worker when the
    extraction process (or the fork server between them) is gone."""
    torch.set_num_threads(1)
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(0.5)
            try:
                os.kill(main_pid, 0)
            except ProcessLookupError:
                os._exit(70)
            except PermissionError:  # the pid was reused by another user's process
                os._exit(70)
            if os.getppid() != parent:
                os._exit(70)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def _worker_ready() -> int:
    return os.getpid()


def _worker_shm(name: str):
    if _WORKER.get("shm_name") != name:
        _WORKER["shm"] = shared_memory.SharedMemory(name=name)
        _WORKER["shm_name"] = name
    return _WORKER["shm"]


def _worker_decode(state: dict, path: str, shm_name: str | None, offset: int, capacity: int):
    """-> (payload, error, seconds, cpu seconds of the worker incl. decoder threads); payload
    ("shm", kf_shape, ch_shape, meta, chunk_ids) with the frames in the slot at `offset`, ("inline",
    DecodedVideo), or None when the video failed (error = message)."""
    if _WORKER.get("state") != state:
        _WORKER.update(state=state, decoder=Extractor.decode_only(state))
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        d = _WORKER["decoder"].decode(path)
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


def _decode_here(ex: Extractor, path: str):
    t0 = time.perf_counter()
    try:
        return ("inline", ex.decode(path)), None, time.perf_counter() - t0, None
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


class DecodePool:
    """Decodes videos ahead of the encoders, `workers` processes (0: one thread of this process),
    at most `in_flight` videos decoding or decoded-and-waiting; `result` returns them in the order
    they were submitted. Start it before loading the models (the workers start meanwhile), then
    `start(extractor)`, then `submit(path)` / `result(task)` (oldest first); `close()` in all cases."""

    def __init__(self, workers: int, prefetch: int | None = None, start_method: str | None = None):
        self.workers = int(workers)
        self.in_flight = self.workers + (max(1, self.workers) if prefetch is None else max(1, int(prefetch)))
        self.shm = None
        self.slot = 0
        self.cpu_s: float | None = 0.0 if self.workers else None  # decode CPU seconds of the workers
        self.free: deque[int] = deque()
        self.outstanding: deque[_Task] = deque()  # submitted, not yet returned by result(), in order
        self.crashes = 0
        self.start_method = None
        if self.workers:
            methods = multiprocessing.get_all_start_methods()
            self.start_method = start_method or ("forkserver" if "forkserver" in methods else "spawn")
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
        return ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_worker_init, initargs=(os.getpid(),))

    def _launch(self) -> None:
        try:
            if self.workers:  # one task per worker makes the executor start every process now
                self._warm = [self.pool.submit(_worker_ready) for _ in range(self.workers)]
        except BaseException as exc:  # re-raised by start()
            self._launch_error = exc

    def start(self, ex: Extractor) -> None:
        self._launcher.join()
        if self._launch_error is not None:
            raise RuntimeError(f"could not start {self.workers} decode workers: {self._launch_error}") from None
        self.ex = ex
        if not self.workers:
            return
        state = ex.decode_state()
        state["threads"] = max(1, (ex.threads or available_cpus()) // self.workers)
        self.state = state
        self.slot = _slot_bytes(ex)
        self.shm = _reserve_shm(self.slot * self.in_flight)
        self.free = deque(range(self.in_flight))

    def worker_pids(self) -> list[int]:
        """Process ids of the decode workers (none for the in-process thread)."""
        for f in self._warm:
            f.result()
        return sorted(getattr(self.pool, "_processes", None) or {}) if self.workers else []

    def _submit_task(self, task: "_Task"):
        shm_name = self.shm.name if self.shm is not None else None
        return self.pool.submit(_worker_decode, self.state, task.path, shm_name, task.slot * self.slot, self.slot)

    def submit(self, path: str) -> "_Task":
        if not self.workers:
            task = _Task(path, None)
            task.future = self.pool.submit(_decode_here, self.ex, path)
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
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = self._new_pool()
        for task in self.outstanding:
            if task.done is not None:
                continue
            try:
                task.done = self._submit_task(task).result()
            except BrokenProcessPool:
                self.crashes += 1
                task.done = (None, "DecodeError: the decoder process died while decoding this video (a crash in "
                                   "the decoder, e.g. a segfault)", 0.0, None)
                self.pool.shutdown(wait=False, cancel_futures=True)
                self.pool = self._new_pool()

    def result(self, task: "_Task", hold: bool = False):
        """-> (DecodedVideo or None, error message or None, decode seconds), for the oldest task.
        hold=True: the frames are views on the task's shared-memory slot (no copy), valid until
        `release(task)`, which must follow before the next `submit` can have the slot."""
        slot = task.slot
        try:
            if task.done is None:
                try:
                    task.done = task.future.result()
                except BrokenProcessPool:
                    self._recover()
            if self.workers:
                assert self.outstanding and self.outstanding[0] is task, "results are taken in submission order"
                self.outstanding.popleft()
            payload, error, dt, cpu = task.done
            if cpu is not None:
                self.cpu_s += cpu
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


def _read_shard(manifest_csv, shard: int) -> pd.DataFrame:
    df = read_manifest(manifest_csv)
    return df[df["shard"] == int(shard)].reset_index(drop=True)


def extract_shard(cfg: dict, dataset: str, manifest_csv, videos_dir, shard: int, out_store, device: str | None = None,
                  threads: int | None = None, progress: bool = True, prefetch: int | None = None,
                  decode_workers: int | None = None) -> dict:
    """Extract one shard into `out_store`. Returns a summary {n_videos, n_failed, timings...}.

    decode_workers: decode processes (default `decode_worker_count`); prefetch: decoded videos
    waiting beyond one per worker (default one per worker)."""
    t_start = time.perf_counter()
    rows = _read_shard(manifest_csv, shard)
    videos_dir = Path(videos_dir) if videos_dir else None
    records = rows.to_dict("records")
    workers = min(decode_worker_count(cfg, threads, decode_workers), len(records))
    with DecodePool(workers, prefetch) as decoders:  # workers start while the models load
        ex = Extractor(cfg, device, threads)
        decoders.start(ex)
        f = cfg["features"]
        attrs = {
            "dataset": dataset, "shard": int(shard), "vision": ex.vision_info, "motion": ex.motion_info,
            "sampling": ex.sampling_attrs, "settings_hash": feature_settings_hash(cfg), "code_version": CODE_VERSION,
            "device": str(ex.device), "manifest": str(manifest_csv),
        }
        writer = StoreWriter(
            out_store, token_shape=(ex.vision_info["tokens"], ex.vision_info["width"]),
            motion_dim=ex.motion_info["dim"], attrs=attrs, spatial_dtype=f["spatial_dtype"],
            motion_dtype=f["motion_dtype"], compressor=f["compressor"], compression_level=f["compression_level"],
            chunk_mb=f["chunk_mb"],
        )
        totals = {"load_s": ex.load_s, "decode_s": 0.0, "decode_wait_s": 0.0, "vision_s": 0.0, "motion_s": 0.0,
                  "write_s": 0.0, "decode_workers": workers}
        stage = BatchStage(ex)  # the next batch, staged as the videos arrive

        def flush():
            if not stage.videos:
                return
            n_kf, n_ch = stage.n_kf, stage.n_ch
            done, vs, ms = stage.encode(ex)
            totals["vision_s"] += vs
            totals["motion_s"] += ms
            t0 = time.perf_counter()
            for vid, meta, spatial, motion in done:
                meta = dict(meta, vision_s=round(vs * len(spatial) / n_kf, 4),
                            motion_s=round(ms * len(motion) / n_ch, 4))
                writer.add(vid, spatial, motion, meta)
            totals["write_s"] += time.perf_counter() - t0

        def video_path(row) -> str:
            return str((videos_dir / row["path"]) if videos_dir else Path(row["path"]))

        bar = tqdm(total=len(records), desc=f"extract {dataset} shard {int(shard)}", unit="video", file=sys.stderr,
                   disable=not progress, mininterval=1.0)
        try:
            queue: deque = deque()
            nxt = 0
            while nxt < len(records) and len(queue) < decoders.in_flight:
                queue.append((records[nxt], decoders.submit(video_path(records[nxt]))))
                nxt += 1
            while queue:  # manifest order, whatever order the workers finish in
                row, handle = queue.popleft()
                t0 = time.perf_counter()
                decoded, error, dt = decoders.result(handle, hold=True)  # frames: views on the slot
                totals["decode_wait_s"] += time.perf_counter() - t0
                try:
                    if decoded is not None:
                        stage.add(str(row["id"]), decoded)  # the one copy, slot -> staging buffer
                finally:
                    decoders.release(handle)
                ok, decoded = decoded is not None, None  # the views are invalid from here on
                if nxt < len(records):
                    queue.append((records[nxt], decoders.submit(video_path(records[nxt]))))
                    nxt += 1
                totals["decode_s"] += dt
                if not ok:
                    writer.add_failure(row["id"], row["path"], "decode", error)
                    print(f"failed: {row['id']} ({row['path']}): {error}", file=sys.stderr)
                elif stage.full(ex.batch_size):
                    flush()
                bar.update(1)
            flush()
            bar.close()
            if decoders.cpu_s is not None:  # CPU time of the decode workers (vs decode_s: contention)
                totals["decode_cpu_s"] = decoders.cpu_s
                totals["decode_crashes"] = decoders.crashes
            totals["total_s"] = time.perf_counter() - t_start
            n_ok = len(writer.ids)
            seconds = float(sum(v.get("duration", 0) or 0 for v in writer.videos))
            totals.update(videos_per_s=n_ok / totals["total_s"] if totals["total_s"] else None,
                          s_per_video_second=totals["total_s"] / seconds if seconds else None)
            writer.attrs["timings"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in totals.items()}
            writer.commit()
        except BaseException:
            bar.close()
            writer.abort()
            raise
    summary = {"store": str(out_store), "n_videos": n_ok, "n_failed": len(writer.failures), **writer.attrs["timings"]}
    return summary


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_config_arg(parser)
    parser.add_argument("--dataset", required=True, help="dataset name (recorded in the store)")
    parser.add_argument("--manifest", required=True, help="manifest CSV (columns id, path, shard, ...)")
    parser.add_argument("--videos", default=None, help="videos folder the manifest paths are relative to")
    parser.add_argument("--shard", type=int, required=True, help="shard number in the manifest")
    parser.add_argument("--out", required=True, help="feature store to write (shard-XXXXX.zarr)")
    add_device_arg(parser)
    parser.add_argument("--threads", type=int, default=None, help="torch + decoder threads (default: config 'threads')")
    parser.add_argument("--decode-workers", type=int, default=None,
                        help="decode worker processes (default: the config's features.decode_workers, else --threads)")
    add_no_progress_arg(parser)


def main(args) -> int:
    cfg = load_config(args.config)
    if args.videos and not Path(args.videos).is_dir():
        raise UserError(f"videos folder not found: {args.videos}")
    summary = extract_shard(cfg, args.dataset, args.manifest, args.videos, args.shard, args.out,
                            device=args.device, threads=args.threads, progress=not args.no_progress,
                            decode_workers=args.decode_workers)
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    return 0
