"""The two frozen encoders and the sampling settings of a config: decode a video once, encode many.

`Extractor(features, device, threads)` (the resolved `FeatureSettings`) loads the vision and motion models once (`encoders.load_vision` /
`load_motion` from the resolved model specs, on `device`: fp32 on CPU, fp16 on CUDA unless the spec
sets `dtype`); `.decode(path)` samples key frames and one-second chunks with its `sampler`
(`decode.VideoSampler`: the sampling settings and the frame sizes of these encoders, the configured
backend then the fallback, and the decode deadline that decode worker processes enforce), `.encode(decoded videos)` runs them through both encoders in
shared batches of `features.batch_size` frames or chunks, and `.features(path)` does both for one
video (`lmmvqa score` uses it for videos outside a manifest). A still image decodes to one key frame
and no chunks, and gets `still_motion()` (zeros) as its one motion row: its motion branch has a
defined input, not a fake clip run through the motion encoder. `lmmvqa extract` (extract.py) drives it
over a shard, with the decoding in worker processes (decode_pool.py).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from pipeline.core.errors import UserError
from pipeline.core.settings import NATIVE_MAX_SHORT_SIDE, FeatureSettings
from pipeline.features.encoding import encoders
from pipeline.core.deadline import DecodeDeadline
from pipeline.features.decoding.decode import VideoSampler
from pipeline.features.decoding.staging import stack_host


class Extractor:
    """Both encoders + the decode settings of the feature settings; decode once, encode many."""

    # two views of each key frame (`models.vision.whole_frame`): the decoder gives the whole frame (as in
    # `native` mode) and the vision model makes the `keyframe_mode` view from it
    whole_frame = False

    def __init__(self, features: "FeatureSettings", device: str | None = None, threads: int | None = None):
        self.settings = features
        threads = int(threads or 0)
        if threads > 0:
            torch.set_num_threads(threads)
        self.threads = threads
        self.device = encoders.resolve_device(device or "cpu")
        s = features.sampling
        self.sampling = s.hashed()
        self.backend, self.fallback = s.backend, s.fallback_backend
        self.batch_size = int(features.batch_size)
        self.whole_frame = bool(features.vision.spec.get("whole_frame"))
        t0 = time.perf_counter()
        self.vision, self.vision_info = encoders.load_vision(features.vision.as_dict(), self.device,
                                                             view=(s.keyframe_mode, s.fragment_grid))
        self.motion, self.motion_info = encoders.load_motion(features.motion.as_dict(), self.device,
                                                             slow_stride=s.slow_stride)
        self.load_s = time.perf_counter() - t0
        if self.native and self.vision_info.get("arch") in (None, "clip"):
            raise UserError("sampling.keyframe_mode: native gives key frames of each video's own size; the CLIP "
                            "vision tower takes one fixed size: use a CNN vision arch (mobilenet_v2, "
                            "efficientnet_lite0) or another keyframe_mode")
        self.key_size = int(self.vision_info["image_size"])
        self.chunk_size = int(self.motion_info["input_size"])
        self.sampler = VideoSampler(
            keyframe_fps=s.keyframe_fps, max_keyframes=s.max_keyframes, chunk_frames=s.chunk_frames,
            max_seconds=s.max_seconds, key_size=self.key_size, chunk_size=self.chunk_size,
            keyframe_mode="native" if self.whole_frame else s.keyframe_mode, fragment_grid=s.fragment_grid,
            native_max_short_side=int(s.native_max_short_side or NATIVE_MAX_SHORT_SIDE),
            backend=self.backend, fallback=self.fallback, threads=self.threads,
            deadline=DecodeDeadline.from_settings(s.decode_deadline))

    @property
    def native(self) -> bool:
        """Key frames of each video's own size (`keyframe_mode: native`, or two views): encoded video by video."""
        return self.sampling.get("keyframe_mode") == "native" or self.whole_frame

    @property
    def sampling_attrs(self) -> dict:
        return {**self.sampling, "key_size": self.key_size, "chunk_size": self.chunk_size,
                "backend": self.backend, "fallback_backend": self.fallback}

    def decode(self, path):
        return self.sampler.decode(path)

    def encode(self, decoded: list) -> tuple[list[tuple[np.ndarray, np.ndarray]], float, float]:
        """Encode several decoded videos in shared batches -> ([(spatial, motion)], vision_s, motion_s)."""
        kf = ([d.keyframes for d in decoded] if self.native  # each video at its own size
              else stack_host([d.keyframes for d in decoded], self.device))  # pinned on CUDA
        ch = stack_host([d.chunks for d in decoded], self.device)
        return self.encode_staged(kf, ch, [len(d.keyframes) for d in decoded], [len(d.chunks) for d in decoded],
                                  [d.chunk_ids for d in decoded])

    def encode_staged(self, kf, ch: np.ndarray, n_kf: list[int], n_ch: list[int],
                      chunk_ids: list) -> tuple[list[tuple[np.ndarray, np.ndarray]], float, float]:
        """`encode` of videos already staged one after the other in host buffers (`host_buffer`): key
        frames `kf` (in `native` mode a list, one array per video: sizes differ), chunks `ch`, `n_kf` /
        `n_ch` of them per video, and each video's chunk_ids."""
        t0 = time.perf_counter()
        spatial = encoders.encode_keyframes(self.vision, kf, self.device, self.batch_size)
        t1 = time.perf_counter()
        ids = np.concatenate(chunk_ids) if all(i is not None for i in chunk_ids) else None
        motion = encoders.encode_chunks(self.motion, ch, self.sampling["slow_stride"], self.device, self.batch_size,
                                        frame_ids=ids)
        t2 = time.perf_counter()
        kf_split, ch_split = np.cumsum(n_kf)[:-1], np.cumsum(n_ch)[:-1]
        motions = [m if n else self.still_motion() for m, n in zip(np.split(motion, ch_split), n_ch)]
        return list(zip(np.split(spatial, kf_split), motions)), t1 - t0, t2 - t1

    def still_motion(self) -> np.ndarray:
        """The motion features of a still image (decoded with no chunks): one row of zeros, "no motion".
        With the temporal-statistics encoder this is what a static video gives in every frame-difference
        statistic; the one other feature, distinct source frames per chunk frame, is 0 too: a still has
        no frames in time (a video has at least one per chunk)."""
        return np.zeros((1, int(self.motion_info["dim"])), np.float32)

    def features(self, path) -> tuple[np.ndarray, np.ndarray, dict]:
        d = self.decode(path)
        outs, vs, ms = self.encode([d])
        spatial, motion = outs[0]
        return spatial, motion, dict(d.meta, vision_s=round(vs, 4), motion_s=round(ms, 4))
