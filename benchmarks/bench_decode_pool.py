"""Decode-feed throughput of extraction with 1 vs 2 decode worker processes (encoders stubbed).

    .venv/bin/python benchmarks/bench_decode_pool.py [--videos DIR] [--copies 4] [--repeat 2]
                                                      [--configs 1:1 2:2 1:2 0:2] [--chunk-size 112]

What runs: `pipeline.features.extract.extract_shard` itself (decode pool, in-order consumption, shared-memory
slots, host staging buffers, store writer) on a manifest of the real clips (each listed `--copies`
times), with `pipeline.features.encoding.encoders.encode_keyframes` / `encode_chunks` replaced in this process by a
stub that records a CRC-32 of every frame it is fed and returns zeros. So the figure is what the
CPUs can feed to the encoders (on a GPU box the encoders take ~10-30 ms per video and the decode
side is the limit), and the frame digests prove that the per-video input of the encoders (hence the
features) is identical whatever the worker count.

A config W:T = W decode worker processes in a job of T threads (`--threads T`; each worker then
decodes with max(1, T // W) decoder threads; W = 0: today's single decode thread inside the job,
decoder threads = T). The headline ratio is 2:2 over 1:1 (one decoder thread per worker, so the
ratio measures the pool, not the decoder's own threading); 1:2 shows one worker given both cores
as decoder threads, 0:2 the in-process thread.
Throughput = videos / (total_s - load_s) of the shard (the pool starts while the models load).
Also reported: the decode workers' CPU seconds per video (process time of each worker, decoder
threads included), the feeding process's own CPU seconds per video (getrusage, all its threads) and
a "capacity" ratio = workers / CPU-s-per-video relative to the first config, which stays
meaningful when other jobs share the CPUs (the wall-clock ratio then does not).
The configs run alternately, `--repeat` times each, after one warm-up run (which starts the fork
server); the best run of each is reported, and the ratios of the best to the first config's.
Writes benchmarks/results/decode_pool.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"
REAL = REPO.parent / "shared" / "datasets" / "real-clips"


class StubEncoders:
    """Stands in for both encoders: a CRC-32 of every frame / chunk fed (cheap: it runs in the process
    being measured), zeros of the right shape returned."""

    def __init__(self):
        self.digests: list[str] = []

    def _digest(self, arr):
        arr = np.asarray(arr)
        self.digests.extend(f"{zlib.crc32(np.ascontiguousarray(a)):08x}" for a in arr)

    def keyframes(self, model, frames, device=None, batch_size=16):
        self._digest(frames)
        c = model.config
        return np.zeros((len(frames), (c.image_size // c.patch_size) ** 2 + 1, c.hidden_size), np.float32)

    def chunks(self, model, chunks, slow_stride=None, device=None, batch_size=4, frame_ids=None):
        self._digest(chunks)
        return np.zeros((len(chunks), model.slow_dim + model.fast_dim), np.float32)


def rows_of(manifest) -> list:
    import pandas as pd

    return pd.read_csv(manifest).to_dict("records")


def run_once(features, manifest, videos_dir, workers: int, threads: int, out_dir: Path) -> dict:
    """One shard through extract_shard with the encoders stubbed."""
    from pipeline.features.encoding import encoders
    from pipeline.features.extract import extract_shard
    from pipeline.features.stores.store_reader import FeatureStore

    stub = StubEncoders()
    saved = encoders.encode_keyframes, encoders.encode_chunks
    encoders.encode_keyframes, encoders.encode_chunks = stub.keyframes, stub.chunks
    try:
        out = out_dir / f"w{workers}-{time.monotonic_ns()}.zarr"
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        s = extract_shard(features, "bench", manifest, videos_dir, 0, out, device="cpu", threads=threads, progress=False,
                          decode_workers=workers)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        encoders.encode_keyframes, encoders.encode_chunks = saved
    ids = FeatureStore(out).ids
    feed_s = s["total_s"] - s["load_s"]
    return {"config": f"{workers}:{threads}", "workers": workers, "threads": threads, "videos": s["n_videos"], "failed": s["n_failed"], "feed_s": round(feed_s, 3),
            "videos_per_s": round(s["n_videos"] / feed_s, 3), "decode_s": s["decode_s"],
            "decode_wait_s": s["decode_wait_s"], "load_s": s["load_s"], "ids": ids,
            "decode_cpu_s": s.get("decode_cpu_s"),
            "cpu_s_per_video": round(s["decode_cpu_s"] / len(rows_of(manifest)), 4) if s.get("decode_cpu_s") else None,
            "main_cpu_s_per_video": round((r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
                                          / len(rows_of(manifest)), 4),
            "frames_digest": hashlib.sha256("".join(stub.digests).encode()).hexdigest()[:16],
            "n_frames_fed": len(stub.digests)}


def capacity(run: dict) -> float | None:
    """Videos/s the workers could decode with a free core each: workers / CPU seconds per video."""
    return run["workers"] / run["cpu_s_per_video"] if run["workers"] and run["cpu_s_per_video"] else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", default=str(REAL))
    ap.add_argument("--copies", type=int, default=4, help="times each clip is listed in the manifest")
    ap.add_argument("--repeat", type=int, default=2, help="runs per worker count (best is reported)")
    ap.add_argument("--configs", nargs="+", default=["1:1", "2:2", "1:2", "0:2"],
                    help="WORKERS:THREADS pairs; ratios are against the first")
    ap.add_argument("--chunk-size", type=int, default=None, help="motion chunk size (tiny: 112; paper: 224)")
    args = ap.parse_args(argv)

    import pandas as pd
    import torch

    from pipeline.core import resolve

    configs = [tuple(int(x) for x in c.split(":")) for c in args.configs]
    torch.set_num_threads(max(t for _, t in configs))
    clips = sorted(Path(args.videos).glob("*.mp4"))
    if not clips:
        print(f"no .mp4 videos in {args.videos}", file=sys.stderr)
        return 2
    cfg_in = {"datasets": {"bench": {"format": "generic", "labels": "x.csv"}}, "models": {"preset": "tiny"}}
    if args.chunk_size:
        cfg_in["models"]["motion"] = {"config": {"input_size": args.chunk_size}}
    features = resolve.resolve(cfg_in).features
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench_decode_pool-") as tmp:
        tmp = Path(tmp)
        rows = [(f"{c.stem}-{k}", c.name) for k in range(args.copies) for c in clips]
        manifest = tmp / "manifest.csv"
        pd.DataFrame({"id": [r[0] for r in rows], "path": [r[1] for r in rows], "shard": 0}).to_csv(manifest,
                                                                                                     index=False)
        w0, t0 = max(configs)
        warm = run_once(features, manifest, clips[0].parent, w0, t0, tmp)
        print(f"warm-up ({warm['config']}): {warm['videos_per_s']} videos/s", flush=True)
        runs = []
        for r in range(args.repeat):
            for w, t in configs:
                res = run_once(features, manifest, clips[0].parent, w, t, tmp)
                runs.append(res)
                print(f"run {r} config {res['config']}: {res['videos_per_s']:.3f} videos/s (feed {res['feed_s']:.2f} s, "
                      f"decode {res['decode_s']:.2f} s, waited {res['decode_wait_s']:.2f} s)", flush=True)
    names = [f"{w}:{t}" for w, t in configs]
    best = {n: max((x for x in runs if x["config"] == n), key=lambda x: x["videos_per_s"]) for n in names}
    identical = len({(tuple(x["ids"]), x["frames_digest"]) for x in runs + [warm]}) == 1
    base = best[names[0]]["videos_per_s"]
    print(f"\n{len(rows)} videos ({len(clips)} clips x {args.copies}), chunk size {args.chunk_size or 'tiny (112)'}")
    print(f"{'workers:threads':>15s} {'videos/s':>9s} {'feed s':>7s} {'decode s':>9s} {'waited s':>9s} "
          f"{'x vs ' + names[0]:>8s} {'cpu s/video':>11s} {'capacity x':>10s} {'main cpu s/video':>16s}")
    cap0 = capacity(best[names[0]])
    for n in names:
        b = best[n]
        cap = capacity(b)
        print(f"{n:>15s} {b['videos_per_s']:9.3f} {b['feed_s']:7.2f} {b['decode_s']:9.2f} {b['decode_wait_s']:9.2f} "
              f"{b['videos_per_s'] / base:8.2f} {b['cpu_s_per_video'] or float('nan'):11.3f} "
              f"{(cap / cap0) if cap and cap0 else float('nan'):10.2f} {b['main_cpu_s_per_video']:16.4f}")
    print("capacity x: workers / decode CPU seconds per video, relative to the first config: the speed-up the\n"
          "pool would give with one free core per worker (insensitive to other load on the machine)\n"
          "main cpu s/video: CPU time of this (the feeding) process per video, all its threads, encoder stub,\n"
          "model loading and store writing included")
    print(f"per-video encoder input identical across all runs: {identical} "
          f"({best[names[0]]['n_frames_fed']} frames / chunks, digest {runs[0]['frames_digest']})")
    out = {"machine": platform.machine(), "cpus": os.cpu_count(), "videos": len(rows), "clips": len(clips),
           "copies": args.copies, "repeat": args.repeat, "chunk_size": args.chunk_size,
           "load_avg_after": os.getloadavg(),
           "best": {n: {k: v for k, v in best[n].items() if k != "ids"} for n in names},
           "ratio": {n: round(best[n]["videos_per_s"] / base, 3) for n in names},
           "capacity_ratio": {n: round(capacity(best[n]) / cap0, 3) if capacity(best[n]) and cap0 else None
                              for n in names},
           "identical": identical, "runs": [{k: v for k, v in x.items() if k != "ids"} for x in runs]}
    (RESULTS / "decode_pool.json").write_text(json.dumps(out, indent=2))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
