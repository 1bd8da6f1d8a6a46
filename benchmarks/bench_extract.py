"""Extraction throughput (tiny and paper-sized random-weight encoders) and achieved model FLOP/s.

    .venv/bin/python benchmarks/bench_extract.py [--videos DIR] [--n-tiny 6] [--n-paper 1] [--threads 2]
    .venv/bin/python benchmarks/bench_extract.py --quality-probe      # tiny CLIP configs vs distortions

Throughput: `pipeline.features.extractor.Extractor` (decode once + both encoders) over real clips, reporting
videos/s, seconds per video-second and the split decode / vision / motion. FLOP/s: the forward FLOPs
of each encoder (torch.utils.flop_counter) over its measured time, against a plain fp32 torch matmul
on the same threads. The paper-sized architectures (CLIP ViT-L/14, SlowFast R50 at 224) are built
at random init through the same config-override path a user would take (`models.vision.config`).

--quality-probe: do random-init CLIP towers see low-level distortion? Key frames of the real clips,
blurred / noised / JPEG-blocked at 4 strengths (+ clean), go through each candidate tiny config; a
ridge readout of mean+std of the patch tokens predicts the strength, leave-one-clip-out; SRCC per
distortion and the forward cost per frame are reported.

Writes benchmarks/results/extract.json (and quality_probe.json).
"""
from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"
REAL = REPO.parent / "shared" / "datasets" / "real-clips"

PAPER_VISION = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                "image_size": 224, "patch_size": 14, "projection_dim": 768}
PAPER_MOTION = {"input_size": 224, "model_depth": 50, "stem_dim_out": 64, "slowfast_channel_reduction_ratio": 8}


def _features(paper_sized: bool):
    """The resolved feature settings of the tiny preset (paper-sized: the paper's encoder shapes)."""
    from pipeline.core import resolve

    cfg = {"datasets": {"x": {"format": "generic", "labels": "x.csv"}}, "models": {"preset": "tiny"}}
    if paper_sized:
        cfg["models"]["vision"] = {"config": PAPER_VISION}
        cfg["models"]["motion"] = {"config": PAPER_MOTION}
    return resolve.resolve(cfg).features


def _flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def matmul_flops(threads: int, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def bench_preset(name: str, videos: list[Path], threads: int) -> dict:
    from pipeline.features.encoding import encoders
    from pipeline.features.extractor import Extractor

    features = _features(name == "paper-sized")
    ex = Extractor(features, "cpu", threads)
    t_all = time.perf_counter()
    dec = vis = mot = 0.0
    seconds = n_kf = n_ch = 0
    for v in videos:
        t0 = time.perf_counter()
        d = ex.decode(v)
        dec += time.perf_counter() - t0
        _, vs, ms = ex.encode([d])
        vis, mot = vis + vs, mot + ms
        seconds += d.meta["duration"]
        n_kf, n_ch = n_kf + len(d.keyframes), n_ch + len(d.chunks)
    total = time.perf_counter() - t_all
    kf = np.zeros((1, ex.key_size, ex.key_size, 3), np.uint8)
    ch = np.zeros((1, features.sampling.chunk_frames, ex.chunk_size, ex.chunk_size, 3), np.uint8)
    f_vis = _flops(lambda: encoders.encode_keyframes(ex.vision, kf))
    f_mot = _flops(lambda: encoders.encode_chunks(ex.motion, ch, 4))
    return {
        "preset": name, "videos": len(videos), "video_seconds": round(seconds, 2), "load_s": round(ex.load_s, 2),
        "total_s": round(total, 2), "videos_per_s": round(len(videos) / total, 3),
        "s_per_video_second": round(total / seconds, 3), "decode_s": round(dec, 2), "vision_s": round(vis, 2),
        "motion_s": round(mot, 2), "keyframes": n_kf, "chunks": n_ch,
        "vision_gflop_per_frame": round(f_vis / 1e9, 3), "motion_gflop_per_chunk": round(f_mot / 1e9, 3),
        "vision_gflops": round(f_vis * n_kf / vis / 1e9, 1) if vis else None,
        "motion_gflops": round(f_mot * n_ch / mot / 1e9, 1) if mot else None,
        "vision": {k: ex.vision_info[k] for k in ("tokens", "width", "layers", "patch_size")},
        "motion_dim": ex.motion_info["dim"],
    }


# ---------------------------------------------------------------------------------------------
# Quality probe
# ---------------------------------------------------------------------------------------------
CANDIDATES = {
    "p16-w128-L2 (tiny)": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "patch_size": 16},
    "p32-w64-L2": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "patch_size": 32},
    "p16-w64-L2": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "patch_size": 16},
    "p16-w128-L1": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 1, "num_attention_heads": 4, "patch_size": 16},
    "p16-w256-L2": {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4, "patch_size": 16},
    "p14-w128-L2": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "patch_size": 14},
    "p8-w128-L2": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "patch_size": 8},
}


def _distort(img: np.ndarray, kind: str, s: float) -> np.ndarray:
    from PIL import Image, ImageFilter

    if s == 0:
        return img
    if kind == "blur":
        return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(0.4 + 2.6 * s)))
    if kind == "noise":
        rng = np.random.default_rng(int(s * 1000) + int(img[0, 0, 0]))
        return np.clip(img + rng.normal(0, 3 + 37 * s, img.shape), 0, 255).astype(np.uint8)
    if kind == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=int(round(40 - 35 * s)))
        return np.asarray(Image.open(buf).convert("RGB"))
    raise ValueError(kind)


def _ridge_loco(x: np.ndarray, y: np.ndarray, groups: np.ndarray, alpha: float = 10.0) -> np.ndarray:
    pred = np.zeros_like(y)
    for g in np.unique(groups):
        tr, te = groups != g, groups == g
        mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
        a = (x[tr] - mu) / sd
        w = np.linalg.solve(a.T @ a + alpha * len(a) * np.eye(a.shape[1]) / 100, a.T @ (y[tr] - y[tr].mean()))
        pred[te] = ((x[te] - mu) / sd) @ w + y[tr].mean()
    return pred


def quality_probe(threads: int, frames_per_clip: int = 4) -> dict:
    from scipy.stats import spearmanr

    from pipeline.features.decoding.decode import sample_video
    from pipeline.features.encoding.encoders import encode_keyframes, load_vision

    torch.set_num_threads(threads)
    clips = sorted(REAL.glob("*.mp4"))
    frames, groups = [], []
    for gi, c in enumerate(clips):
        kf = sample_video(c, key_size=224, chunk_size=32, chunk_frames=4, max_seconds=1).keyframes
        for k in np.linspace(0, len(kf) - 1, frames_per_clip).round().astype(int):
            frames.append(kf[k])
            groups.append(gi)
    levels = [0.125, 0.375, 0.625, 0.875]
    imgs, meta = [], []
    for f, g in zip(frames, groups):
        imgs.append(f)
        meta.append(("clean", 0.0, g))
        for kind in ("blur", "noise", "jpeg"):
            for s in levels:
                imgs.append(_distort(f, kind, s))
                meta.append((kind, s, g))
    imgs = np.stack(imgs)
    kinds = np.array([m[0] for m in meta])
    strength = np.array([m[1] for m in meta])
    grp = np.array([m[2] for m in meta])
    out = {"n_images": len(imgs), "n_contents": len(frames), "readout": "ridge on mean+std of patch tokens, leave-one-clip-out", "configs": {}}
    for name, conf in CANDIDATES.items():
        model, info = load_vision({"source": None, "config": {**conf, "image_size": 224, "projection_dim": 128}}, "cpu")
        t0 = time.perf_counter()
        h = encode_keyframes(model, imgs, batch_size=16)
        dt = (time.perf_counter() - t0) / len(imgs)
        patches = h[:, 1:]
        feat = np.concatenate([patches.mean(1), patches.std(1)], 1)
        row = {"tokens": info["tokens"], "width": info["width"], "ms_per_frame": round(1000 * dt, 1)}
        srccs = []
        for kind in ("blur", "noise", "jpeg"):
            sel = (kinds == kind) | (kinds == "clean")
            pred = _ridge_loco(feat[sel], strength[sel], grp[sel])
            r = float(spearmanr(pred, strength[sel]).statistic)
            row[f"srcc_{kind}"] = round(r, 3)
            srccs.append(r)
        # one readout for "how distorted" over all types (strength, clean = 0)
        pred = _ridge_loco(feat, strength, grp)
        row["srcc_all"] = round(float(spearmanr(pred, strength).statistic), 3)
        row["srcc_mean_types"] = round(float(np.mean(srccs)), 3)
        out["configs"][name] = row
        print(f"{name:22s} tokens {row['tokens']:4d} width {row['width']:4d} {row['ms_per_frame']:6.1f} ms/frame  "
              f"blur {row['srcc_blur']:.3f} noise {row['srcc_noise']:.3f} jpeg {row['srcc_jpeg']:.3f} all {row['srcc_all']:.3f}",
              flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", default=str(REAL))
    ap.add_argument("--n-tiny", type=int, default=6)
    ap.add_argument("--n-paper", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quality-probe", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.quality_probe:
        res = quality_probe(args.threads)
        (RESULTS / "quality_probe.json").write_text(json.dumps(res, indent=2))
        return 0
    videos = sorted(Path(args.videos).glob("*.mp4"))
    mm = matmul_flops(args.threads)
    rows = []
    for name, n in (("tiny", args.n_tiny), ("paper-sized", args.n_paper)):
        if n > 0:
            rows.append(bench_preset(name, videos[:n], args.threads))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nplain fp32 matmul (2048^3, {args.threads} threads): {mm / 1e9:.1f} GFLOP/s\n")
    hdr = f"{'preset':12s} {'videos':>6s} {'vid-s':>6s} {'videos/s':>9s} {'s/vid-s':>8s} {'decode':>7s} {'vision':>7s} {'motion':>7s} {'vis GF/s':>9s} {'mot GF/s':>9s} {'vis %mm':>8s} {'mot %mm':>8s}"
    print(hdr)
    for r in rows:
        print(f"{r['preset']:12s} {r['videos']:6d} {r['video_seconds']:6.1f} {r['videos_per_s']:9.3f} {r['s_per_video_second']:8.3f} "
              f"{r['decode_s']:7.2f} {r['vision_s']:7.2f} {r['motion_s']:7.2f} {r['vision_gflops']:9.1f} {r['motion_gflops']:9.1f} "
              f"{100 * r['vision_gflops'] * 1e9 / mm:7.0f}% {100 * r['motion_gflops'] * 1e9 / mm:7.0f}%")
    out = {"machine": platform.machine(), "threads": args.threads, "torch": torch.__version__,
           "matmul_gflops": round(mm / 1e9, 1), "results": rows}
    (RESULTS / "extract.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
