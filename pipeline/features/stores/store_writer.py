"""Chunked Zarr v3 feature stores: one per (dataset, feature settings, shard), ragged time axes stored flat.

Layout of `shard-XXXXX.zarr/`:
  spatial  [n_keyframes_total, tokens, width]   CLIP last hidden state per key frame
  motion   [n_seconds_total, motion_dim]         SlowFast pooled slow+fast features per second
  attrs    ids, kf_offsets, sec_offsets (CSR, len n+1), per-video decode metadata, settings, timings,
           and `complete: true`, written last
  failures.csv   videos of the shard that could not be decoded, with the message

A store is written into a temporary sibling folder by one writer and renamed into place when
complete, so a reader never sees a partial store as whole. This module is the writer (what decides
the bytes of a store, part of extraction's code version); pipeline/features/stores/store_reader.py reads them.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import zarr
import zarr.codecs

from pipeline.core.errors import FAILURE_COLUMNS


def _compressors(name: str, level: int):
    if name == "zstd":
        return [zarr.codecs.ZstdCodec(level=level)]
    if name == "blosc":
        return [zarr.codecs.BloscCodec(cname="zstd", clevel=min(level, 9), shuffle="bitshuffle")]
    return None


def _rows_per_chunk(row_bytes: int, chunk_mb: float) -> int:
    return max(1, int(chunk_mb * 1024 * 1024 // max(row_bytes, 1)))


class _Appender:
    """Appends rows to a 1-D-ragged zarr array, writing whole chunks only (one writer, aligned writes)."""

    def __init__(self, group, name, row_shape, dtype, chunk_mb, compressors):
        self.dtype = np.dtype(dtype)
        self.rows = _rows_per_chunk(int(np.prod(row_shape)) * self.dtype.itemsize, chunk_mb)
        self.array = group.create_array(
            name, shape=(0, *row_shape), chunks=(self.rows, *row_shape), dtype=self.dtype, compressors=compressors
        )
        self.row_shape = tuple(row_shape)
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.written = 0

    def append(self, block: np.ndarray) -> None:
        block = np.asarray(block, dtype=self.dtype)
        if block.shape[1:] != self.row_shape:
            raise ValueError(f"{self.array.path}: row shape {block.shape[1:]} != {self.row_shape}")
        self.buffer.append(block)
        self.buffered += len(block)
        if self.buffered >= self.rows:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self.buffer:
            return
        data = np.concatenate(self.buffer)
        n_write = len(data) if final else (len(data) // self.rows) * self.rows
        if n_write:
            self.array.resize((self.written + n_write, *self.row_shape))
            self.array[self.written : self.written + n_write] = data[:n_write]
            self.written += n_write
        rest = data[n_write:]
        self.buffer = [rest] if len(rest) else []
        self.buffered = len(rest)

    def close(self) -> int:
        self._flush(final=True)
        return self.written


@dataclass
class StoreWriter:
    """Write one shard's features. Use as a context manager; `commit()` happens on clean exit."""

    path: Path
    token_shape: tuple[int, int]
    motion_dim: int
    attrs: dict = field(default_factory=dict)
    spatial_dtype: str = "float16"
    motion_dtype: str = "float16"
    compressor: str = "zstd"
    compression_level: int = 3
    chunk_mb: float = 2.0

    def __post_init__(self):
        self.path = Path(self.path)
        self.tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        for stale in self.path.parent.glob(f"{self.path.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.group = zarr.open_group(str(self.tmp), mode="w", zarr_format=3)
        comp = _compressors(self.compressor, self.compression_level)
        self._spatial = _Appender(self.group, "spatial", self.token_shape, self.spatial_dtype, self.chunk_mb, comp)
        self._motion = _Appender(self.group, "motion", (self.motion_dim,), self.motion_dtype, self.chunk_mb, comp)
        self.ids: list[str] = []
        self.kf_offsets = [0]
        self.sec_offsets = [0]
        self.videos: list[dict] = []
        self.failures: list[dict] = []

    def add(self, video_id: str, spatial: np.ndarray, motion: np.ndarray, meta: dict | None = None) -> None:
        if len(spatial) < 1 or len(motion) < 1:
            raise ValueError(f"{video_id}: a video needs at least one key frame and one motion chunk")
        self._spatial.append(spatial)
        self._motion.append(motion)
        self.ids.append(str(video_id))
        self.kf_offsets.append(self.kf_offsets[-1] + len(spatial))
        self.sec_offsets.append(self.sec_offsets[-1] + len(motion))
        self.videos.append(dict(meta or {}))

    def add_failure(self, video_id: str, path: str, stage: str, error: str) -> None:
        self.failures.append({"id": video_id, "path": path, "stage": stage, "error": str(error).strip()})

    def commit(self) -> Path:
        n_kf = self._spatial.close()
        n_sec = self._motion.close()
        assert n_kf == self.kf_offsets[-1] and n_sec == self.sec_offsets[-1]
        pd.DataFrame(self.failures, columns=FAILURE_COLUMNS).to_csv(self.tmp / "failures.csv", index=False)
        attrs = dict(self.attrs)
        attrs.update(
            ids=self.ids, kf_offsets=self.kf_offsets, sec_offsets=self.sec_offsets, videos=self.videos,
            n_videos=len(self.ids), n_failed=len(self.failures), complete=True,
        )
        self.group.attrs.update(json.loads(json.dumps(attrs, default=_jsonable)))
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False


def _jsonable(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
