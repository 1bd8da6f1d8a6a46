"""Does the motion role see temporal distortions? Spatial-only vs spatial + motion, on cached features.

    .venv/bin/python benchmarks/bench_motion_ablation.py --workdir RUN --dataset demo \\
        --labels resources/demo/labels.csv [--out benchmarks/results/motion_ablation_demo.json]

Reads the feature stores a workflow run left in RUN (`RUN/results/config.resolved.yaml` names the
settings), pools each video into one vector (spatial: the mean over key frames of the mean over
tokens; motion: mean and std over seconds), and fits a ridge readout with cross-validation: folds by
the label file's `group` column when it has one (content-separated), else 5 seeded random folds.
The ridge alpha of each outer fold is chosen by inner cross-validation on its training folds only.
Reported: SRCC / PLCC (pipeline.core.metrics, logistic fit) of the pooled out-of-fold predictions, overall
and on the videos with temporal distortions (demo: `distortions` holds stutter, drops or judder;
realset-dev: `distortion` is stutter or combo_lowfps_crf), for spatial only and spatial + motion.
A readout, not the LMM: it isolates what the features carry.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.linalg import solve

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.core import paths  # noqa: E402
from pipeline.core.metrics import score_metrics  # noqa: E402
from pipeline.core import resolve  # noqa: E402
from pipeline.features.stores.store_reader import DatasetFeatures  # noqa: E402

TEMPORAL = {"distortions": ("stutter", "drops", "judder"), "distortion": ("stutter", "combo_lowfps_crf")}
ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)


def video_vectors(features: DatasetFeatures, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    spatial = np.stack([np.asarray(features.spatial(v), np.float32).mean((0, 1)) for v in ids])
    motion = []
    for v in ids:
        m = np.asarray(features.motion(v), np.float32)
        motion.append(np.concatenate([m.mean(0), m.std(0)]))
    return spatial, np.stack(motion)


def ridge(xtr, ytr, xte, alpha):
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    z, q = (xtr - mu) / sd, (xte - mu) / sd
    w = solve(z @ z.T + alpha * np.eye(len(z)), ytr - ytr.mean(), assume_a="pos")  # dual form: n << d
    return q @ (z.T @ w) + ytr.mean()


def _srcc(a, b):
    return pd.Series(a).rank().corr(pd.Series(b).rank())


def cross_validate(x, y, folds):
    pred = np.zeros(len(y))
    for k in np.unique(folds):
        tr, te = folds != k, folds == k
        inner = [f for f in np.unique(folds[tr])]

        def inner_score(alpha):
            s = [_srcc(ridge(x[tr & (folds != f)], y[tr & (folds != f)], x[folds == f], alpha), y[folds == f])
                 for f in inner]
            return np.nanmean(s)

        best = max(ALPHAS, key=inner_score)
        pred[te] = ridge(x[tr], y[tr], x[te], best)
    return pred


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", required=True, help="folder a workflow ran in (results/, cache/)")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--labels", required=True, help="the dataset's label file (name, mos, [group], distortion columns)")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    cfg = yaml.safe_load((work / "results" / "config.resolved.yaml").read_text())
    settings = resolve.of(cfg).features.hash
    stores = sorted((work / paths.store(args.dataset, settings, 0)).parent.glob("shard-*.zarr"))
    features = DatasetFeatures(stores)
    labels = pd.read_csv(args.labels)
    labels["id"] = labels["name"].map(lambda n: Path(n).stem)
    labels = labels[labels["id"].isin(set(features.ids))].reset_index(drop=True)
    y = labels["mos"].to_numpy(float)
    if "group" in labels:
        groups = sorted(labels["group"].unique())
        order = np.random.default_rng(0).permutation(len(groups))
        folds = labels["group"].map({g: int(order[i]) % args.k for i, g in enumerate(groups)}).to_numpy()
    else:
        folds = np.random.default_rng(0).permutation(len(labels)) % args.k
    col = next(c for c in TEMPORAL if c in labels)
    temporal = labels[col].fillna("").astype(str).apply(lambda s: any(t in s.split("+") or s == t for t in TEMPORAL[col]))
    spatial, motion = video_vectors(features, labels["id"].tolist())
    rows = []
    for name, x in (("spatial only", spatial), ("spatial + motion", np.concatenate([spatial, motion], 1)),
                    ("motion only", motion)):
        pred = cross_validate(x, y, folds)
        row = {"features": name, "dim": int(x.shape[1])}
        for subset, mask in (("all", np.ones(len(y), bool)), ("temporal", temporal.to_numpy())):
            m = score_metrics(pred[mask], y[mask], bootstrap=0)
            row[f"{subset}_n"] = int(mask.sum())
            row[f"{subset}_srcc"], row[f"{subset}_plcc"] = m["srcc"], m["plcc"]
        rows.append(row)
    table = pd.DataFrame(rows)
    print(f"{args.dataset}: {len(y)} videos, settings {settings}, folds by {'group' if 'group' in labels else 'video'}")
    print(table.to_markdown(index=False, floatfmt=".3f"))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"dataset": args.dataset, "settings": settings, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
