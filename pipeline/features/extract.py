"""`lmmvqa extract`: decode each video of one manifest shard ONCE, encode its key frames (vision role)
and one-second chunks (motion role), and write one Zarr feature store (pipeline/features/stores/store_writer.py).

    lmmvqa extract --config C --dataset D --manifest results/manifest/D.csv --videos DIR --shard N \\
                   --out cache/features/D/<settings>/shard-0000N.zarr [--device cpu|cuda|auto] [--threads T]
                   [--decode-workers N] [--decode-deadline S]

* The models load once per shard (`extractor.Extractor`), while the decode workers start
  (`decode_pool.DecodePool`, `features.decode_workers` processes, default the job's threads).
* Videos come back from the pool in manifest order and are copied into the next batch's staging
  buffers (`staging.BatchStage`); a full batch goes through both encoders and its videos into the
  store. The store (order of videos, bytes of the features, batches of the forward passes) is the
  same whatever the worker count.
* A still image (pipeline/features/decoding/decode_image.py) is one key frame and the still's motion row (zeros,
  not encoded); its metadata says `still: true`.
* A video that cannot be decoded (corrupt, truncated, empty, not a video, missing, one that
  crashes its decoder, or one whose decode passes its deadline with every backend: `sampling.decode_deadline`,
  `--decode-deadline` for its base seconds) is written to the store's failures table with the
  message; the shard still completes.
* The store is written to a temporary sibling folder and renamed when complete (StoreWriter).
  Attributes: dataset, shard, vision and motion (the encoders' info: architecture, weights,
  config, tokens / width / dim), sampling (+ key_size, chunk_size, backend), settings_hash,
  code_version, device, per-video metadata (decode metadata + decode_s, vision_s, motion_s) and
  total timings (`decode_wait_s`: time the encoders waited for decoded videos).
* `CODE_VERSION` is `versions.code_version("extract")`, the hash of the extraction code, the value the
  workflow passes in `params:`.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from pipeline.cli_args import add_config_arg, add_decode_deadline_arg, add_device_arg, add_no_progress_arg
from pipeline.core import resolve
from pipeline.core.errors import UserError
from pipeline.core.settings import FeatureSettings
from pipeline.core.versions import code_version
from pipeline.features.decoding.decode_pool import DecodePool, decode_worker_count
from pipeline.features.extractor import Extractor
from pipeline.features.decoding.staging import BatchStage
from pipeline.features.stores.store_writer import StoreWriter
from pipeline.ingest.manifest import read_manifest

CODE_VERSION = code_version("extract")


def _read_shard(manifest_csv, shard: int) -> pd.DataFrame:
    df = read_manifest(manifest_csv)
    return df[df["shard"] == int(shard)].reset_index(drop=True)


def extract_shard(features: FeatureSettings, dataset: str, manifest_csv, videos_dir, shard: int, out_store,
                  device: str | None = None, threads: int | None = None, progress: bool = True,
                  prefetch: int | None = None, decode_workers: int | None = None) -> dict:
    """Extract one shard into `out_store` with the resolved feature settings. Returns a summary
    {n_videos, n_failed, timings...}.

    threads: torch + decoder threads (the command passes --threads, else the config's `threads`);
    decode_workers: decode processes (default `decode_worker_count`); prefetch: decoded videos waiting
    beyond one per worker (default one per worker)."""
    t_start = time.perf_counter()
    rows = _read_shard(manifest_csv, shard)
    videos_dir = Path(videos_dir) if videos_dir else None
    records = rows.to_dict("records")
    workers = min(decode_worker_count(features, threads, decode_workers), len(records))
    with DecodePool(workers, prefetch) as decoders:  # workers start while the models load
        ex = Extractor(features, device, threads)
        decoders.start(ex.sampler)
        f = features
        attrs = {
            "dataset": dataset, "shard": int(shard), "vision": ex.vision_info, "motion": ex.motion_info,
            "sampling": ex.sampling_attrs, "settings_hash": features.hash, "code_version": CODE_VERSION,
            "device": str(ex.device), "manifest": str(manifest_csv),
        }
        writer = StoreWriter(
            out_store, token_shape=(ex.vision_info["tokens"], ex.vision_info["width"]),
            motion_dim=ex.motion_info["dim"], attrs=attrs, spatial_dtype=f.spatial_dtype,
            motion_dtype=f.motion_dtype, compressor=f.compressor, compression_level=f.compression_level,
            chunk_mb=f.chunk_mb,
        )
        totals = {"load_s": ex.load_s, "decode_s": 0.0, "decode_wait_s": 0.0, "vision_s": 0.0, "motion_s": 0.0,
                  "write_s": 0.0, "decode_workers": workers}
        stage = BatchStage(ex)  # the next batch, staged as the videos arrive

        def flush():
            if not stage.videos:
                return
            n_kf, n_ch = stage.n_kf, stage.n_ch
            done, vs, ms = stage.encode(ex)
            totals["vision_s"] += vs
            totals["motion_s"] += ms
            t0 = time.perf_counter()
            for vid, meta, spatial, motion in done:
                meta = dict(meta, vision_s=round(vs * len(spatial) / n_kf, 4),  # a still's motion row is not encoded
                            motion_s=0.0 if meta.get("still") else round(ms * len(motion) / n_ch, 4))
                writer.add(vid, spatial, motion, meta)
            totals["write_s"] += time.perf_counter() - t0

        def video_path(row) -> str:
            return str((videos_dir / row["path"]) if videos_dir else Path(row["path"]))

        bar = tqdm(total=len(records), desc=f"extract {dataset} shard {int(shard)}", unit="video", file=sys.stderr,
                   disable=not progress, mininterval=1.0)
        try:
            queue: deque = deque()
            nxt = 0
            while nxt < len(records) and len(queue) < decoders.in_flight:
                queue.append((records[nxt], decoders.submit(video_path(records[nxt]))))
                nxt += 1
            while queue:  # manifest order, whatever order the workers finish in
                row, handle = queue.popleft()
                t0 = time.perf_counter()
                decoded, error, dt = decoders.result(handle, hold=True)  # frames: views on the slot
                totals["decode_wait_s"] += time.perf_counter() - t0
                try:
                    if decoded is not None:
                        stage.add(str(row["id"]), decoded)  # the one copy, slot -> staging buffer
                finally:
                    decoders.release(handle)
                ok, decoded = decoded is not None, None  # the views are invalid from here on
                if nxt < len(records):
                    queue.append((records[nxt], decoders.submit(video_path(records[nxt]))))
                    nxt += 1
                totals["decode_s"] += dt
                if not ok:
                    writer.add_failure(row["id"], row["path"], "decode", error)
                    print(f"failed: {row['id']} ({row['path']}): {error}", file=sys.stderr)
                elif stage.full(ex.batch_size):
                    flush()
                bar.update(1)
            flush()
            bar.close()
            if decoders.cpu_s is not None:  # CPU time of the decode workers (vs decode_s: contention)
                totals["decode_cpu_s"] = decoders.cpu_s
                totals["decode_crashes"] = decoders.crashes
                totals["decode_timeouts"] = decoders.timeouts
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
    add_config_arg(parser)
    parser.add_argument("--dataset", required=True, help="dataset name (recorded in the store)")
    parser.add_argument("--manifest", required=True, help="manifest CSV (columns id, path, shard, ...)")
    parser.add_argument("--videos", default=None, help="videos folder the manifest paths are relative to")
    parser.add_argument("--shard", type=int, required=True, help="shard number in the manifest")
    parser.add_argument("--out", required=True, help="feature store to write (shard-XXXXX.zarr)")
    add_device_arg(parser)
    parser.add_argument("--threads", type=int, default=None, help="torch + decoder threads (default: config 'threads')")
    parser.add_argument("--decode-workers", type=int, default=None,
                        help="decode worker processes (default: the config's features.decode_workers, else --threads)")
    add_decode_deadline_arg(parser)
    add_no_progress_arg(parser)


def main(args) -> int:
    s = resolve.load(args.config).with_decode_deadline(args.decode_deadline)
    if args.videos and not Path(args.videos).is_dir():
        raise UserError(f"videos folder not found: {args.videos}")
    summary = extract_shard(s.features, args.dataset, args.manifest, args.videos, args.shard, args.out,
                            device=args.device or s.device, threads=args.threads or s.threads,
                            progress=not args.no_progress,
                            decode_workers=args.decode_workers)
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    return 0
