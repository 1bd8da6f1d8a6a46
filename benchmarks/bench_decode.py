"""Decode stage vs `ffmpeg -f null` (every frame decoded) vs a seed-style two-pass baseline.

    .venv/bin/python benchmarks/bench_decode.py [--videos DIR ...] [--threads 2] [--repeat 2]

* ours: `pipeline.features.decoding.decode.sample_video` with the tiny preset's sizes (key frames 224, chunks 112,
  32 frames per second, 1 key frame per second), decord backend (and PyAV for comparison);
* ffmpeg: `ffmpeg -threads T -i V -f null -` (decodes every frame; no conversion, no scaling);
* seed-style: PyAV decodes every frame; the key frames are converted at full resolution, written to
  PNG and read back and resized (PIL), then a SECOND full decode converts every frame to RGB and
  resizes the 32 frames per second for the motion chunks.

Default videos: the six real clips plus, if present, the first 12 demo videos (resources/demo/videos).
Writes benchmarks/results/decode.json; ratios are baseline time / ours.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"
REAL = REPO.parent / "shared" / "datasets" / "real-clips"
DEMO = REPO / "resources" / "demo" / "videos"


def ours(path, threads, backend="decord"):
    from pipeline.features.decoding.decode import sample_video

    t0 = time.perf_counter()
    sample_video(path, key_size=224, chunk_size=112, chunk_frames=32, backend=backend, fallback=None, threads=threads)
    return time.perf_counter() - t0


def ffmpeg_null(path, threads):
    t0 = time.perf_counter()
    subprocess.run(["ffmpeg", "-v", "error", "-threads", str(threads), "-i", str(path), "-f", "null", "-"], check=True)
    return time.perf_counter() - t0


def seed_style(path, threads, tmpdir):
    import av
    from PIL import Image

    t0 = time.perf_counter()
    # pass 1: key frames (index = fps * (k + 0.5)) to PNG, read back, resize
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type, s.codec_context.thread_count = "AUTO", threads
        fps = float(s.average_rate or 25)
        frames = [f for f in c.decode(s)]  # noqa: C416  (seed style: every frame object kept)
    n = len(frames)
    seconds = max(1, int(n / fps))
    key = [min(n - 1, int(fps * (k + 0.5))) for k in range(min(16, seconds))]
    kfs = []
    for i in key:
        p = Path(tmpdir) / f"kf{i}.png"
        frames[i].to_image().save(p)
        kfs.append(np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.BICUBIC)))
    del frames
    # pass 2: decode again, every frame to RGB, chunks of 32 resized frames per second
    chunks = []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type, s.codec_context.thread_count = "AUTO", threads
        rgb = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
    for sec in range(min(16, seconds)):
        idx = np.linspace(sec * fps, min(n, (sec + 1) * fps) - 1, 32).round().astype(int)
        chunks.append(np.stack([np.asarray(Image.fromarray(rgb[i]).resize((112, 112), Image.BILINEAR)) for i in idx]))
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", nargs="*", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="best of N")
    args = ap.parse_args(argv)
    videos = [Path(v) for v in args.videos] if args.videos else sorted(REAL.glob("*.mp4")) + sorted(DEMO.glob("*"))[:12]
    ours(videos[0], args.threads)  # warm up imports
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for v in videos:
            r = {"video": v.name}
            for name, fn in (("ours_decord", lambda: ours(v, args.threads)), ("ours_pyav", lambda: ours(v, args.threads, "pyav")),
                             ("ffmpeg_null", lambda: ffmpeg_null(v, args.threads)),
                             ("seed_style", lambda: seed_style(v, args.threads, tmp))):
                r[name] = round(min(fn() for _ in range(args.repeat)), 4)
            rows.append(r)
            print(json.dumps(r), flush=True)
    tot = {k: sum(r[k] for r in rows) for k in ("ours_decord", "ours_pyav", "ffmpeg_null", "seed_style")}
    print(f"\n{'video':32s} {'ours(decord)':>12s} {'ours(pyav)':>11s} {'ffmpeg null':>11s} {'seed-style':>11s} {'ffmpeg/ours':>11s} {'seed/ours':>10s}")
    for r in rows + [{"video": f"TOTAL ({len(rows)} videos)", **tot}]:
        print(f"{r['video'][:32]:32s} {r['ours_decord']:12.3f} {r['ours_pyav']:11.3f} {r['ffmpeg_null']:11.3f} {r['seed_style']:11.3f} "
              f"{r['ffmpeg_null'] / r['ours_decord']:11.2f} {r['seed_style'] / r['ours_decord']:10.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"threads": args.threads, "repeat": args.repeat, "videos": rows, "total": {k: round(v, 3) for k, v in tot.items()},
           "ratio_ffmpeg_over_ours": round(tot["ffmpeg_null"] / tot["ours_decord"], 3),
           "ratio_seed_over_ours": round(tot["seed_style"] / tot["ours_decord"], 3)}
    (RESULTS / "decode.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
