"""Host staging buffers of a forward-pass batch: decoded videos are copied once, as they arrive,
into buffers that are reused batch after batch.

On CUDA the buffers are page-locked (pinned), so the encoders' host-to-device copies
(`.to(device, non_blocking=True)`, one per forward pass) are asynchronous DMA. `BatchStage` gathers
the key frames and chunks of consecutive videos (in manifest order) until a batch is full (in
`keyframe_mode: native` the key frames of each video stay one array of their own: sizes differ);
`Extractor.encode_staged` then reads them in place. The bytes fed to the encoders are those of
`Extractor.encode` of the same videos (tests/test_extract.py).
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from pipeline.features.decoding.sampling import DecodedVideo


class StagedEncoder(Protocol):
    """What a `BatchStage` needs of the encoders it stages for (`extractor.Extractor` is one): their
    device, batch size and sampling settings, and `encode_staged` of the staged batch. Declared here so
    that staging, below the extractor, does not import it."""

    device: object
    native: bool
    batch_size: int
    sampling: dict

    def encode_staged(self, kf, ch: np.ndarray, n_kf: list[int], n_ch: list[int], chunk_ids: list) -> tuple: ...


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

    def __init__(self, ex: StagedEncoder):
        self.device = ex.device
        self.native = ex.native  # key frames of each video's own size: kept as one array per video
        self.kf_list: list[np.ndarray] = []
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
        if self.native:  # a copy: the pool's shared-memory slot is reused at once
            self.kf_list.append(np.array(d.keyframes, dtype=np.uint8, copy=True))
        else:
            self.kf = self._put(self.kf, self.n_kf, d.keyframes, self.room[0])
        self.ch = self._put(self.ch, self.n_ch, d.chunks, self.room[1])
        self.n_kf += len(d.keyframes)
        self.n_ch += len(d.chunks)
        self.counts[0].append(len(d.keyframes))
        self.counts[1].append(len(d.chunks))
        self.videos.append((vid, d.meta, d.chunk_ids))

    def full(self, batch_size: int) -> bool:
        return self.n_kf >= batch_size or self.n_ch >= batch_size

    def encode(self, ex: StagedEncoder):
        """-> ([(id, meta, spatial, motion)], vision_s, motion_s) of the staged videos; empties the stage."""
        kf = self.kf_list if self.native else self.kf[: self.n_kf]
        outs, vs, ms = ex.encode_staged(kf, self.ch[: self.n_ch], *self.counts,
                                        [ids for _, _, ids in self.videos])
        done = [(vid, meta, sp, mo) for (vid, meta, _), (sp, mo) in zip(self.videos, outs)]
        self.n_kf = self.n_ch = 0
        self.videos, self.counts, self.kf_list = [], ([], []), []
        return done, vs, ms
