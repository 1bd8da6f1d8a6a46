"""Training input throughput: Zarr feature stores vs a seed-style layout (one .npy per second per
video plus one per key frame), for the same batches.

    .venv/bin/python benchmarks/bench_train_io.py [--videos 64] [--batches 6] [--train-batches 3]

Builds a synthetic workspace with the tiny preset's shapes (197 tokens x 128 wide key frames, a
288-dim motion vector per second, 4-16 seconds per video) in a temporary folder, then measures
(1) loading only: samples/s of DataLoader batches (read + collate + tokenize), and (2) training:
samples/s of full optimizer steps of the default tiny model, reading from each layout. Prints a
table and writes benchmarks/results/train_io.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


class NpyFeatures:
    """Seed-style layout: <root>/<id>/kf_000.npy ... and sec_000.npy ..."""

    def __init__(self, root: Path):
        self.root = root

    def __contains__(self, vid):
        return (self.root / vid).is_dir()

    def spatial(self, vid):
        files = sorted((self.root / vid).glob("kf_*.npy"))
        return np.stack([np.load(f) for f in files])

    def motion(self, vid):
        files = sorted((self.root / vid).glob("sec_*.npy"))
        return np.stack([np.load(f) for f in files])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=64)
    ap.add_argument("--batches", type=int, default=6, help="loading-only batches per layout")
    ap.add_argument("--train-batches", type=int, default=3, help="training steps per layout")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train_io.json"))
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

    from test_train import make_workspace

    from pipeline.core import resolve
    from pipeline.model.lmm import LMMVQA
    from pipeline.training.data import Collator, QADataset, epoch_batches, experiment_data, load_training_tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_io-"))
    T, W, M = 197, 128, 288
    cfg = make_workspace(tmp, n_videos=args.videos, T=T, W=W, M=M, shard_size=32, llm={}, chunk_mb=2.0,
                         training={"batch_size": args.batch_size})
    os.chdir(tmp)
    s = resolve.of(cfg)
    data = experiment_data(s.experiment("exp"), s.datasets, s.features.hash)
    zarr_feats = data["features"]["syn"]
    npy_root = tmp / "npy"
    t0 = time.time()
    for vid in zarr_feats.ids:
        d = npy_root / vid
        d.mkdir(parents=True)
        for i, kf in enumerate(zarr_feats.spatial(vid)):
            np.save(d / f"kf_{i:03d}.npy", kf)
        for i, sec in enumerate(zarr_feats.motion(vid)):
            np.save(d / f"sec_{i:03d}.npy", sec)
    n_files = sum(1 for _ in npy_root.rglob("*.npy"))
    from pipeline.features.stores.store_reader import DatasetFeatures

    preloaded = DatasetFeatures([s.path for s in zarr_feats.stores])
    t0 = time.perf_counter()
    preloaded.preload(1 << 40)
    preload_s = time.perf_counter() - t0
    layouts = {"zarr": zarr_feats, "npy": NpyFeatures(npy_root), "zarr_preloaded": preloaded}
    samples = data["samples"]
    tok = load_training_tokenizer(s.models["llm"])
    model = LMMVQA.build(s.models["llm"], s.training, s.prompts, tok, {"vision_tokens": T, "vision_width": W,
                                                                       "motion_dim": M})
    collate = Collator(model.formatter)
    batches = epoch_batches(len(samples), args.batch_size, 0, 0)
    size = {"zarr": sum(f.stat().st_size for f in (tmp / "cache").rglob("*") if f.is_file()),
            "npy": sum(f.stat().st_size for f in npy_root.rglob("*.npy"))}
    size["zarr_preloaded"] = size["zarr"]

    def loader(feats, n):
        ds = QADataset(samples, {"syn": feats})
        return torch.utils.data.DataLoader(ds, batch_sampler=batches[:n], collate_fn=collate)

    results = {}
    for name, feats in layouts.items():  # warm the page cache equally, then measure
        for _ in loader(feats, 1):
            pass
    for name, feats in layouts.items():
        t = time.perf_counter()
        n = sum(len(b[1]) for b in loader(feats, args.batches))
        load_sps = n / (time.perf_counter() - t)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        t = time.perf_counter()
        n = 0
        for videos, ids, mask, labels, _ in loader(feats, args.train_batches):
            loss = model(videos, ids, mask, labels)
            loss.backward()
            opt.step()
            opt.zero_grad()
            n += len(ids)
        train_sps = n / (time.perf_counter() - t)
        results[name] = {"load_samples_per_s": round(load_sps, 2), "train_samples_per_s": round(train_sps, 2),
                         "bytes_on_disk": size[name]}
    results["npy"]["files"] = n_files
    results["zarr"]["files"] = sum(1 for f in (tmp / "cache").rglob("*") if f.is_file())
    results["zarr_preloaded"]["files"] = results["zarr"]["files"]
    results["zarr_preloaded"]["preload_s"] = round(preload_s, 3)
    keys = ("load_samples_per_s", "train_samples_per_s")
    ratio = {k: round(results["zarr"][k] / results["npy"][k], 3) for k in keys}
    ratio_pre = {k: round(results["zarr_preloaded"][k] / results["npy"][k], 3) for k in keys}
    report = {"videos": args.videos, "samples": len(samples), "batch_size": args.batch_size,
              "shapes": {"tokens": T, "width": W, "motion_dim": M}, "threads": torch.get_num_threads(),
              "results": results, "zarr_over_npy": ratio, "zarr_preloaded_over_npy": ratio_pre}
    print(f"{'layout':<14} {'files':>7} {'MB':>8} {'load samples/s':>15} {'train samples/s':>16}")
    for name in ("zarr", "zarr_preloaded", "npy"):
        r = results[name]
        print(f"{name:<14} {r['files']:>7} {r['bytes_on_disk'] / 1e6:>8.1f} {r['load_samples_per_s']:>15.1f} "
              f"{r['train_samples_per_s']:>16.1f}")
    print(f"zarr / npy: loading x{ratio['load_samples_per_s']}, training x{ratio['train_samples_per_s']}")
    print(f"zarr preloaded ({preload_s:.2f} s once) / npy: loading x{ratio_pre['load_samples_per_s']}, "
          f"training x{ratio_pre['train_samples_per_s']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
