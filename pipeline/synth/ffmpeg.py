"""The ffmpeg the synth stage runs: the static build inside PyPI `imageio-ffmpeg` (it has libvmaf, which
Debian's ffmpeg 5.1 lacks), called with the flags that keep its output bytes reproducible.
"""
from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

from pipeline.core.errors import UserError

# no encoder / muxer version strings, creation times or random ids in the files
BITEXACT = ["-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1", "-map_chapters", "-1"]
QUIET = ["-nostdin", "-hide_banner", "-loglevel", "error", "-y"]


class FFmpegError(Exception):
    """An ffmpeg run that failed; the message is ffmpeg's last error lines."""


@lru_cache(maxsize=1)
def executable() -> str:
    """Path of the static ffmpeg shipped in imageio-ffmpeg (a pinned dependency)."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise UserError("the synth stage needs the Python package imageio-ffmpeg==0.8.1 (its static ffmpeg has "
                        "libvmaf): pip install imageio-ffmpeg==0.8.1") from None
    return imageio_ffmpeg.get_ffmpeg_exe()


def run(args: list[str], cwd: Path | str | None = None, timeout: float | None = None) -> None:
    """Run `ffmpeg <QUIET> <args>`; FFmpegError with the tail of its stderr when it fails."""
    cmd = [executable(), *QUIET, *[str(a) for a in args]]
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FFmpegError(f"ffmpeg did not finish within {timeout:g} s") from None
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        raise FFmpegError(" | ".join(lines[-3:]) or f"ffmpeg exited with status {proc.returncode}")

