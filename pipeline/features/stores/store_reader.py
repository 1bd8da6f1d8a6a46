"""Reading the Zarr feature stores written by pipeline/features/stores/store_writer.py: one shard (FeatureStore) or all
shards of a dataset (DatasetFeatures) as an id -> (spatial, motion) mapping, lazily per process,
preloaded into memory when they fit, or as lazy dask arrays for out-of-core statistics; what the
model needs to know of them (`feature_info`) and padded batches of their arrays (`collate_videos`).

Kept apart from the writer so that a change here reruns training and evaluation, not extraction.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
import zarr

from pipeline.core import paths
from pipeline.core.errors import FAILURE_COLUMNS, UserError
from pipeline.ingest.manifest import read_manifest


class IncompleteStoreError(RuntimeError):
    pass


class FeatureStore:
    """Read one shard store. Opens its zarr handles lazily per process (safe with DataLoader workers)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise IncompleteStoreError(f"{self.path}: not a feature store (no zarr.json)")
        group = zarr.open_group(str(self.path), mode="r")
        attrs = dict(group.attrs)
        if not attrs.get("complete"):
            raise IncompleteStoreError(f"{self.path}: store is incomplete (interrupted write?)")
        self.attrs = attrs
        self.ids: list[str] = list(attrs["ids"])
        self.index = {vid: i for i, vid in enumerate(self.ids)}
        self.kf_offsets = np.asarray(attrs["kf_offsets"], dtype=np.int64)
        self.sec_offsets = np.asarray(attrs["sec_offsets"], dtype=np.int64)
        self._pid = None
        self._group = None
        self._memory = None  # {"spatial": ndarray, "motion": ndarray} once preloaded

    def nbytes(self) -> int:
        """Uncompressed size of the feature arrays."""
        g = self._arrays()
        return int(g["spatial"].nbytes + g["motion"].nbytes)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the stored arrays: spatial [key frames, tokens, width], motion [seconds, dim]."""
        g = self._arrays()
        return {"spatial": tuple(g["spatial"].shape), "motion": tuple(g["motion"].shape)}

    def preload(self) -> None:
        """Read both arrays into memory in one sequential pass (each chunk decompressed once).

        Random per-video reads otherwise decompress a whole chunk (>= ~1 MB) for a few rows each
        time; training reads every video every epoch, so when the stores fit in memory this is what
        makes Zarr as fast as per-file layouts (benchmarks/bench_train_io.py).
        """
        g = self._arrays()
        self._memory = {"spatial": g["spatial"][:], "motion": g["motion"][:]}

    def _arrays(self):
        if self._memory is not None:
            return self._memory
        if self._pid != os.getpid():
            self._group = zarr.open_group(str(self.path), mode="r")
            self._pid = os.getpid()
        return self._group

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_group"] = None
        state["_pid"] = None
        return state

    def __contains__(self, vid: str) -> bool:
        return vid in self.index

    def __len__(self) -> int:
        return len(self.ids)

    def spatial(self, vid: str) -> np.ndarray:
        i = self.index[vid]
        return self._arrays()["spatial"][self.kf_offsets[i] : self.kf_offsets[i + 1]]

    def motion(self, vid: str) -> np.ndarray:
        i = self.index[vid]
        return self._arrays()["motion"][self.sec_offsets[i] : self.sec_offsets[i + 1]]

    def video_meta(self, vid: str) -> dict:
        return self.attrs["videos"][self.index[vid]]

    def media(self, vid: str) -> str:
        """image for an item decoded as a still (`still` in its metadata), else video."""
        return "image" if self.video_meta(vid).get("still") else "video"

    @property
    def failures(self) -> pd.DataFrame:
        return pd.read_csv(self.path / "failures.csv", dtype=str, keep_default_na=False)

    def dask_arrays(self):
        import dask.array as da

        g = self._arrays()
        return da.from_zarr(g["spatial"]), da.from_zarr(g["motion"])


class DatasetFeatures:
    """All shard stores of one dataset (same settings) as one id -> features mapping."""

    def __init__(self, paths: Iterable[str | Path]):
        self.stores = [FeatureStore(p) for p in sorted(map(str, paths))]
        self.where: dict[str, FeatureStore] = {}
        for store in self.stores:
            for vid in store.ids:
                self.where[vid] = store

    @property
    def ids(self) -> list[str]:
        return list(self.where)

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.stores)

    def preload(self, max_bytes: int) -> bool:
        """Hold every store in memory when they fit in `max_bytes` together; True when done."""
        if self.nbytes() > max_bytes:
            return False
        for s in self.stores:
            s.preload()
        return True

    def __contains__(self, vid: str) -> bool:
        return vid in self.where

    def spatial(self, vid: str) -> np.ndarray:
        return self.where[vid].spatial(vid)

    def motion(self, vid: str) -> np.ndarray:
        return self.where[vid].motion(vid)

    def media(self, vid: str) -> str:
        return self.where[vid].media(vid)

    @property
    def failures(self) -> pd.DataFrame:
        frames = [s.failures for s in self.stores]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=FAILURE_COLUMNS)

    def dask_spatial(self):
        import dask.array as da

        return da.concatenate([s.dask_arrays()[0] for s in self.stores], axis=0)

    def dask_motion(self):
        import dask.array as da

        return da.concatenate([s.dask_arrays()[1] for s in self.stores], axis=0)


def feature_moments(features: dict, ids: Iterable[tuple[str, str]], max_videos: int = 2000,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """Per-channel mean / std of the spatial tokens (over key frames and tokens) and of the motion
    vectors (over seconds) of (dataset, video id) pairs; a seeded sample of at most `max_videos`."""
    ids = sorted(set(ids))
    if len(ids) > max_videos:
        rng = np.random.default_rng(seed)
        ids = [ids[i] for i in sorted(rng.choice(len(ids), max_videos, replace=False))]
    acc = {}
    for dataset, vid in ids:
        f = features[dataset]
        for role, x in (("spatial", f.spatial(vid)), ("motion", f.motion(vid))):
            x = np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1])
            n, s, q = acc.get(role, (0, 0.0, 0.0))
            acc[role] = (n + len(x), s + x.sum(0), q + (x * x).sum(0))
    out = {}
    for role, (n, s, q) in acc.items():
        mean = s / max(n, 1)
        out[f"{role}_mean"] = mean.astype(np.float32)
        out[f"{role}_std"] = np.sqrt(np.maximum(q / max(n, 1) - mean * mean, 0)).astype(np.float32)
    return out


ROLE_KEYS = ("source", "config", "arch", "detail", "weights")  # what training keeps of an encoder's record


def feature_info(features) -> dict:
    """Vision width / tokens, motion dim and each encoder's record (source, config, and the provenance
    `arch`, `detail`, `weights`; pipeline/core/provenance.py) of a DatasetFeatures or FeatureStore,
    from the store attributes, else from the arrays' shapes."""
    stores = getattr(features, "stores", [features])
    if not stores:
        raise ValueError("no feature store")
    attrs = stores[0].attrs
    vision, motion = dict(attrs.get("vision") or {}), dict(attrs.get("motion") or {})
    tokens, width, dim = vision.get("tokens"), vision.get("width"), motion.get("dim")
    if tokens is None or width is None or dim is None:
        shapes = stores[0].shapes
        _, tokens, width = shapes["spatial"]
        dim = shapes["motion"][1]
    return {"vision_tokens": int(tokens), "vision_width": int(width), "motion_dim": int(dim),
            "vision": {k: vision.get(k) for k in ROLE_KEYS},
            "motion": {k: motion.get(k) for k in ROLE_KEYS}}


def collate_videos(items: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, torch.Tensor]:
    """[(spatial [K, T, Wv], motion [S, M]), ...] -> padded float32 tensors with time masks."""
    B = len(items)
    K = max(len(s) for s, _ in items)
    S = max(len(m) for _, m in items)
    T, W = items[0][0].shape[1:]
    M = items[0][1].shape[1]
    spatial = torch.zeros(B, K, T, W)
    motion = torch.zeros(B, S, M)
    smask = torch.zeros(B, K, dtype=torch.bool)
    mmask = torch.zeros(B, S, dtype=torch.bool)
    for i, (s, m) in enumerate(items):
        spatial[i, : len(s)] = torch.from_numpy(np.asarray(s, dtype=np.float32))
        motion[i, : len(m)] = torch.from_numpy(np.asarray(m, dtype=np.float32))
        smask[i, : len(s)] = True
        mmask[i, : len(m)] = True
    return {"spatial": spatial, "spatial_mask": smask, "motion": motion, "motion_mask": mmask}


def dataset_features(settings_hash: str, dataset: str, stores: list[str] | None = None):
    """(reader over the feature stores of a dataset, their paths): `stores` as given (a rule's declared
    inputs), else those of the manifest's shards that exist under the feature settings of
    `settings_hash` (`FeatureSettings.hash`)."""
    if stores:
        absent = [s for s in stores if not Path(s).is_dir()]
        if absent:
            raise UserError(f"feature store(s) of '{dataset}' not found: {', '.join(absent[:5])}")
        return DatasetFeatures(stores), [str(s) for s in stores]
    settings = settings_hash
    manifest = read_manifest(paths.manifest(dataset))
    stores = [paths.store(dataset, settings, s) for s in sorted(manifest["shard"].astype(int).unique())]
    present = [p for p in stores if p.exists()]
    if not present:
        raise UserError(f"no feature store of '{dataset}' under {paths.store_dir(dataset, settings)}")
    return DatasetFeatures(present), [str(p) for p in present]
