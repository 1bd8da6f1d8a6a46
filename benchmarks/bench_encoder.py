"""Does a quality adapter learned from synthetic variants (no MOS) add to the frozen vision features?

    .venv/bin/python benchmarks/bench_encoder.py [--setup realset-dev-loso realset-dev] \\
        [--objectives rank listwise rank_reg] [--seeds 0,1] [--synth synth-clips synth-real synth-demo] \\
        [--features-root cache/features] [--synth-root results/synth] [--set dim=16 --set steps=400] \\
        [--out benchmarks/results/bench_encoder.json]

Per setup (bench_head.py's folds: realset-dev leave one source out, realset-dev grouped 5-fold) and fold:

* the adapter (pipeline/features/encoding/quality_adapter.py) is trained on the frozen vision tokens of the synth
  variants (feature stores of the synth datasets under the same feature settings) and their VMAF
  labels, nothing else; synth variants whose reference shares the held-out fold's source (leave one
  source out) or segment group (grouped folds) are left out, so no content of the test fold trains it;
* ridge readouts (bench_head.ridge_fold: same standardisation, alpha by leave-one-training-fold-out)
  of: the base video vector (mean spatial token, motion mean + std), base ++ mean adapter embedding,
  the embedding alone; the adapter's own score on the test fold (zero-shot: no MOS at all); and the
  mean of the ranks of the base ridge prediction and that score (a late fusion, for comparison).

Prints a table (mean over folds and seeds) and writes JSON with every fold's numbers and the
adapter's training seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_head import SETUPS, _srcc, manifest_for, parse_sets, ridge_fold, video_vectors  # noqa: E402

# the synth variants left out per fold: those sharing the held-out fold's source / segment group; the
# demo's generated videos share no content with any synth reference, so every fold uses them all
EXCLUDE_BY = {"realset-dev-loso": "source", "realset-dev": "group", "demo": None}


def balanced(base: np.ndarray, emb: np.ndarray) -> np.ndarray:
    """base ++ embedding with the embedding's columns repeated so that both blocks carry the same number of
    standardised columns: the ridge penalty then weighs the two blocks alike instead of drowning a 16-column
    embedding among ~1,000 base columns (repeating k times = scaling the standardised block by sqrt(k))."""
    k = max(1, round(base.shape[1] / emb.shape[1]))
    return np.concatenate([base, np.repeat(emb, k, axis=1)], 1)


def stores_of(root: Path, dataset: str, settings: str) -> list[Path]:
    found = sorted((root / dataset / settings).glob("shard-*.zarr"))
    if not found:
        raise SystemExit(f"no feature stores under {root / dataset / settings}: extract {dataset} first")
    return found


def load_synth(names, synth_root: Path, features_root: Path, settings: str) -> pd.DataFrame:
    """One row per synth variant with its tokens: name, dataset, source, group, vmaf, tokens."""
    from pipeline.features.stores.store_reader import DatasetFeatures

    rows = []
    for name in names:
        labels = pd.read_csv(synth_root / name / "labels.csv")
        feats = DatasetFeatures(stores_of(features_root, name, settings))
        for r in labels.itertuples():
            vid = Path(r.name).stem
            if vid in feats:
                rows.append({"id": vid, "dataset": name, "source": r.source, "group": r.group,
                             "vmaf": float(r.vmaf), "tokens": np.asarray(feats.spatial(vid), np.float32)})
    return pd.DataFrame(rows)


def run_setup(setup: str, synth: pd.DataFrame, features_root: Path, objectives, seeds, settings: dict, log) -> dict:
    from pipeline.core import resolve
    from pipeline.core.config import load_config
    from pipeline.features.encoding import quality_adapter as qa
    from pipeline.features.stores.store_reader import DatasetFeatures

    config_file, dataset = SETUPS[setup]
    cfg = load_config(config_file)
    manifest = manifest_for(cfg, dataset)
    feats = DatasetFeatures(stores_of(features_root, dataset, resolve.of(cfg).features.hash))
    manifest = manifest[manifest["id"].isin(set(feats.ids))].reset_index(drop=True)
    ids, y, folds = manifest["id"].tolist(), manifest["mos"].to_numpy(float), manifest["fold"].to_numpy(int)
    base = video_vectors(feats, ids)
    tokens = [np.asarray(feats.spatial(v), np.float32) for v in ids]
    key = EXCLUDE_BY[setup]
    out = {"setup": setup, "config": config_file, "videos": len(ids), "exclude_by": key, "folds": {}}
    adapters = {}  # (held-out content, objective, seed) -> history, seconds, scores and embeddings of the videos
    for f in sorted(np.unique(folds)):
        held = set(manifest.loc[folds == f, key]) if key else set()
        train = synth[~synth[key].isin(held)] if key else synth
        te = folds == f
        row = {"held_out": sorted(held), "n_synth": len(train)}
        pred, _ = ridge_fold(base, y, folds, f)
        row["base"] = _srcc(pred, y[te])
        for obj in objectives:
            for seed in seeds:
                s = {**settings, "objective": obj, "seed": seed}
                k = (tuple(sorted(held)), obj, seed)
                if k not in adapters:
                    t0 = time.perf_counter()
                    adapter, hist = qa.train_adapter(list(train["tokens"]), train["vmaf"].to_numpy(), s)
                    adapters[k] = (hist, time.perf_counter() - t0, *qa.video_embeddings(adapter, tokens))
                hist, train_s, score, emb = adapters[k]
                pred_c, _ = ridge_fold(np.concatenate([base, emb], 1), y, folds, f)
                pred_e, _ = ridge_fold(emb, y, folds, f)
                pred_b, _ = ridge_fold(balanced(base, emb), y, folds, f)
                fused = pd.Series(pred).rank().to_numpy() + pd.Series(score[te]).rank().to_numpy()
                r = {"base+adapter": _srcc(pred_c, y[te]), "adapter": _srcc(pred_e, y[te]),
                     "rank_mean": _srcc(fused, y[te]), "balanced": _srcc(pred_b, y[te]),
                     "zero_shot": _srcc(score[te], y[te]), "train_s": round(train_s, 2),
                     "final_loss": float(np.mean([h["loss"] for h in hist[-20:]]))}
                row[f"{obj}/{seed}"] = r
                log(f"{setup} fold {f} ({','.join(map(str, sorted(held))) or 'no synth left out'}) {obj} seed {seed}: base {row['base']:.3f} "
                    f"base+adapter {r['base+adapter']:.3f} adapter {r['adapter']:.3f} zero-shot {r['zero_shot']:.3f} "
                    f"rank mean {r['rank_mean']:.3f} balanced {r['balanced']:.3f} "
                    f"({train_s:.1f} s)")
        out["folds"][str(f)] = row
    summary = {"base": float(np.mean([r["base"] for r in out["folds"].values()]))}
    for obj in objectives:
        for k in ("base+adapter", "balanced", "adapter", "zero_shot", "rank_mean", "train_s"):
            summary[f"{obj}:{k}"] = float(np.mean([r[f"{obj}/{s}"][k] for r in out["folds"].values() for s in seeds]))
        for k in ("base+adapter", "balanced", "zero_shot"):
            summary[f"{obj}:{k}:per_fold"] = {f: float(np.mean([r[f"{obj}/{s}"][k] for s in seeds]))
                                              for f, r in out["folds"].items()}
    summary["base:per_fold"] = {f: r["base"] for f, r in out["folds"].items()}
    out["summary"] = summary
    return out


ROWS = [("base+adapter", "ridge: base ++ embedding"), ("balanced", "ridge: base ++ embedding, blocks balanced"),
        ("adapter", "ridge: embedding alone"), ("zero_shot", "adapter score, no MOS"),
        ("rank_mean", "rank mean: base ridge + adapter score")]


def table(results: list[dict], objectives) -> str:
    lines = ["| setup | readout | objective | SRCC mean over folds | per fold | adapter train s |", "|---|---|---|---|---|---|"]
    for r in results:
        s = r["summary"]
        pf = " / ".join(f"{v:.2f}" for v in s["base:per_fold"].values())
        lines.append(f"| {r['setup']} | ridge: base | | {s['base']:.3f} | {pf} | |")
        for key, label in ROWS:
            for obj in objectives:
                per = s.get(f"{obj}:{key}:per_fold")
                pf = " / ".join(f"{v:.2f}" for v in per.values()) if per else ""
                lines.append(f"| {r['setup']} | {label} | {obj} | {s[f'{obj}:{key}']:.3f} | {pf} | "
                             f"{s[f'{obj}:train_s']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--setup", nargs="+", default=["realset-dev-loso", "realset-dev"], choices=sorted(EXCLUDE_BY))
    ap.add_argument("--objectives", nargs="+", default=["rank", "listwise", "rank_reg"])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--synth", nargs="+", default=["synth-clips", "synth-real"], help="synth datasets to train on")
    ap.add_argument("--features-root", default="cache/features", help="folder of <dataset>/<settings>/shard-*.zarr")
    ap.add_argument("--synth-features-root", default=None, help="same for the synth datasets (default --features-root)")
    ap.add_argument("--synth-root", default="results/synth", help="folder of <synth dataset>/labels.csv")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="adapter setting (YAML value)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "bench_encoder.json"))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    os.chdir(REPO)
    from pipeline.core import resolve

    settings = parse_sets(args.set)
    seeds = [int(s) for s in args.seeds.split(",")]
    froot = Path(args.features_root)
    t0 = time.perf_counter()
    synth = load_synth(args.synth, Path(args.synth_root), Path(args.synth_features_root or froot),
                       resolve.load(SETUPS[args.setup[0]][0]).features.hash)
    print(f"synth variants: {len(synth)} ({synth.groupby('dataset').size().to_dict()}), loaded in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    results = [run_setup(s, synth, froot, args.objectives, seeds, settings, lambda m: print(m, flush=True))
               for s in args.setup]
    print(table(results, args.objectives))
    commit = os.popen(f"git -C {REPO} rev-parse --short HEAD 2>/dev/null").read().strip()
    doc = {"command": " ".join(["benchmarks/bench_encoder.py", *(argv or sys.argv[1:])]), "commit": commit,
           "date": time.strftime("%Y-%m-%d %H:%M"), "settings": settings, "synth": args.synth,
           "n_synth": len(synth), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
