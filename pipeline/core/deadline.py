"""How long reading one video may take, and a child process that is killed when a call outlives it.

A damaged stream can make a decoder loop forever inside its C code (decord's `get_batch` at 100 % CPU
on a file `ffmpeg` decodes in a second). A thread cannot be stopped, so every decode and probe of a
video runs in a process of its own, and a process that passes its deadline is killed (SIGKILL), which
works whatever the decoder is doing.

* `DecodeDeadline` (config `sampling.decode_deadline`): a video's decode may take
  `base_s + per_gigapixel_s * duration * fps * width * height / 1e9` seconds, at most `max_s`, per
  backend: the cost of decoding grows with the pixels decoded, so a ten-minute 4K video gets more
  time than a five-second clip. The stream facts come from the file's header; until they are known
  (reading the header and first frame) the deadline is `base_s`.
* `CallInProcess`: calls of a picklable function, one at a time, in one child process, each with a
  deadline; a call past it kills the child (`DeadlineExceeded`) and the next call starts a new one.
  `lmmvqa probe` reads each file's header this way. Decoding for `lmmvqa extract` and `score` runs in
  the decode worker processes of `features.decoding.decode_pool.DecodePool`, which enforce `DecodeDeadline` themselves.
* Children end by themselves when the process that started them is gone (`exit_when_orphaned`).
* `START_METHOD`: how the children start (None = forkserver where there is one, else spawn; never a
  plain fork of a process that may run torch's thread pool). Tests set "fork" so that a stand-in
  decoder they install is inherited.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass

from pipeline.core.errors import UserError

START_METHOD: str | None = None
DEFAULT_FPS = 30.0  # when the header gives no frame rate


def start_method() -> str:
    if START_METHOD:
        return START_METHOD
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


@dataclass(frozen=True)
class DecodeDeadline:
    """Seconds one backend may spend on one video (see the module docstring); the defaults are the
    schema's (`sampling.decode_deadline`)."""

    base_s: float = 60.0
    per_gigapixel_s: float = 50.0
    max_s: float = 7200.0

    def seconds(self, duration=None, fps=None, width=None, height=None) -> float:
        """The deadline of a video with these stream facts (a missing fact counts as 0; fps as 30)."""
        gigapixels = (duration or 0) * (fps or DEFAULT_FPS) * (width or 0) * (height or 0) / 1e9
        return max(self.base_s, min(self.max_s, self.base_s + self.per_gigapixel_s * gigapixels))

    @classmethod
    def from_settings(cls, settings) -> "DecodeDeadline":
        """From the resolved `sampling.decode_deadline` (settings.DecodeDeadlineSettings; a model folder
        trained before the key existed resolves to the schema's defaults)."""
        return cls(base_s=float(settings.base_s), per_gigapixel_s=float(settings.per_gigapixel_s),
                   max_s=float(settings.max_s))


class DeadlineExceeded(Exception):
    """A call did not finish within its deadline; its process was killed."""


def exit_when_orphaned(main_pid: int, interval: float = 0.5) -> None:
    """In a child: a daemon thread that ends this process when `main_pid` or this process's parent is
    gone, so that a `kill -9` of the job leaves no decoder running."""
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(interval)
            try:
                os.kill(main_pid, 0)
            except (ProcessLookupError, PermissionError):  # gone, or the pid was reused by another user
                os._exit(70)
            if os.getppid() != parent:
                os._exit(70)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def _serve(conn, main_pid: int) -> None:
    """The child of CallInProcess: (function, args) in, ("ok", result) or ("raised", message) out."""
    exit_when_orphaned(main_pid)
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):  # the parent closed its end or died
            return
        try:
            answer = ("ok", fn(*args))
        except Exception as exc:  # noqa: BLE001 - the caller gets the message
            answer = ("raised", f"{type(exc).__name__}: {exc}")
        conn.send(answer)


class ChildDied(RuntimeError):
    """The child process ended during a call (a crash in native code, e.g. a segfault in FFmpeg)."""


class CallInProcess:
    """Runs calls one at a time in a child process; `call(fn, args, seconds)` returns fn's result,
    raises RuntimeError with the child's message when fn raised, ChildDied when the child died, and
    DeadlineExceeded (after killing the child) when it took longer than `seconds`."""

    def __init__(self):
        self.ctx = multiprocessing.get_context(start_method())
        self.proc = None
        self.conn = None
        self.kills = 0

    def _start(self) -> None:
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_serve, args=(child, os.getpid()), name="lmmvqa-deadline", daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent

    def call(self, fn, args: tuple, seconds: float):
        if self.proc is None or not self.proc.is_alive():
            self.close()
            self._start()
        self.conn.send((fn, args))
        if not self.conn.poll(seconds):
            self.kill()
            raise DeadlineExceeded(f"timed out after {seconds:g} s")
        try:
            kind, value = self.conn.recv()
        except (EOFError, OSError):
            self.close()
            raise ChildDied("the process reading the video died (a crash in FFmpeg, e.g. a segfault)") from None
        if kind == "raised":
            raise RuntimeError(value)
        return value

    def kill(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            os.kill(self.proc.pid, signal.SIGKILL)
            self.kills += 1
        self.close()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.proc is not None:
            self.proc.join(timeout=5)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()
            self.proc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
