"""`lmmvqa extract`: decode each video of one manifest shard ONCE, encode key frames (CLIP) and
one-second chunks (SlowFast), write one Zarr feature store (see pipeline/store.py).

    lmmvqa extract --config C --dataset D --manifest results/manifest/D.csv --videos DIR --shard N \\
                   --out cache/features/D/<settings>/shard-0000N.zarr [--device cpu|cuda|auto] [--threads T]

* Models are loaded once per shard (`encoders.load_vision` / `load_motion` from the resolved model
  specs), on `--device` (default: the config's `device`), fp32 on CPU, fp16 on CUDA unless the spec
  sets `dtype`.
* Videos are decoded by `decode.sample_video` (decord, then the fallback backend) one video ahead in
  a background thread while the models run, and key frames / chunks of consecutive videos are
  batched together for the forward passes (`features.batch_size` frames or chunks per pass).
* A video that cannot be decoded (corrupt, truncated, empty, not a video, missing) is written to the
  store's failures table with the message; the shard still completes.
* The store is written to a temporary sibling folder and renamed when complete (StoreWriter).
  Attributes: dataset, shard, vision {source, config, tokens, width, ...}, motion {source, config,
  dim, ...}, sampling (+ key_size, chunk_size), settings_hash, code_version, device, per-video
  metadata (decode metadata + decode_s, vision_s, motion_s) and total timings.
* `CODE_VERSION` is the hash of the extraction code (decode.py, encoders.py, extract.py, store.py,
  presets.yaml), the value the workflow passes in `params:`.

`Extractor` is the reusable part (models + sampling settings): `Extractor.from_config(cfg, device)`
then `.features(path) -> (spatial [K, T, W] float32, motion [S, M] float32, meta)`; `lmmvqa score`
uses it for videos outside a manifest.
"""
from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .settings import SAMPLING_KEYS
from .versions import code_version

CODE_VERSION = code_version("extract")


class Extractor:
    """Both encoders + the decode settings of a config; decode once, encode many."""

    def __init__(self, cfg: dict, device: str | None = None, threads: int | None = None):
        import torch

        from . import encoders
        from .settings import model_spec

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

    @classmethod
    def from_config(cls, cfg: dict, device: str | None = None, threads: int | None = None) -> "Extractor":
        return cls(cfg, device, threads)

    @property
    def sampling_attrs(self) -> dict:
        return {**self.sampling, "key_size": self.key_size, "chunk_size": self.chunk_size,
                "backend": self.backend, "fallback_backend": self.fallback}

    def decode(self, path):
        from .decode import sample_video

        s = self.sampling
        return sample_video(path, keyframe_fps=s["keyframe_fps"], max_keyframes=s["max_keyframes"],
                            chunk_frames=s["chunk_frames"], max_seconds=s["max_seconds"], key_size=self.key_size,
                            chunk_size=self.chunk_size, backend=self.backend, fallback=self.fallback,
                            threads=self.threads, keyframe_mode=s["keyframe_mode"],
                            fragment_grid=s["fragment_grid"])

    def encode(self, decoded: list) -> tuple[list[tuple[np.ndarray, np.ndarray]], float, float]:
        """Encode several decoded videos in shared batches -> ([(spatial, motion)], vision_s, motion_s)."""
        from . import encoders

        kf = np.concatenate([d.keyframes for d in decoded])
        ch = np.concatenate([d.chunks for d in decoded])
        t0 = time.perf_counter()
        spatial = encoders.encode_keyframes(self.vision, kf, self.device, self.batch_size)
        t1 = time.perf_counter()
        ids = np.concatenate([d.chunk_ids for d in decoded]) if all(d.chunk_ids is not None for d in decoded) else None
        motion = encoders.encode_chunks(self.motion, ch, self.sampling["slow_stride"], self.device, self.batch_size,
                                        frame_ids=ids)
        t2 = time.perf_counter()
        kf_split = np.cumsum([len(d.keyframes) for d in decoded])[:-1]
        ch_split = np.cumsum([len(d.chunks) for d in decoded])[:-1]
        return list(zip(np.split(spatial, kf_split), np.split(motion, ch_split))), t1 - t0, t2 - t1

    def features(self, path) -> tuple[np.ndarray, np.ndarray, dict]:
        d = self.decode(path)
        outs, vs, ms = self.encode([d])
        spatial, motion = outs[0]
        return spatial, motion, dict(d.meta, vision_s=round(vs, 4), motion_s=round(ms, 4))


def _read_shard(manifest_csv, shard: int) -> pd.DataFrame:
    from .manifest import read_manifest

    df = read_manifest(manifest_csv)
    return df[df["shard"] == int(shard)].reset_index(drop=True)


def extract_shard(cfg: dict, dataset: str, manifest_csv, videos_dir, shard: int, out_store, device: str | None = None,
                  threads: int | None = None, progress: bool = True, prefetch: int = 1) -> dict:
    """Extract one shard into `out_store`. Returns a summary {n_videos, n_failed, timings...}."""
    from tqdm import tqdm

    from .settings import feature_settings_hash
    from .store import StoreWriter

    t_start = time.perf_counter()
    rows = _read_shard(manifest_csv, shard)
    videos_dir = Path(videos_dir) if videos_dir else None
    ex = Extractor(cfg, device, threads)
    f = cfg["features"]
    attrs = {
        "dataset": dataset, "shard": int(shard), "vision": ex.vision_info, "motion": ex.motion_info,
        "sampling": ex.sampling_attrs, "settings_hash": feature_settings_hash(cfg), "code_version": CODE_VERSION,
        "device": str(ex.device), "manifest": str(manifest_csv),
    }
    writer = StoreWriter(
        out_store, token_shape=(ex.vision_info["tokens"], ex.vision_info["width"]), motion_dim=ex.motion_info["dim"],
        attrs=attrs, spatial_dtype=f["spatial_dtype"], motion_dtype=f["motion_dtype"], compressor=f["compressor"],
        compression_level=f["compression_level"], chunk_mb=f["chunk_mb"],
    )
    totals = {"load_s": ex.load_s, "decode_s": 0.0, "vision_s": 0.0, "motion_s": 0.0, "write_s": 0.0}
    pending: list[tuple[str, object]] = []

    def flush():
        if not pending:
            return
        decoded = [d for _, d in pending]
        outs, vs, ms = ex.encode(decoded)
        totals["vision_s"] += vs
        totals["motion_s"] += ms
        n_kf = sum(len(d.keyframes) for d in decoded)
        n_ch = sum(len(d.chunks) for d in decoded)
        t0 = time.perf_counter()
        for (vid, d), (spatial, motion) in zip(pending, outs):
            meta = dict(d.meta, vision_s=round(vs * len(d.keyframes) / n_kf, 4),
                        motion_s=round(ms * len(d.chunks) / n_ch, 4))
            writer.add(vid, spatial, motion, meta)
        totals["write_s"] += time.perf_counter() - t0
        pending.clear()

    def decode_one(row):
        path = (videos_dir / row["path"]) if videos_dir else Path(row["path"])
        t0 = time.perf_counter()
        try:
            return row, ex.decode(path), None, time.perf_counter() - t0
        except Exception as exc:  # DecodeError and anything a broken file provokes in a decoder
            return row, None, f"{type(exc).__name__}: {exc}", time.perf_counter() - t0

    records = rows.to_dict("records")
    bar = tqdm(total=len(records), desc=f"extract {dataset} shard {int(shard)}", unit="video", file=sys.stderr,
               disable=not progress, mininterval=1.0)
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            futures = [pool.submit(decode_one, r) for r in records[: prefetch + 1]]
            nxt = len(futures)
            while futures:
                row, decoded, error, dt = futures.pop(0).result()
                if nxt < len(records):
                    futures.append(pool.submit(decode_one, records[nxt]))
                    nxt += 1
                totals["decode_s"] += dt
                if decoded is None:
                    writer.add_failure(row["id"], row["path"], "decode", error)
                    print(f"failed: {row['id']} ({row['path']}): {error}", file=sys.stderr)
                else:
                    pending.append((str(row["id"]), decoded))
                    if (sum(len(d.keyframes) for _, d in pending) >= ex.batch_size
                            or sum(len(d.chunks) for _, d in pending) >= ex.batch_size):
                        flush()
                bar.update(1)
            flush()
        bar.close()
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
    parser.add_argument("--config", required=True, help="workflow config (YAML)")
    parser.add_argument("--dataset", required=True, help="dataset name (recorded in the store)")
    parser.add_argument("--manifest", required=True, help="manifest CSV (columns id, path, shard, ...)")
    parser.add_argument("--videos", default=None, help="videos folder the manifest paths are relative to")
    parser.add_argument("--shard", type=int, required=True, help="shard number in the manifest")
    parser.add_argument("--out", required=True, help="feature store to write (shard-XXXXX.zarr)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: the config's)")
    parser.add_argument("--threads", type=int, default=None, help="torch + decoder threads (default: config 'threads')")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def main(args) -> int:
    from .config import load_config

    cfg = load_config(args.config)
    if args.videos and not Path(args.videos).is_dir():
        raise UserError(f"videos folder not found: {args.videos}")
    summary = extract_shard(cfg, args.dataset, args.manifest, args.videos, args.shard, args.out,
                            device=args.device, threads=args.threads, progress=not args.no_progress)
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    return 0
