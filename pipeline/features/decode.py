"""Decode a video once into CLIP key frames and one-second SlowFast chunks.

`sample_video(path, ...) -> DecodedVideo` is the single entry point. It opens ONE reader per video
and reads only the frames it needs, in small groups of frame indices (sorted), so memory stays
bounded by the output (capped by `max_keyframes` / `max_seconds`) whatever the video's length or
resolution: frames are resized inside the decoder (decord `width`/`height`, PyAV `reformat`) and a
full-resolution frame never leaves the decoder (PyAV: one at a time).

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
* Resize: every frame is resized directly (no crop, aspect ratio not kept) to `key_size` x
  `key_size` for the key frames and `chunk_size` x `chunk_size` for the chunks, with the decoder's
  scaler (swscale, bicubic) at max(key_size, chunk_size) (decord: rounded up to a multiple of 32,
  see `_decord_size`); the other size(s) are then made from it with an antialiased bilinear resize.
* Key-frame modes (`keyframe_mode`): `stretch` (above; the default, as the paper samples), `crop`
  (short side resized to the size, then the centre square, for key frames and chunks alike) and
  `fragments` (FAST-VQA-style: a `fragment_grid` x `fragment_grid` mosaic of key_size / grid pixel
  patches taken at the video's own resolution from the centre of each grid cell, so compression,
  noise and blur are seen unscaled; frames smaller than key_size are upscaled just enough first).
  `native` (the whole frame at its own resolution and aspect ratio, resized only where its short side
  exceeds `native_max_short_side`, never upscaled: key frames differ in size from video to video, so
  only a CNN vision arch, which pools over any size, takes them; chunks as in `stretch`).
  `crop`, `fragments` and `native` decode at the native size and resize in torch.
* `chunk_ids` [n_sec, chunk_frames]: the source frame index behind each chunk frame (repeated
  indices = frames repeated by the resampling, not by the video).
* Rotation metadata (display matrix) is applied: decord applies it itself; for PyAV this module
  rotates the frames (`np.rot90` by `frame.rotation`), so both backends match ffmpeg's auto-rotation.

Still images (an image file extension, `pipeline.ingest.media.media_of`) are not videos: `VideoSampler.decode` reads
them once with Pillow into one key frame and no chunks (pipeline/features/decode_image.py).

Backends: `decord` (primary; `decord.VideoReader` directly, retried with `num_threads=1`, which VP9
needs in some builds) and `pyav` (fallback, also selectable), by name in `DECODERS`. `sample_video`
tries `backend` and then `fallback`; the backend that decoded the video is recorded in
`meta["backend"]`. Failures raise `DecodeError` with every backend's message. A backend that never
returns (a damaged stream can make one loop forever) is not stopped here: the decode worker process
that runs it is killed at the video's deadline (`pipeline/core/deadline.py`, `decode_pool.py`), told by the
`on_facts` (stream facts read from the header) and `on_backend` (the backend starting) callbacks.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.specs import NATIVE_MAX_SHORT_SIDE
from pipeline.ingest.media import media_of
from pipeline.core.deadline import DecodeDeadline
from pipeline.ingest.streams import display_info, error_text

BACKENDS = ("decord", "pyav")  # the configurable ones (sampling.backend); DECODERS (below) maps names to code
GROUP_FRAMES = 64  # frames requested from the decoder at once (bounds memory)


class DecodeError(RuntimeError):
    """The video could not be decoded by any backend (message names each backend's error)."""


KEYFRAME_MODES = ("stretch", "crop", "fragments", "native")


@dataclass
class DecodedVideo:
    keyframes: np.ndarray  # uint8 [n_kf, key_size, key_size, 3]; native mode: [n_kf, h, w, 3] of this video
    chunks: np.ndarray  # uint8 [n_sec, chunk_frames, chunk_size, chunk_size, 3]
    meta: dict = field(default_factory=dict)
    chunk_ids: np.ndarray | None = None  # int [n_sec, chunk_frames] source frame indices


# ---------------------------------------------------------------------------------------------
# Sampling plan (pure functions)
# ---------------------------------------------------------------------------------------------
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


def _resize_to(frames: np.ndarray, h: int, w: int) -> np.ndarray:
    """uint8 [n, H, W, 3] -> uint8 [n, h, w, 3] (antialiased bilinear). Halving both sides (e.g. 224-px
    decoded frames -> 112-px chunks) takes `_halve`, the same bytes ~3x faster."""
    if frames.shape[1] == 2 * h and frames.shape[2] == 2 * w and h >= 3 and w >= 3:
        return _halve(frames)
    return _resize_float(frames, h, w)


def _halve(frames: np.ndarray) -> np.ndarray:
    """`_resize_float(frames, H / 2, W / 2)`, byte for byte, in integer arithmetic. At scale 2 torch's
    antialiased bilinear weights away from the border are exactly 1/8, 3/8, 3/8, 1/8 per axis (input
    pixels 2i-1 .. 2i+2 for output i), so the float path computes S / 64 exactly, S = the integer sum
    of the 4 x 4 pixels weighted by (1, 3, 3, 1) x (1, 3, 3, 1) (at most 16320: int16), and rounds it
    half to even; that is done here on int16 (row pass first, on whole rows). The border rows and
    columns (renormalised, inexact weights) come from the float path on the 4-pixel strips that
    feed them: torch computes the weights of an output pixel from its position relative to the input
    edge and the scale (2 in both), so the strip gives the same bytes as the whole frame."""
    frames = np.ascontiguousarray(frames)
    n, hh, ww, c = frames.shape
    h, w = hh // 2, ww // 2
    x = frames
    v = np.add(x[:, 1 : hh - 4 : 2], x[:, 4 : hh - 1 : 2], dtype=np.int16)  # rows 2i-1 + 2i+2, i = 1 .. h-2
    mid = np.add(x[:, 2 : hh - 3 : 2], x[:, 3 : hh - 2 : 2], dtype=np.int16)  # rows 2i + 2i+1
    mid *= 3
    v += mid
    # planar [n, h-2, c, column parity, w] so that the column pass runs on contiguous rows
    v = np.ascontiguousarray(v.reshape(n, h - 2, w, 2, c).transpose(0, 1, 4, 3, 2))
    even, odd = v[:, :, :, 0], v[:, :, :, 1]  # columns 2j, 2j+1
    s = odd[..., : w - 2] + even[..., 2:]  # columns 2j-1 + 2j+2, j = 1 .. w-2
    mid = even[..., 1 : w - 1] + odd[..., 1 : w - 1]
    mid *= 3
    s += mid
    odd_q = s >> 6  # round(S / 64) half to even: (S + 31 + (S // 64) % 2) // 64
    odd_q &= 1
    s += 31
    s += odd_q
    s >>= 6
    out = np.empty((n, h, w, c), np.uint8)
    out[:, 1 : h - 1, 1 : w - 1] = s.transpose(0, 1, 3, 2)
    # border rows: first + last 4 rows side by side -> 4 rows, of which the first and last are the borders
    rows = _resize_float(np.concatenate([frames[:, :4], frames[:, hh - 4 :]], axis=1), 4, w)
    out[:, 0], out[:, h - 1] = rows[:, 0], rows[:, 3]
    cols = _resize_float(np.concatenate([frames[:, :, :4], frames[:, :, ww - 4 :]], axis=2), h, 4)
    out[:, :, 0], out[:, :, w - 1] = cols[:, :, 0], cols[:, :, 3]
    return out


def _resize_float(frames: np.ndarray, h: int, w: int) -> np.ndarray:
    """`_resize_to` in torch: float32 antialiased bilinear, rounded half to even."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    y = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _resize_square(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 [n, h, w, 3] -> uint8 [n, size, size, 3] (antialiased bilinear)."""
    if frames.shape[1] == size and frames.shape[2] == size:
        return frames
    return _resize_to(frames, size, size)


def centre_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 [n, h, w, 3] -> [n, size, size, 3]: short side resized to `size`, centre square."""
    h, w = frames.shape[1:3]
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    if (nh, nw) != (h, w):
        frames = _resize_to(frames, nh, nw)
    y, x = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(frames[:, y : y + size, x : x + size])


def fragments(frames: np.ndarray, size: int, grid: int = 7) -> np.ndarray:
    """uint8 [n, h, w, 3] -> [n, size, size, 3]: a grid x grid mosaic of (size / grid)-pixel patches,
    each cut at native resolution around the centre of its cell of the frame."""
    if size % grid:
        raise ValueError(f"fragments: key size {size} is not a multiple of the grid {grid}")
    p = size // grid
    h, w = frames.shape[1:3]
    if h < size or w < size:  # upscale just enough for every patch to fit
        s = size / min(h, w)
        h, w = max(size, math.ceil(h * s)), max(size, math.ceil(w * s))
        frames = _resize_to(frames, h, w)
    out = np.empty((len(frames), size, size, 3), np.uint8)
    for i in range(grid):
        y = int(min(h - p, max(0, round((i + 0.5) * h / grid - p / 2))))
        for j in range(grid):
            x = int(min(w - p, max(0, round((j + 0.5) * w / grid - p / 2))))
            out[:, i * p : (i + 1) * p, j * p : (j + 1) * p] = frames[:, y : y + p, x : x + p]
    return out


def native_view(frames: np.ndarray, max_short_side: int = NATIVE_MAX_SHORT_SIDE) -> np.ndarray:
    """uint8 [n, h, w, 3] -> the same frames, resized (aspect ratio kept, antialiased bilinear) so that
    their short side is `max_short_side` when it is longer; smaller frames are returned as they are."""
    h, w = frames.shape[1:3]
    short = min(h, w)
    if short <= max_short_side:
        return frames
    s = max_short_side / short
    nh, nw = (max_short_side, max(1, round(w * s))) if h <= w else (max(1, round(h * s)), max_short_side)
    return _resize_to(frames, nh, nw)


def spatial_view(frames: np.ndarray, size: int, mode: str = "stretch", grid: int = 7,
                 max_short_side: int = NATIVE_MAX_SHORT_SIDE) -> np.ndarray:
    """Frames as the vision encoder sees them (see `keyframe_mode` in the module docstring)."""
    if mode == "native":
        return native_view(frames, max_short_side)
    if mode == "stretch":
        return _resize_square(frames, size)
    if mode == "crop":
        return centre_crop(frames, size)
    if mode == "fragments":
        return fragments(frames, size, grid)
    raise ValueError(f"unknown keyframe_mode {mode!r} (one of {KEYFRAME_MODES})")


def chunk_view(frames: np.ndarray, size: int, mode: str = "stretch") -> np.ndarray:
    """Chunk frames for the motion role: centre-cropped in `crop` mode, else the whole frame resized."""
    return spatial_view(frames, size, "crop" if mode == "crop" else "stretch")


class _Collector:
    """Requests (frame index -> output slots) sorted by frame index, filled group by group."""

    def __init__(self, kf_idx, ch_idx, key_size, chunk_size, mode="stretch", grid=7,
                 max_short_side=NATIVE_MAX_SHORT_SIDE):
        n_kf, (n_sec, c) = len(kf_idx), ch_idx.shape
        self.key_size, self.chunk_size = key_size, chunk_size
        self.mode, self.grid, self.max_short_side = mode, grid, max_short_side
        self.views = _KeyFrames(n_kf, key_size)
        self.chunks = np.zeros((n_sec, c, chunk_size, chunk_size, 3), np.uint8)
        self.kf_idx, self.ch_idx = np.asarray(kf_idx), np.asarray(ch_idx)
        self.needed = np.unique(np.concatenate([self.kf_idx.ravel(), self.ch_idx.ravel()]))

    def groups(self, max_frames: int = GROUP_FRAMES):
        for i in range(0, len(self.needed), max_frames):
            yield self.needed[i : i + max_frames]

    def fill(self, indices: np.ndarray, frames: np.ndarray) -> None:
        """frames: uint8 [len(indices), s, s, 3] at the decode size s (>= key_size, chunk_size)."""
        pos = {int(f): i for i, f in enumerate(indices)}
        kf_sel = [(k, pos[int(f)]) for k, f in enumerate(self.kf_idx) if int(f) in pos]
        if kf_sel:
            src = spatial_view(frames[[p for _, p in kf_sel]], self.key_size, self.mode, self.grid,
                               self.max_short_side)
            self.views.put([k for k, _ in kf_sel], src)
        sec, j = np.nonzero(np.isin(self.ch_idx, indices))
        if len(sec):
            rows = np.array([pos[int(self.ch_idx[s, jj])] for s, jj in zip(sec, j)])
            uniq, inv = np.unique(rows, return_inverse=True)
            small = chunk_view(frames[uniq], self.chunk_size, self.mode)
            self.chunks[sec, j] = small[inv]

    @property
    def keyframes(self) -> np.ndarray:
        return self.views.array

    @property
    def chunk_ids(self) -> np.ndarray:
        return self.ch_idx


class _KeyFrames:
    """The key frames of one video, allocated at the size of the first view put in (`native` mode: the
    video's own, capped size; otherwise key_size x key_size); `array` is all of them."""

    def __init__(self, n: int, key_size: int):
        self.n, self.key_size, self.array_ = n, key_size, None

    def put(self, rows, views: np.ndarray) -> None:
        if self.array_ is None:
            self.array_ = np.zeros((self.n, *views.shape[1:]), np.uint8)
        elif views.shape[1:] != self.array_.shape[1:]:  # a stream whose frame size changes midway
            views = _resize_to(views, *self.array_.shape[1:3])
        self.array_[rows] = views

    @property
    def array(self) -> np.ndarray:
        if self.array_ is None:
            return np.zeros((self.n, self.key_size, self.key_size, 3), np.uint8)
        return self.array_


# ---------------------------------------------------------------------------------------------
# Backends: each returns (keyframes, chunks, meta) for a sampling plan
# ---------------------------------------------------------------------------------------------
def _plan(pts, duration, p):
    kf_t = keyframe_times(duration, p["keyframe_fps"], p["max_keyframes"])
    ch_t = chunk_times(duration, p["chunk_frames"], p["max_seconds"])
    return frame_at(pts, kf_t), frame_at(pts, ch_t), kf_t


def _decord_size(size: int) -> int:
    """decord 0.6 fails ("The size must exactly match") for some output widths (16, 24, 48, 72, ...);
    multiples of 32 work (measured), so decode at the next multiple of 32 and resize from there."""
    return int(math.ceil(size / 32) * 32)


def _decode_decord(path, p, threads):
    import decord  # only for this backend (sampling.backend / fallback_backend may leave it out)

    if p["keyframe_mode"] == "stretch":
        size = _decord_size(max(p["key_size"], p["chunk_size"]))
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), width=size, height=size, num_threads=threads)
    else:  # native size: crop / fragments resize in torch
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads)
    n = len(vr)
    if n == 0:
        raise DecodeError("no frames")
    ts = np.asarray(vr.get_frame_timestamp(np.arange(n)), dtype=np.float64)
    pts = ts[:, 0] - ts[0, 0]
    duration = float(ts[-1, 1] - ts[0, 0])
    if not duration > 0:
        fps = float(vr.get_avg_fps() or 25.0)
        pts, duration = np.arange(n) / fps, n / fps
    kf_idx, ch_idx, _ = _plan(pts, duration, p)
    col = _Collector(kf_idx, ch_idx, p["key_size"], p["chunk_size"], p["keyframe_mode"], p["fragment_grid"],
                     p["native_max_short_side"])
    for group in col.groups():
        frames = vr.get_batch(group.tolist()).asnumpy()
        col.fill(group, frames)
    del vr
    return col, {"duration": duration, "n_frames": n, "vfr": _is_vfr(pts)}


def _is_vfr(pts: np.ndarray) -> bool:
    if len(pts) < 3:
        return False
    d = np.diff(pts)
    return bool(np.max(d) - np.min(d) > 0.25 * np.median(d) + 1e-4)


def _pyav_duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1e6
    return None


def _decode_pyav(path, p, threads):
    """Sequential decode; holds back one frame (undecoded to RGB) and converts only the frames used."""
    size = max(p["key_size"], p["chunk_size"])
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise DecodeError("no video stream")
        stream = container.streams.video[0]
        expected = _pyav_duration(container, stream)
        if not expected or expected <= 0:  # demux only (no decoding) to find the last timestamp
            end = 0.0
            for pkt in container.demux(stream):
                if pkt.pts is not None and pkt.time_base is not None:
                    end = max(end, float((pkt.pts + (pkt.duration or 0)) * pkt.time_base))
            container.seek(0)
            expected = end
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        stream.thread_type = "AUTO"
        if threads:
            stream.codec_context.thread_count = int(threads)
        fps_guess = float(stream.average_rate or stream.guessed_rate or 25)
        # sample times come from the container's duration; frames are matched to them as they arrive
        kf_t = keyframe_times(expected, p["keyframe_fps"], p["max_keyframes"])
        ch_t = chunk_times(expected, p["chunk_frames"], p["max_seconds"])
        keyframes = _KeyFrames(len(kf_t), p["key_size"])
        chunks = np.zeros((*ch_t.shape, p["chunk_size"], p["chunk_size"], 3), np.uint8)
        targets = np.concatenate([kf_t, ch_t.ravel()])
        order = np.argsort(targets, kind="stable")
        chunk_ids = np.zeros(ch_t.shape, np.int64)
        state = {"pending": 0, "cache": (None, None)}  # next target in time order; last converted frame
        mode, native = p["keyframe_mode"], p["keyframe_mode"] != "stretch"

        def convert(frame, fi):
            if state["cache"][0] != fi:
                if native:
                    img = frame.to_ndarray(format="rgb24")
                else:
                    img = frame.reformat(width=size, height=size, format="rgb24", interpolation="BICUBIC").to_ndarray()
                k = int(round((frame.rotation or 0) / 90.0)) % 4
                img = np.ascontiguousarray(np.rot90(img, k)) if k else img
                state["cache"] = (fi, {"src": img})
            return state["cache"][1]

        def assign(upto_time, frame, fi):
            while state["pending"] < len(order) and targets[order[state["pending"]]] < upto_time - 1e-9:
                t = int(order[state["pending"]])
                views = convert(frame, fi)
                if t < len(kf_t):
                    if "key" not in views:
                        views["key"] = spatial_view(views["src"][None], p["key_size"], mode, p["fragment_grid"],
                                                    p["native_max_short_side"])
                    keyframes.put([t], views["key"])
                else:
                    if "chunk" not in views:
                        views["chunk"] = chunk_view(views["src"][None], p["chunk_size"], mode)[0]
                    chunks.reshape(-1, *chunks.shape[2:])[t - len(kf_t)] = views["chunk"]
                    chunk_ids.reshape(-1)[t - len(kf_t)] = fi
                state["pending"] += 1

        prev, prev_i, last_t, i = None, -1, 0.0, -1
        for i, frame in enumerate(container.decode(stream)):
            t = float(frame.time) - start if frame.time is not None else i / fps_guess
            if prev is not None:
                assign(t, prev, prev_i)
            prev, prev_i, last_t = frame, i, t
        if prev is None:
            raise DecodeError("no decodable video frame")
        frame_dur = 1.0 / fps_guess
        if expected > 1.0 and last_t + frame_dur < 0.9 * expected - 0.25:
            raise DecodeError(f"truncated: decoded {last_t + frame_dur:.2f} s of {expected:.2f} s")
        assign(math.inf, prev, prev_i)
    duration = min(expected, last_t + frame_dur) if expected else last_t + frame_dur
    return _Filled(keyframes.array, chunks, chunk_ids), {"duration": float(duration), "n_frames": i + 1, "vfr": None}


@dataclass
class _Filled:
    keyframes: np.ndarray
    chunks: np.ndarray
    chunk_ids: np.ndarray


DECODERS = {"decord": _decode_decord, "pyav": _decode_pyav}  # name -> (path, plan, threads) -> (frames, extra)


# ---------------------------------------------------------------------------------------------
def stream_info(path: str | Path) -> dict:
    """{width, height, rotation, codec, pix_fmt} of a video's first video stream (displayed size, after
    rotation; pipeline/ingest/streams.py), from its header and first decoded frame (PyAV). DecodeError when
    the file does not open, has no video stream or no frame that decodes."""
    return _stream_header(path)[0]


def _stream_header(path: str | Path) -> tuple[dict, dict]:
    """(`stream_info`, {duration, fps} as the header states them, None where it does not)."""
    try:
        container = av.open(str(path), "r")
    except Exception as exc:  # noqa: BLE001 - FFmpeg raises many types; keep its message
        raise DecodeError(error_text(exc)) from None
    try:
        if not container.streams.video:
            raise DecodeError("no video stream")
        stream = container.streams.video[0]
        try:
            frame = next((f for packet in container.demux(stream) for f in packet.decode()), None)
        except Exception as exc:  # noqa: BLE001
            raise DecodeError(error_text(exc)) from None
        if frame is None:
            raise DecodeError("no video frame could be decoded")
        rate = stream.average_rate or stream.guessed_rate
        return display_info(stream, frame), {"duration": _pyav_duration(container, stream),
                                             "fps": float(rate) if rate else None}
    except DecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - broken headers surface as many FFmpeg error types
        raise DecodeError(error_text(exc)) from None
    finally:
        container.close()


def sample_video(
    path: str | Path,
    keyframe_fps: float = 1.0,
    max_keyframes: int = 16,
    chunk_frames: int = 32,
    max_seconds: int = 16,
    key_size: int = 224,
    chunk_size: int = 224,
    backend: str = "decord",
    fallback: str | None = "pyav",
    threads: int = 0,
    keyframe_mode: str = "stretch",
    fragment_grid: int = 7,
    native_max_short_side: int = NATIVE_MAX_SHORT_SIDE,
    on_facts=None,
    on_backend=None,
) -> DecodedVideo:
    """Key frames + per-second chunks of one video, decoded once (see the module docstring).
    on_facts({duration, fps, width, height}) is called once the header is read, on_backend(name)
    before each backend starts (a decode worker sets the video's deadline from them)."""
    path = Path(path)
    t0 = time.perf_counter()
    if not path.is_file():
        raise DecodeError(f"no such file: {path}")
    if path.stat().st_size == 0:
        raise DecodeError("empty file (0 bytes)")
    info, timing = _stream_header(path)
    if on_facts is not None:
        on_facts({**timing, "width": info["width"], "height": info["height"]})
    p = dict(keyframe_fps=keyframe_fps, max_keyframes=max_keyframes, chunk_frames=chunk_frames,
             max_seconds=max_seconds, key_size=key_size, chunk_size=chunk_size, keyframe_mode=keyframe_mode,
             fragment_grid=fragment_grid, native_max_short_side=int(native_max_short_side))
    if keyframe_mode not in KEYFRAME_MODES:
        raise ValueError(f"unknown keyframe_mode {keyframe_mode!r} (one of {KEYFRAME_MODES})")
    attempts = []
    for name in [backend] + ([fallback] if fallback and fallback != backend else []):
        if name not in DECODERS:
            raise ValueError(f"unknown decode backend {name!r} (one of {tuple(DECODERS)})")
        if on_backend is not None:
            on_backend(name)
        tries = [threads, 1] if name == "decord" and threads != 1 else [threads]
        for nt in tries:
            try:
                col, extra = DECODERS[name](path, p, nt)
            except Exception as exc:  # decord.DECORDError, av errors, DecodeError
                attempts.append(f"{name}(threads={nt}): {type(exc).__name__}: {str(exc).strip()[:300]}")
                continue
            meta = {
                "duration": round(extra["duration"], 6),
                "fps": round(extra["n_frames"] / extra["duration"], 6) if extra["duration"] > 0 else None,
                "n_frames": int(extra["n_frames"]),
                "width": info["width"], "height": info["height"], "rotation": info["rotation"],
                "codec": info["codec"], "pix_fmt": info["pix_fmt"], "vfr": extra["vfr"],
                "backend": name, "decoder_threads": nt,
                "n_keyframes": len(col.keyframes), "n_seconds": len(col.chunks),
                "decode_s": round(time.perf_counter() - t0, 4),
            }
            if attempts:
                meta["decode_retries"] = attempts
            return DecodedVideo(col.keyframes, col.chunks, meta, np.asarray(col.chunk_ids))
    raise DecodeError("; ".join(attempts))


@dataclass(frozen=True)
class VideoSampler:
    """How one extraction samples every video: the sampling settings, the two frame sizes its encoders
    take, the backends and decoder threads. Small and picklable, so a decode worker process decodes with
    exactly the settings of the extraction that started it without loading (or importing) any model."""

    keyframe_fps: float
    max_keyframes: int
    chunk_frames: int
    max_seconds: int
    key_size: int
    chunk_size: int
    keyframe_mode: str = "stretch"
    fragment_grid: int = 7
    native_max_short_side: int = NATIVE_MAX_SHORT_SIDE
    backend: str = "decord"
    fallback: str | None = "pyav"
    threads: int = 0
    deadline: DecodeDeadline | None = None  # enforced by the decode worker processes (decode_pool.py)

    def decode(self, path, **callbacks) -> DecodedVideo:
        """`sample_video` with these settings; callbacks: on_facts / on_backend (see there). A still image
        is one key frame and no motion chunks (decode_image.py)."""
        if media_of(path) == "image":
            from pipeline.features.decode_image import sample_image

            return sample_image(path, key_size=self.key_size, chunk_frames=self.chunk_frames,
                                chunk_size=self.chunk_size, keyframe_mode=self.keyframe_mode,
                                fragment_grid=self.fragment_grid, native_max_short_side=self.native_max_short_side)
        return sample_video(path, keyframe_fps=self.keyframe_fps, max_keyframes=self.max_keyframes,
                            chunk_frames=self.chunk_frames, max_seconds=self.max_seconds, key_size=self.key_size,
                            chunk_size=self.chunk_size, backend=self.backend, fallback=self.fallback,
                            threads=self.threads, keyframe_mode=self.keyframe_mode, fragment_grid=self.fragment_grid,
                            native_max_short_side=self.native_max_short_side, **callbacks)

    @property
    def key_pixels(self) -> int:
        """Pixels of the largest key frame planned for: key_size^2, or in `native` mode a 16:9 frame at the
        short-side cap (wider frames still decode; a decode worker then returns them without shared memory)."""
        if self.keyframe_mode == "native":
            return int(self.native_max_short_side) * math.ceil(self.native_max_short_side * 16 / 9)
        return self.key_size**2

    @property
    def max_bytes(self) -> int:
        """Bytes of the largest decoded output: max_keyframes key frames + max_seconds chunks, uint8 RGB."""
        return (int(self.max_keyframes) * self.key_pixels * 3
                + int(self.max_seconds) * int(self.chunk_frames) * self.chunk_size**2 * 3)
