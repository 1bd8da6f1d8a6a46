"""How much quality signal do the cached features carry? A ceiling for any model trained on them.

    .venv/bin/python benchmarks/bench_feature_ceiling.py --config results/config.resolved.yaml \\
        --dataset demo --holdout 0 --out benchmarks/results/feature_ceiling.json [--no-torch] [--no-handcrafted]

Why: the LMM (projector + small LLM) sees the video only through the cached encoder features
(`cache/features/...`, read with `pipeline.features.stores.store_reader.dataset_features`). If a direct regression
from those features to MOS cannot rank the videos well, no amount of LMM training will; if it can,
the LMM training is the bottleneck. This script fits such direct readouts and reports what they reach.

Protocol: only the non-holdout folds are used (the holdout fold is the experiment's test fold and is
never read). Outer cross-validation leaves one non-holdout fold out at a time; every hyper-parameter
(ridge alpha, kernel width, early-stopping epoch) is chosen by an inner split of the training folds
only. Reported per readout: SRCC / PLCC (after the VQEG logistic, `pipeline.core.metrics.score_metrics`)
of the out-of-fold predictions pooled over all CV videos, and the mean / sd of the per-fold SRCC.

Readouts (same outer splits for all, seeded):
* ridge on pooled statistics of the tokens (alpha by inner leave-one-fold-out CV, highest mean
  inner SRCC; solved in the n x n dual with numpy):
  `sp_mean` / `sp_std` (per-channel mean / std of the patch tokens over tokens and key frames),
  `cls` (CLS token), `tok_std` (distribution of the per-token std across channels), `grid_diff`
  (mean |difference| of neighbouring patch tokens on the 14x14 grid, a high-frequency cue),
  `mo_mean` / `mo_std` (motion vectors over seconds), and unions of them;
* kernel ridge (RBF) on the same pooled sets: a nonlinear readout of the same statistics;
* a learned torch readout trained on the tokens themselves: a per-token MLP, then mean+std pooling
  over tokens and key frames (or an attention pool), optionally with a per-second MLP on the motion
  vectors, a linear head; AdamW with weight decay, early stopping on the inner validation fold,
  one model per inner fold, averaged;
* handcrafted reference (`--no-handcrafted` skips it; ~30 s of decoding): the same (kernel) ridge on
  simple per-key-frame image statistics (sharpness, noise, pixelation, blockiness, exposure) and
  chunk frame-difference statistics computed from the decoded videos, i.e. what a trivial hand-made
  representation reaches on the same videos (not a feature readout: excluded from "best");
* references (not feature readouts): the label noise ceiling (SRCC of the noise-free MOS formula
  with MOS) and a ridge on the true distortion strengths (an oracle representation): they show what
  194 training videos allow with a representation that does contain the signal.

Per-distortion SRCC of the best feature readout (highest mean per-fold SRCC): over the CV videos that
contain each distortion, SRCC of the prediction with MOS and with minus the distortion strength.
Strength probe: a CV kernel ridge from pooled feature sets (and the handcrafted set) to each distortion
strength, i.e. which distortions the representation encodes at all, whatever their MOS weight.

Runtime: about 2 minutes on 2 CPU cores (threads = 2; up to ~6 when the cores are shared), peak RSS
~1.4 GB; deterministic for a given --seed.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ALPHAS = np.logspace(-5, 3, 17)  # ridge penalties, on kernels scaled by 1 / n_features
SELECT_BY = "srcc"  # inner-CV criterion: mean SRCC over the inner validation folds ("mse" also works)
GAMMAS = (0.25, 1.0, 4.0)  # RBF widths, in units of 1 / n_features on standardised inputs
GRID = 14  # patch grid side of the tiny CLIP (224 / 16)
PROBE_SETS = ("spatial (mean+std+cls)", "sp_std+tok_std+grid_diff", "motion (mean+std)", "all",
              "handcrafted (decoded frames)")


# --------------------------------------------------------------------------------------- data

def load_table(cfg: dict, dataset: str, holdout: int) -> pd.DataFrame:
    """Manifest rows of the non-holdout folds joined with the label file (distortions, strengths)."""
    from pipeline.core import paths
    from pipeline.ingest.manifest import read_manifest

    manifest = read_manifest(paths.manifest(dataset))
    labels = pd.read_csv(REPO / cfg["datasets"][dataset]["labels"])
    labels = labels.drop(columns=["mos"]).rename(columns={"name": "path"})
    table = manifest.merge(labels, on="path", how="left", validate="one_to_one")
    table = table[table["fold"].astype(int) != holdout].reset_index(drop=True)
    table["distortions"] = table["distortions"].fillna("")
    return table


def _pad(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack variable-length [t, ...] arrays into [n, t_max, ...] float32 and a [n, t_max] mask."""
    t_max = max(len(a) for a in arrays)
    out = np.zeros((len(arrays), t_max, *arrays[0].shape[1:]), dtype=np.float32)
    mask = np.zeros((len(arrays), t_max), dtype=bool)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
        mask[i, : len(a)] = True
    return out, mask


def load_features(cfg: dict, dataset: str, ids: list[str]) -> dict:
    """Spatial tokens [n, kf, 197, d] and motion vectors [n, sec, m] (padded, float32) with masks."""
    from pipeline.core import resolve
    from pipeline.features.stores.store_reader import dataset_features

    feats, stores = dataset_features(resolve.of(cfg).features.hash, dataset)
    missing = [i for i in ids if i not in feats]
    if missing:
        raise SystemExit(f"{len(missing)} videos have no features, e.g. {missing[:3]}")
    spatial, kf_mask = _pad([feats.spatial(i) for i in ids])
    motion, sec_mask = _pad([feats.motion(i) for i in ids])
    return {"spatial": spatial, "kf_mask": kf_mask, "motion": motion, "sec_mask": sec_mask, "stores": stores}


# ------------------------------------------------------------------------- pooled statistics

def _masked_mean(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over axis 1 of x [n, t, ...] where mask [n, t]."""
    w = mask.reshape(mask.shape + (1,) * (x.ndim - 2)).astype(np.float32)
    return (x * w).sum(1) / w.sum(1)


def _masked_std(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    mean = _masked_mean(x, mask)
    return np.sqrt(_masked_mean((x - mean[:, None]) ** 2, mask))


def _grid_diff(patch: np.ndarray) -> np.ndarray:
    """[n, kf, 196, d] -> [n, kf, d]: mean |x - neighbour| over horizontal and vertical neighbours."""
    g = patch.reshape(*patch.shape[:2], GRID, GRID, patch.shape[-1])
    dh = np.abs(np.diff(g, axis=3)).mean((2, 3))
    dv = np.abs(np.diff(g, axis=2)).mean((2, 3))
    return (dh + dv) / 2


def _token_std_summary(patch: np.ndarray) -> np.ndarray:
    """[n, kf, 196, d] -> [n, kf, 7]: mean, std and 10/25/50/75/90 % quantiles of the per-token std."""
    s = patch.std(-1)
    q = np.quantile(s, [0.1, 0.25, 0.5, 0.75, 0.9], axis=-1).transpose(1, 2, 0)
    return np.concatenate([s.mean(-1, keepdims=True), s.std(-1, keepdims=True), q], -1)


def pooled_sets(data: dict) -> dict[str, np.ndarray]:
    """Named [n, dims] pooled feature sets (base sets and unions)."""
    sp, kf = data["spatial"], data["kf_mask"]
    patch = sp[:, :, 1:]
    base = {
        "sp_mean": _masked_mean(patch.mean(2), kf),
        "sp_std": _masked_mean(patch.std(2), kf),
        "cls": _masked_mean(sp[:, :, 0], kf),
        "tok_std": _masked_mean(_token_std_summary(patch), kf),
        "grid_diff": _masked_mean(_grid_diff(patch), kf),
        "mo_mean": _masked_mean(data["motion"], data["sec_mask"]),
        "mo_std": _masked_std(data["motion"], data["sec_mask"]),
    }
    unions = {
        "sp_mean+sp_std": ["sp_mean", "sp_std"],
        "spatial (mean+std+cls)": ["sp_mean", "sp_std", "cls"],
        "sp_std+tok_std+grid_diff": ["sp_std", "tok_std", "grid_diff"],
        "motion (mean+std)": ["mo_mean", "mo_std"],
        "all": list(base),
    }
    return base | {name: np.concatenate([base[p] for p in parts], 1) for name, parts in unions.items()}


# ------------------------------------------------------------------------------ metrics / CV

def metrics(pred: np.ndarray, mos: np.ndarray, folds: np.ndarray) -> dict:
    """Pooled out-of-fold metrics plus per-fold SRCC."""
    from pipeline.core.metrics import score_metrics

    m = score_metrics(pred, mos, bootstrap=0)
    per_fold = [float(stats.spearmanr(pred[folds == f], mos[folds == f]).statistic) for f in np.unique(folds)]
    return {"srcc": m["srcc"], "plcc": m["plcc"], "plcc_raw": m["plcc_raw"], "rmse": m["rmse"],
            "fold_srcc": per_fold, "srcc_mean": float(np.mean(per_fold)), "srcc_sd": float(np.std(per_fold))}


def cross_validate(fit_predict, x, y: np.ndarray, folds: np.ndarray) -> tuple[np.ndarray, list]:
    """Out-of-fold predictions and per-fold choices: fit_predict(x, y, train_idx, test_idx, train_folds),
    once per outer fold; train_folds (the fold of each training video) drives the inner CV."""
    pred = np.full(len(y), np.nan)
    chosen = []
    for f in np.unique(folds):
        tr, te = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        pred[te], info = fit_predict(x, y, tr, te, folds[tr])
        chosen.append(info)
    return pred, chosen


# ---------------------------------------------------------------------------------- (kernel) ridge

def _standardise(x_tr: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    return [(a - mu) / sd for a in (x_tr, *others)]


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a**2).sum(1)[:, None] + (b**2).sum(1)[None] - 2 * a @ b.T, 0.0)


def _kernels(x_tr: np.ndarray, x_te: np.ndarray, kind: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train x train, test x train) kernel pairs on standardised inputs, scaled by 1 / n_features.

    `linear`: x x' / d (kernel ridge with it is ridge regression, solved in the n x n dual, which is
    cheap here since n < d); `rbf`: exp(-gamma |x - x'|^2 / d), one pair per gamma in GAMMAS."""
    x_tr, x_te = _standardise(x_tr, x_te)
    d = x_tr.shape[1]
    if kind == "linear":
        return [(x_tr @ x_tr.T / d, x_te @ x_tr.T / d)]
    sq_tr, sq_te = _sq_dist(x_tr, x_tr) / d, _sq_dist(x_te, x_tr) / d
    return [(np.exp(-g * sq_tr), np.exp(-g * sq_te)) for g in GAMMAS]


def kernel_ridge_path(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, kind: str) -> np.ndarray:
    """Predictions on x_te for every (kernel, alpha) pair: [n_kernels * len(ALPHAS), n_te]."""
    y_mu = y_tr.mean()
    out = []
    for k_tr, k_te in _kernels(x_tr, x_te, kind):
        evals, evecs = np.linalg.eigh(k_tr)
        proj = evecs.T @ (y_tr - y_mu)
        coef = evecs @ (proj / (np.maximum(evals, 0)[None] + ALPHAS[:, None])).T  # [n_tr, alphas]
        out.append((k_te @ coef).T + y_mu)
    return np.concatenate(out)


def _inner_score(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-parameter selection score on one inner validation fold (higher is better)."""
    if SELECT_BY == "mse":
        return -((pred - y) ** 2).mean(1)
    r = stats.rankdata(pred, axis=1)
    r = r - r.mean(1, keepdims=True)
    ry = stats.rankdata(y) - (len(y) + 1) / 2
    return (r @ ry) / (np.linalg.norm(r, axis=1) * np.linalg.norm(ry) + 1e-12)


def kernel_ridge_factory(kind: str):
    """fit_predict for cross_validate: (kernel, alpha) chosen by leave-one-inner-fold-out CV."""
    def fit_predict(x, y, tr, te, inner):
        x_tr, y_tr = x[tr], y[tr]
        score = sum(_inner_score(kernel_ridge_path(x_tr[inner != f], y_tr[inner != f], x_tr[inner == f], kind),
                                 y_tr[inner == f]) for f in np.unique(inner))
        best = int(np.argmax(score))
        chosen = {"alpha": float(ALPHAS[best % len(ALPHAS)])}
        if kind == "rbf":
            chosen["gamma"] = GAMMAS[best // len(ALPHAS)]
        return kernel_ridge_path(x_tr, y_tr, x[te], kind)[best], chosen
    return fit_predict


# ------------------------------------------------------------------------ learned torch readout

class TokenReadout(torch.nn.Module):
    """Per-token MLP -> mean+std (or attention) pool over tokens and key frames [+ motion MLP] -> MOS."""

    def __init__(self, d_tok: int, d_mo: int | None, hidden: int, pool: str, dropout: float):
        super().__init__()
        self.tok = torch.nn.Sequential(torch.nn.Linear(d_tok, hidden), torch.nn.GELU(), torch.nn.Dropout(dropout),
                                       torch.nn.Linear(hidden, hidden))
        self.mo = None if d_mo is None else torch.nn.Sequential(
            torch.nn.Linear(d_mo, hidden), torch.nn.GELU(), torch.nn.Dropout(dropout), torch.nn.Linear(hidden, hidden))
        self.attn = torch.nn.Linear(hidden, 1) if pool == "attn" else None
        self.head = torch.nn.Sequential(torch.nn.Dropout(dropout),
                                        torch.nn.Linear(2 * hidden * (1 if d_mo is None else 2), 1))

    @staticmethod
    def _pool(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Weighted mean and std over the middle axis: h [b, t, c], w [b, t] summing to 1."""
        mean = (h * w[..., None]).sum(1)
        var = (((h - mean[:, None]) ** 2) * w[..., None]).sum(1)
        return torch.cat([mean, (var + 1e-6).sqrt()], -1)

    def forward(self, tokens, kf_mask, motion=None, sec_mask=None):
        b, t, p, _ = tokens.shape
        h = self.tok(tokens).reshape(b, t * p, -1)
        valid = kf_mask[:, :, None].expand(b, t, p).reshape(b, t * p)
        if self.attn is None:
            score = torch.zeros(b, t * p)
        else:
            score = self.attn(h).squeeze(-1)
        w = torch.softmax(score.masked_fill(~valid, float("-inf")), 1)
        z = [self._pool(h, w)]
        if self.mo is not None:
            wm = sec_mask.float() / sec_mask.float().sum(1, keepdim=True)
            z.append(self._pool(self.mo(motion), wm))
        return self.head(torch.cat(z, -1)).squeeze(-1)


def _tensors(data: dict, idx: np.ndarray, norm: dict) -> dict:
    return {"tokens": torch.from_numpy((data["spatial"][idx] - norm["tok_mu"]) / norm["tok_sd"]),
            "kf_mask": torch.from_numpy(data["kf_mask"][idx]),
            "motion": torch.from_numpy((data["motion"][idx] - norm["mo_mu"]) / norm["mo_sd"]),
            "sec_mask": torch.from_numpy(data["sec_mask"][idx])}


def _norm_stats(data: dict, idx: np.ndarray) -> dict:
    """Per-channel token / motion normalisation from the training videos' valid entries only."""
    tok = data["spatial"][idx][data["kf_mask"][idx]].reshape(-1, data["spatial"].shape[-1])
    mo = data["motion"][idx][data["sec_mask"][idx]]
    return {"tok_mu": tok.mean(0), "tok_sd": tok.std(0) + 1e-6, "mo_mu": mo.mean(0), "mo_sd": mo.std(0) + 1e-6}


def _forward(model, batch: dict, use_motion: bool) -> torch.Tensor:
    if use_motion:
        return model(batch["tokens"], batch["kf_mask"], batch["motion"], batch["sec_mask"])
    return model(batch["tokens"], batch["kf_mask"])


def train_one(data, y, tr, va, te, spec: dict, seed: int) -> tuple[np.ndarray, int]:
    """Train on tr (z-scored MOS), early-stop on va (val MSE); predictions on te (MOS units), best epoch."""
    torch.manual_seed(seed)
    norm = _norm_stats(data, tr)
    b_tr, b_va, b_te = (_tensors(data, i, norm) for i in (tr, va, te))
    n_tok = data["spatial"].shape[2]
    b_va["tokens"] = b_va["tokens"][:, :, torch.randperm(n_tok)[: spec["val_tokens"]]]  # fixed subset
    y_mu, y_sd = y[tr].mean(), y[tr].std()
    t_tr = torch.tensor((y[tr] - y_mu) / y_sd, dtype=torch.float32)
    t_va = torch.tensor((y[va] - y_mu) / y_sd, dtype=torch.float32)
    model = TokenReadout(data["spatial"].shape[-1], data["motion"].shape[-1] if spec["motion"] else None,
                         spec["hidden"], spec["pool"], spec["dropout"])
    opt = torch.optim.AdamW(model.parameters(), lr=spec["lr"], weight_decay=spec["weight_decay"])
    best, best_epoch, state = np.inf, 0, None
    for epoch in range(spec["epochs"]):
        model.train()
        for mb in np.array_split(np.random.default_rng(seed + epoch).permutation(len(tr)), spec["batches"]):
            batch = {k: v[mb] for k, v in b_tr.items()}
            batch["tokens"] = batch["tokens"][:, :, torch.randperm(n_tok)[: spec["train_tokens"]]]
            loss = torch.nn.functional.mse_loss(_forward(model, batch, spec["motion"]), t_tr[mb])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val = torch.nn.functional.mse_loss(_forward(model, b_va, spec["motion"]), t_va).item()
        if val < best:
            best, best_epoch, state = val, epoch, {k: v.clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= spec["patience"]:
            break
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        return _forward(model, b_te, spec["motion"]).numpy() * y_sd + y_mu, best_epoch


def torch_fit_predict_factory(spec: dict, seed: int):
    """fit_predict for cross_validate: one model per inner fold (early-stopped on it), averaged."""
    def fit_predict(data, y, tr, te, inner):
        preds, epochs = [], []
        for k, f in enumerate(np.unique(inner)):
            p, e = train_one(data, y, tr[inner != f], tr[inner == f], te, spec, seed + 100 * k + int(f))
            preds.append(p)
            epochs.append(e)
        return np.mean(preds, 0), {"best_epochs": epochs}
    return fit_predict


TORCH_SPECS = {
    "mlp-tokens, mean+std pool": dict(motion=False, pool="meanstd"),
    "mlp-tokens + motion-mlp, mean+std pool": dict(motion=True, pool="meanstd"),
    "mlp-tokens, attention pool": dict(motion=False, pool="attn"),
}
# train_tokens: tokens per key frame sampled at each training step; val_tokens: a fixed random subset used
# for early stopping (cost); test predictions pool all tokens
TORCH_DEFAULTS = dict(hidden=16, dropout=0.3, lr=1e-3, weight_decay=1.0, epochs=200, patience=30, batches=4,
                      train_tokens=32, val_tokens=64)


# ------------------------------------------------------------------- handcrafted reference

def _frame_stats(gray: np.ndarray) -> list[float]:
    """Sharpness, noise, pixelation, blockiness and exposure statistics of one grey frame [h, w] in 0..1."""
    dx, dy = np.abs(np.diff(gray, axis=1)), np.abs(np.diff(gray, axis=0))
    hh = np.abs(gray[1:, 1:] - gray[1:, :-1] - gray[:-1, 1:] + gray[:-1, :-1])
    half = gray[: gray.shape[0] // 2 * 2, : gray.shape[1] // 2 * 2].reshape(gray.shape[0] // 2, 2, -1, 2).mean((1, 3))
    return [dx.mean() + dy.mean(), np.percentile(dx, 99), np.median(hh) / 0.6745,  # sharpness, noise (MAD)
            (dx.mean() + 1e-6) / (np.abs(np.diff(half, axis=1)).mean() + 1e-6),  # fine / coarse gradient
            (dx < 1 / 255).mean(), dx[:, 7::8].mean() / (dx.mean() + 1e-6),  # flat runs, 8x8 blockiness
            gray.mean(), gray.std(), np.percentile(gray, 1), np.percentile(gray, 99),
            (gray < 0.02).mean(), (gray > 0.98).mean()]


def _chunk_stats(chunks: np.ndarray) -> list[float]:
    """Frame-difference statistics over the one-second chunks [s, f, h, w, 3] (freezes, jumps, jitter)."""
    gray = chunks.mean(-1) / 255.0
    d = np.abs(np.diff(gray, axis=1)).mean((2, 3)).ravel()
    return [d.mean(), d.std(), (d < 1e-3).mean(), np.percentile(d, 90) / (np.median(d) + 1e-6),
            np.abs(np.diff(d)).mean()]


def handcrafted_features(table: pd.DataFrame, videos_dir: Path, cfg: dict, threads: int) -> np.ndarray:
    """Per-video mean over key frames of _frame_stats plus _chunk_stats (decoded like the pipeline)."""
    from pipeline.features.decoding.decode import sample_video

    s = cfg["sampling"]
    rows = []
    for path in table["path"]:
        dec = sample_video(videos_dir / path, keyframe_fps=s["keyframe_fps"], max_keyframes=s["max_keyframes"],
                           chunk_frames=s["chunk_frames"], max_seconds=s["max_seconds"], key_size=224,
                           chunk_size=64, threads=threads)
        frames = [_frame_stats(k.mean(-1) / 255.0) for k in dec.keyframes]
        rows.append(np.r_[np.mean(frames, 0), np.std(frames, 0), _chunk_stats(dec.chunks)])
    x = np.asarray(rows, dtype=np.float64)
    return np.c_[x, np.log(np.abs(x) + 1e-6)]


# ------------------------------------------------------------------------------- per distortion

def per_distortion(table: pd.DataFrame, pred: np.ndarray) -> dict:
    """SRCC of pred with MOS and with -strength over the videos containing each distortion type."""
    names = sorted({d for ds in table["distortions"] for d in ds.split("+") if d})
    out = {}
    for name in ["none", *names]:
        has = (table["distortions"] == "") if name == "none" else table["distortions"].str.split("+").map(
            lambda ds, n=name: n in ds)
        has = has.to_numpy()
        row = {"n": int(has.sum()), "srcc_mos": None, "srcc_neg_strength": None}
        if has.sum() >= 3:
            row["srcc_mos"] = float(stats.spearmanr(pred[has], table["mos"].to_numpy()[has]).statistic)
            if name != "none":
                strength = table[f"s_{name}"].to_numpy()[has]
                row["srcc_neg_strength"] = float(stats.spearmanr(pred[has], -strength).statistic)
        out[name] = row
    return out


def strength_probe(sets: dict, table: pd.DataFrame, folds: np.ndarray, names: list[str]) -> dict:
    """Which distortions each feature set encodes: CV RBF kernel ridge from the set to each strength
    s_<d> (0 when absent), SRCC of the out-of-fold prediction with the strength over all CV videos."""
    fit = kernel_ridge_factory("rbf")
    out = {}
    for name in names:
        row = {}
        for col in [c for c in table.columns if c.startswith("s_")]:
            s = table[col].to_numpy(dtype=np.float64)
            pred, _ = cross_validate(fit, sets[name].astype(np.float64), s, folds)
            row[col[2:]] = float(stats.spearmanr(pred, s).statistic)
        out[name] = row
    return out


# ------------------------------------------------------------------------------------ driver

def run_ridge_readouts(sets: dict, y, folds, results: dict) -> dict:
    preds = {}
    for name, x in sets.items():
        for kind, fp in (("ridge", kernel_ridge_factory("linear")), ("kernel-ridge rbf", kernel_ridge_factory("rbf"))):
            t0 = time.perf_counter()
            pred, chosen = cross_validate(fp, x.astype(np.float64), y, folds)
            key = f"{kind} | {name}"
            results[key] = {"kind": kind, "features": name, "dims": int(x.shape[1]), "chosen": chosen,
                            "seconds": round(time.perf_counter() - t0, 2), **metrics(pred, y, folds)}
            preds[key] = pred
    return preds


def run_torch_readouts(data, y, folds, seed: int, results: dict) -> dict:
    preds = {}
    for name, extra in TORCH_SPECS.items():
        spec = TORCH_DEFAULTS | extra
        t0 = time.perf_counter()
        pred, chosen = cross_validate(torch_fit_predict_factory(spec, seed), data, y, folds)
        key = f"torch | {name}"
        results[key] = {"kind": "torch", "features": "tokens" + (" + motion" if spec["motion"] else ""),
                        "spec": spec, "chosen": chosen, "seconds": round(time.perf_counter() - t0, 1),
                        **metrics(pred, y, folds)}
        preds[key] = pred
        print(f"  {key}: SRCC {results[key]['srcc']:.3f} ({results[key]['seconds']} s)", flush=True)
    return preds


def references(table: pd.DataFrame, y, folds) -> dict:
    strengths = table[[c for c in table.columns if c.startswith("s_")]].to_numpy(dtype=np.float64)
    pred, chosen = cross_validate(kernel_ridge_factory("linear"), strengths, y, folds)
    return {"label noise ceiling: mos_formula vs mos": metrics(table["mos_formula"].to_numpy(), y, folds),
            "oracle: ridge on true distortion strengths": {"chosen": chosen, **metrics(pred, y, folds)}}


def _fmt(v, width: int = 6) -> str:
    return f"{'n/a':>{width}s}" if v is None else f"{v:{width}.3f}"


def print_table(results: dict, refs: dict) -> None:
    print(f"\n{'readout (sorted by mean per-fold SRCC)':64s} {'dims':>5s} {'SRCC':>6s} {'PLCC':>6s} "
          f"{'fold SRCC mean+-sd':>18s}")
    rows = sorted(results.items(), key=lambda kv: -kv[1]["srcc_mean"])
    rows += [("[reference] " + k, r) for k, r in refs.items()]
    for key, r in rows:
        print(f"{key:64s} {str(r.get('dims', '')):>5s} {_fmt(r['srcc'])} {_fmt(r['plcc'])} "
              f"{r['srcc_mean']:10.3f} +- {r['srcc_sd']:.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="results/config.resolved.yaml")
    ap.add_argument("--dataset", default="demo")
    ap.add_argument("--holdout", type=int, default=0, help="test fold: excluded from everything")
    ap.add_argument("--out", default="benchmarks/results/feature_ceiling.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True,
                    help="the learned torch readouts (--no-torch skips them)")
    ap.add_argument("--handcrafted", action=argparse.BooleanOptionalAction, default=True,
                    help="decode the videos for the handcrafted-statistics reference (~30 s)")
    args = ap.parse_args(argv)

    from pipeline.core.config import load_config

    torch.set_num_threads(args.threads)
    np.random.seed(args.seed)
    t_start = time.perf_counter()
    cfg = load_config(args.config)
    table = load_table(cfg, args.dataset, args.holdout)
    y, folds = table["mos"].to_numpy(dtype=np.float64), table["fold"].to_numpy(dtype=int)
    data = load_features(cfg, args.dataset, table["id"].tolist())
    print(f"{len(table)} videos, CV folds {sorted(int(f) for f in set(folds))} (holdout fold {args.holdout} not used); "
          f"spatial {data['spatial'].shape[1:]}, motion {data['motion'].shape[1:]}", flush=True)

    results: dict = {}
    sets = pooled_sets(data)
    if args.handcrafted:
        sets["handcrafted (decoded frames)"] = handcrafted_features(
            table, REPO / cfg["datasets"][args.dataset]["videos"], cfg, args.threads)
    preds = run_ridge_readouts(sets, y, folds, results)
    print(f"ridge readouts done ({time.perf_counter() - t_start:.0f} s)", flush=True)
    if args.torch:
        preds |= run_torch_readouts(data, y, folds, args.seed, results)
    refs = references(table, y, folds)

    feature_keys = [k for k in results if "handcrafted" not in k]
    best = max(feature_keys, key=lambda k: results[k]["srcc_mean"])
    per_dist = per_distortion(table, preds[best])
    probe = strength_probe(sets, table, folds, [n for n in PROBE_SETS if n in sets])
    runtime = time.perf_counter() - t_start
    print_table(results, refs)
    print(f"\nper distortion, best feature readout ({best}): n, SRCC with MOS, SRCC with -strength")
    for name, r in per_dist.items():
        print(f"  {name:12s} {r['n']:4d} {_fmt(r['srcc_mos'])} {_fmt(r['srcc_neg_strength'])}")
    print("\nstrength probe (CV kernel ridge -> s_<d>, SRCC with s_<d> over all CV videos)")
    for name, row in probe.items():
        print(f"  {name:30s} " + " ".join(f"{d} {v:.2f}" for d, v in row.items()))
    print(f"\nruntime {runtime:.0f} s")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "dataset": args.dataset, "holdout_fold": args.holdout, "cv_folds": sorted(int(f) for f in set(folds)),
        "n_videos": len(table), "feature_stores": data["stores"], "seed": args.seed, "threads": args.threads,
        "spatial_shape": list(data["spatial"].shape[1:]), "motion_shape": list(data["motion"].shape[1:]),
        "readouts": results, "references": refs, "best_feature_readout": best, "per_distortion": per_dist,
        "strength_probe": probe,
        "runtime_s": round(runtime, 1), "machine": platform.platform(),
    }, indent=1, default=float))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
