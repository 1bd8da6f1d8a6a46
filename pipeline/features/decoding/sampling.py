"""What to read from a video: the sampling plan, pure functions of its duration and frame timestamps,
and what decoding gives back (`DecodedVideo`, or `DecodeError`).

Sampling (all by presentation timestamp, so variable-frame-rate video is sampled correctly)
------------------------------------------------------------------------------------------
* Times are relative to the first frame; the duration D is the end of the last frame.
* Key frames: one per `1/keyframe_fps` seconds, at the MIDDLE of each period, for every period whose
  middle lies inside the video: t_k = (k + 0.5) / keyframe_fps for t_k < D (an 8.1 s or 7.8 s video
  gives 8 key frames at 1 fps). A video shorter than half a period gives one key frame at D / 2.
* Motion chunks: one per second s whose middle s + 0.5 lies inside the video (at least one). The
  chunk holds `chunk_frames` frames at the times s + (j + 0.5) * w / chunk_frames, j < chunk_frames,
  over the window w = min(1, D - s): uniform resampling whatever the video's fps (frames repeat when
  the fps is lower than chunk_frames, and for a video shorter than a second the window is the whole
  video).
* More periods than `max_keyframes` (seconds than `max_seconds`): that many, spread uniformly over
  the whole video (rounded linspace over the period indices), not the first ones.
* The frame shown at time t is the last frame whose timestamp is <= t.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


class DecodeError(RuntimeError):
    """The video could not be decoded by any backend (message names each backend's error)."""


@dataclass
class DecodedVideo:
    keyframes: np.ndarray  # uint8 [n_kf, key_size, key_size, 3]; native mode: [n_kf, h, w, 3] of this video
    chunks: np.ndarray  # uint8 [n_sec, chunk_frames, chunk_size, chunk_size, 3]
    meta: dict = field(default_factory=dict)
    chunk_ids: np.ndarray | None = None  # int [n_sec, chunk_frames] source frame indices


def _spread(n: int, cap: int) -> np.ndarray:
    if n <= cap:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, cap)).astype(int))


def keyframe_times(duration: float, keyframe_fps: float = 1.0, max_keyframes: int = 16) -> np.ndarray:
    period = 1.0 / keyframe_fps
    n = max(0, math.ceil(duration / period - 0.5 - 1e-9))
    if n == 0:
        return np.array([duration / 2.0])
    return (_spread(n, max_keyframes) + 0.5) * period


def chunk_times(duration: float, chunk_frames: int = 32, max_seconds: int = 16) -> np.ndarray:
    """[n_sec, chunk_frames] sample times (seconds) of the motion chunks."""
    n = max(1, math.ceil(duration - 0.5 - 1e-9))
    seconds = _spread(n, max_seconds).astype(float)
    window = np.clip(duration - seconds, 1e-6, 1.0)
    j = (np.arange(chunk_frames) + 0.5) / chunk_frames
    return seconds[:, None] + j[None, :] * window[:, None]


def frame_at(pts: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the frame displayed at each time (last frame with timestamp <= t)."""
    idx = np.searchsorted(pts, np.asarray(times) + 1e-9, side="right") - 1
    return np.clip(idx, 0, len(pts) - 1)


def frame_plan(pts, duration, p):
    """(key frame indices, chunk frame indices [n_sec, chunk_frames], key frame times) of a video whose
    frames are shown at `pts` (seconds from the first), for the sampling settings `p`."""
    kf_t = keyframe_times(duration, p["keyframe_fps"], p["max_keyframes"])
    ch_t = chunk_times(duration, p["chunk_frames"], p["max_seconds"])
    return frame_at(pts, kf_t), frame_at(pts, ch_t), kf_t
