"""Decode a video once into CLIP key frames and one-second SlowFast chunks.

`sample_video(path, ...) -> DecodedVideo` is the single entry point. It opens ONE reader per video
and reads only the frames it needs, in small groups of frame indices (sorted), so memory stays
bounded by the output (capped by `max_keyframes` / `max_seconds`) whatever the video's length or
resolution: frames are resized inside the decoder (decord `width`/`height`, PyAV `reformat`) and a
full-resolution frame never leaves the decoder (PyAV: one at a time).

Which frames are read is the sampling plan (sampling.py: key frames at the middle of each period and
one-second motion chunks, by presentation timestamp, so variable-frame-rate video is sampled
correctly); what each frame becomes is its view (views.py: `keyframe_mode` stretch, crop, fragments,
native). The decoders resize: in `stretch` mode the decoder's scaler (swscale, bicubic) makes
max(key_size, chunk_size) (decord: rounded up to a multiple of 32, see `_decord_size`); `crop`,
`fragments` and `native` decode at the native size and resize in torch.

* `chunk_ids` [n_sec, chunk_frames]: the source frame index behind each chunk frame (repeated
  indices = frames repeated by the resampling, not by the video).
* Rotation metadata (display matrix) is applied: decord applies it itself; for PyAV this module
  rotates the frames (`np.rot90` by `frame.rotation`), so both backends match ffmpeg's auto-rotation.

Still images (an image file extension, `pipeline.ingest.media.media_of`) are not videos: `VideoSampler.decode` reads
them once with Pillow into one key frame and no chunks (pipeline/features/decoding/decode_image.py).

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
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from pipeline.core.settings import NATIVE_MAX_SHORT_SIDE
from pipeline.ingest.media import media_of
from pipeline.core.deadline import DecodeDeadline
from pipeline.ingest.streams import display_info, error_text
from pipeline.features.decoding.sampling import DecodedVideo, DecodeError, chunk_times, frame_plan, keyframe_times
from pipeline.features.decoding.views import KEYFRAME_MODES, chunk_view, resize_to, spatial_view

BACKENDS = ("decord", "pyav")  # the configurable ones (sampling.backend); DECODERS (below) maps names to code
GROUP_FRAMES = 64  # frames requested from the decoder at once (bounds memory)


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
            views = resize_to(views, *self.array_.shape[1:3])
        self.array_[rows] = views

    @property
    def array(self) -> np.ndarray:
        if self.array_ is None:
            return np.zeros((self.n, self.key_size, self.key_size, 3), np.uint8)
        return self.array_


# ---------------------------------------------------------------------------------------------
# Backends: each returns (keyframes, chunks, meta) for a sampling plan
# ---------------------------------------------------------------------------------------------
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
    kf_idx, ch_idx, _ = frame_plan(pts, duration, p)
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
            from pipeline.features.decoding.decode_image import sample_image

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
