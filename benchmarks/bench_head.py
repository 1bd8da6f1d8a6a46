"""The answer head side by side with a linear readout of its own features, on the same folds and seeds.

    .venv/bin/python benchmarks/bench_head.py [--setup clive-dev demo realset-dev realset-dev-loso] \\
        [--folds 0,1] [--seeds 0,1,2] [--set training.epochs=6 --set prompts.answer_format=integer ...] \\
        [--name NAME] [--out benchmarks/results/bench_head-NAME.json]
    .venv/bin/python benchmarks/bench_head.py --setup realset-dev-loso --seeds 0,1 \\
        --extra-train synth-real:all,synth-clips:all [--extra-config config/synth-dev.yaml] --name synth-s
    .venv/bin/python benchmarks/bench_head.py --table benchmarks/results/bench_head-*.json

Trains in this process from the feature stores a workflow run left in the working directory (run
`snakemake --cores 2`, `snakemake --cores 2 --configfile config/clive-dev.yaml` and
`snakemake --cores 2 --configfile config/realset-dev.yaml` once first), through
the same functions as `lmmvqa train` / `lmmvqa evaluate` (`training.train.new_model` + `fit`,
`evaluation.predict.predict_batch`, `core.metrics.compute_metrics`), so an alternative costs one
`--set`. Per setup (a config file, its dataset and its folds):

* the manifest is rebuilt in memory from the config (so a config folded differently, e.g. by source,
  needs no workflow run of its own); the Q&A samples, the question bank and the tokenizer are built in
  memory as the prompts / tokenizer stages would, under the variant's answer format; the training
  samples come in the order the prompt shards give them;
* per fold F: every other fold trains (validation split as `lmmvqa train` draws it, `training.val_seed`),
  fold F is scored (`evaluation` settings of the config: templates, constrained decoding);
* per (fold, seed): the LMM's probability score (SRCC, PLCC after the logistic fit, PLCC raw), its text
  score (SRCC, PLCC), level accuracy, invalid answers, training seconds;
* per fold: the ensemble of the seeds' models (probability scores and level probabilities averaged, text
  scores averaged, level by vote), which is what `experiments.<E>.ensemble: N` does;
* per fold: a ridge readout of the same features (per video: the mean of the spatial tokens over key
  frames and tokens, mean and std of the motion features over seconds; standardised on the training
  videos), fitted on the same training folds (all their videos: the LMM's training and validation
  videos), its alpha chosen by leave-one-training-fold-out SRCC; it does not depend on the seed.

Extra training data (`--extra-train DATASET:SUBSET,...`, datasets of `--extra-config`, e.g. the synth
sets of config/synth-dev.yaml): their manifests and feature stores come from a workflow run of that config
(`results/manifest/DATASET.csv`, same feature settings); per fold they join the training videos of both the
LMM (their prompt samples after the setup's, as `lmmvqa train` orders an experiment's train selectors) and
the ridge readout, less the videos that share the setup's `exclude_shared` column (source for leave one
source out, group for grouped folds) with the fold's test videos, found by the workflow's own
`prompts.selectors.shared_content` on the benchmark's folds. Variants of the extra data: a fixed share of
its videos (`--extra-fraction`), its labels mapped by rank onto the training folds' MOS distribution
(`--extra-map quantile`). The tokenizer is trained on the setup's and the extra datasets' samples.

Summary per setup: mean over all (fold, seed) runs; "std seeds" = the std (ddof 1) over seeds within a
fold, averaged over folds (and its maximum over folds); "std folds" = the std over folds of the per-fold
means; "pooled" = the SRCC of every fold's out-of-fold predictions ranked together (per seed, then the
mean and std over seeds; the ridge's once), which also counts whether the folds' models share a scale. Prints a table, writes JSON (every run's numbers and predictions' metrics).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

SETUPS = {  # name -> (config file, dataset); clive-dev (photos rated by people) is the yardstick
    "clive-dev": ("config/clive-dev.yaml", "clive-dev"),
    "clive-dev-native": ("config/clive-dev-native.yaml", "clive-dev"),  # native key frames, EfficientNet-Lite0
    # the same with a quality adapter learned from capture-like synth variants (SSIM labels; run that config first)
    "clive-dev-native-capture": ("config/clive-dev-native-capture.yaml", "clive-dev"),
    "demo": ("config.yaml", "demo"),
    "realset-dev": ("config/realset-dev.yaml", "realset-dev"),
    "realset-dev-loso": ("config/realset-dev-loso.yaml", "realset-dev"),
    # leave one source out with the quality adapter and prior (stores of its adapter: run that config first)
    "realset-dev-loso-quality": ("config/realset-dev-loso-quality.yaml", "realset-dev"),
}
# with extra training data: the column whose values a training video must not share with a test video
EXCLUDE_SHARED = {"realset-dev": "group", "realset-dev-loso": "source", "realset-dev-loso-quality": "source"}
ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)


def parse_sets(items: list[str]) -> dict:
    """["training.epochs=6", "prompts.answer_format=integer"] -> nested overrides (values as YAML)."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item}: expected key.path=value")
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def manifest_for(cfg: dict, dataset: str) -> pd.DataFrame:
    """The dataset's manifest as the manifest stage would build it from this config (in memory)."""
    import inspect

    from pipeline.ingest.manifest import build_manifest

    ds = cfg["datasets"][dataset]
    split = ds["split"]
    kwargs = dict(shard_size=cfg["features"]["shard_size"], k=split["k"], seed=split["seed"],
                  split_scheme=split["scheme"], mos_scale=ds["mos_scale"])
    params = inspect.signature(build_manifest).parameters
    if "group_by" in params and "group_by" in split:  # folding by a label column (e.g. source)
        kwargs["group_by"] = split["group_by"]
    manifest, _ = build_manifest(ds["format"], [ds["labels"], *ds["extra_labels"]], ds["videos"], **kwargs)
    return manifest


# ------------------------------------------------------------------ ridge readout

def video_vectors(features, ids: list[str]) -> np.ndarray:
    rows = []
    for v in ids:
        s = np.asarray(features.spatial(v), np.float32)
        m = np.asarray(features.motion(v), np.float32)
        rows.append(np.concatenate([s.mean((0, 1)), m.mean(0), m.std(0)]))
    return np.stack(rows)


def ridge(xtr, ytr, xte, alpha):
    from scipy.linalg import solve

    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    z, q = (xtr - mu) / sd, (xte - mu) / sd
    w = solve(z @ z.T + alpha * np.eye(len(z)), ytr - ytr.mean(), assume_a="pos")  # dual form: n << d
    return q @ (z.T @ w) + ytr.mean()


def _srcc(a, b) -> float:
    return float(pd.Series(a).rank().corr(pd.Series(b).rank()))


def ridge_fold(x, y, folds, test_fold, extra=None) -> tuple[np.ndarray, float]:
    """Predictions on `test_fold` of a ridge fitted on the other folds, alpha by leave-one-training-fold-out.
    `extra`: (x, y, {fold: mask of extra rows excluded while that fold is held out}) of extra training
    videos, used beside the training folds (inner folds too, less those sharing with either held-out fold)."""
    tr, te = folds != test_fold, folds == test_fold
    inner = [f for f in np.unique(folds[tr])]

    def fit_predict(rows, held, xq, alpha):
        xt, yt = x[rows], y[rows]
        if extra is not None:
            xe, ye, excluded = extra
            keep = ~np.logical_or.reduce([excluded[h] for h in held])
            xt, yt = np.concatenate([xt, xe[keep]]), np.concatenate([yt, ye[keep]])
        return ridge(xt, yt, xq, alpha)

    def inner_score(alpha):
        return np.nanmean([_srcc(fit_predict(tr & (folds != f), [test_fold, f], x[folds == f], alpha), y[folds == f])
                           for f in inner])

    best = max(ALPHAS, key=inner_score)
    return fit_predict(tr, [test_fold], x[te], best), best


# ------------------------------------------------------------------ extra training data

def load_extras(cfg: dict, selectors: list[str], extra_config: str, fraction: float, subset_seed: int = 0) -> dict:
    """Extra training datasets: {dataset: {"selector", "manifest" (the selector's rows, a fixed `fraction`
    of them, drawn with `subset_seed`), "features"}}; their configs are added to `cfg["datasets"]` (for the exclusion's selectors)."""
    from pipeline.core import paths, resolve
    from pipeline.core.config import load_config
    from pipeline.features.stores.store_reader import DatasetFeatures
    from pipeline.ingest.manifest import read_manifest
    from pipeline.prompts.selectors import parse_selector, select

    xcfg = load_config(extra_config, {})
    settings = resolve.of(cfg).features.hash
    if resolve.of(xcfg).features.hash != settings:
        raise SystemExit(f"--extra-config {extra_config}: feature settings differ from the setup's")
    out = {}
    for selector in selectors:
        dataset, _ = parse_selector(selector)
        if dataset not in xcfg["datasets"]:
            raise SystemExit(f"--extra-train {selector}: no dataset '{dataset}' in {extra_config}")
        if dataset in cfg["datasets"]:
            raise SystemExit(f"--extra-train {selector}: '{dataset}' is the setup's own dataset")
        cfg["datasets"][dataset] = xcfg["datasets"][dataset]
        if not paths.manifest(dataset).is_file():
            raise SystemExit(f"--extra-train {selector}: {paths.manifest(dataset)} not found: run the workflow on "
                             f"{extra_config} first")
        manifest = select(read_manifest(paths.manifest(dataset)), resolve.of(cfg).datasets, selector, None)
        if fraction < 1:  # a fixed share of the videos, the same for every fold and seed
            keep = np.random.default_rng(subset_seed).permutation(len(manifest))[:int(round(fraction * len(manifest)))]
            manifest = manifest.iloc[np.sort(keep)]
        stores = [paths.store(dataset, settings, s) for s in sorted(manifest["shard"].astype(int).unique())]
        missing = [str(st) for st in stores if not st.exists()]
        if missing:
            raise SystemExit(f"--extra-train {selector}: feature stores missing ({missing[0]} ...)")
        features = DatasetFeatures(stores)
        features.preload(4 << 30)
        manifest = manifest[manifest["id"].astype(str).isin(set(features.ids))].reset_index(drop=True)
        out[dataset] = {"selector": selector, "manifest": manifest, "features": features}
    return out


def excluded_extras(cfg: dict, dataset: str, manifest: pd.DataFrame, extras: dict, column: str | None,
                    fold: int) -> dict[str, np.ndarray]:
    """Per extra dataset, the mask of its videos left out while `fold` is held out: those sharing `column`
    with a test video, as `experiments.<E>.exclude_shared` leaves them out (`shared_content`)."""
    from pipeline.core import resolve
    from pipeline.prompts.selectors import shared_content

    if not column:
        return {d: np.zeros(len(e["manifest"]), bool) for d, e in extras.items()}
    c = copy.deepcopy(cfg)
    c["experiments"] = {"bench": {"train": [f"{dataset}:train", *[e["selector"] for e in extras.values()]],
                                  "test": [f"{dataset}:test"], "holdout_fold": int(fold), "exclude_shared": column}}
    given = {dataset: manifest, **{d: e["manifest"] for d, e in extras.items()}}
    s = resolve.of(c)
    videos = shared_content(s.experiment("bench"), s.datasets, manifests=given)["videos"]
    return {d: np.array([(d, str(i)) in videos for i in e["manifest"]["id"]], bool) for d, e in extras.items()}


def mapped_mos(mos: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`mos` mapped by rank onto the distribution of `reference` (its quantiles at the same mid-ranks)."""
    q = (pd.Series(mos).rank().to_numpy() - 0.5) / len(mos)
    return np.quantile(np.asarray(reference, float), q)


# ------------------------------------------------------------------ one setup

def ordered_training_samples(cfg: dict, samples: list[dict], dataset: str, fold: int,
                             selector: str | None = None) -> list[dict]:
    """The training samples of fold `fold` held out (of `selector`, default DATASET:train), in the order
    `lmmvqa train` reads them (prompt shard by prompt shard, as `prompts.selectors.prompt_parts` lists them)."""
    from pipeline.core import resolve
    from pipeline.prompts.selectors import prompt_parts

    by_part: dict[str, list[dict]] = {}
    for s in samples:
        by_part.setdefault(s["part"], []).append(s)
    out = []
    for part in prompt_parts(resolve.of(cfg).datasets, selector or f"{dataset}:train", fold):
        out += by_part.get(part, [])
    return out


def metrics_row(preds: pd.DataFrame) -> dict:
    from pipeline.core.metrics import compute_metrics

    m = compute_metrics(preds, bootstrap=0)
    p, t = m["methods"]["prob"], m["methods"]["text"]
    return {"n": m["n"], "prob_srcc": p["srcc"], "prob_plcc": p["plcc"], "prob_plcc_raw": p["plcc_raw"],
            "prob_rmse": p["rmse"], "text_srcc": t["srcc"], "text_plcc": t["plcc"], "text_plcc_raw": t["plcc_raw"],
            "level_accuracy": m["level"]["accuracy"], "invalid": m["invalid"],
            "prob_min": float(preds["prob_score"].min()), "prob_max": float(preds["prob_score"].max()),
            **prior_parts(preds)}


PRIOR_WEIGHTS = (0.0, 0.2, 0.3, 0.5, 0.7, 0.8, 1.0)


def prior_parts(preds: pd.DataFrame) -> dict:
    """With a quality prior (`training.quality_prior`): the SRCC of the model's own expected score, of the
    prior's score, and of their blend at other weights (the same trained model: only the blend changes)."""
    if "quality_score" not in preds or preds["quality_score"].isna().all():
        return {}
    lmm, q = preds["lmm_prob_score"].to_numpy(float), preds["quality_score"].to_numpy(float)
    mos = preds["mos"].to_numpy(float)
    return {"lmm_prob_srcc": _srcc(lmm, mos), "prior_srcc": _srcc(q, mos),
            "prior_blend_srcc": {str(w): _srcc((1 - w) * lmm + w * q, mos) for w in PRIOR_WEIGHTS}}


def ensemble_predictions(members: list[pd.DataFrame]) -> pd.DataFrame:
    """Averaged probability scores and level probabilities, averaged valid text scores, level by vote:
    what `predict_batch` does with a list of models (`experiments.<E>.ensemble`)."""
    from pipeline.core.levels import LEVELS
    from pipeline.evaluation.predict import majority_level

    base = members[0][["id", "mos", "level_true"]].copy()
    base["prob_score"] = np.mean([m["prob_score"].to_numpy(float) for m in members], 0)
    scores = np.array([pd.to_numeric(m["score"], errors="coerce").to_numpy(float) for m in members])
    with np.errstate(all="ignore"):
        base["score"] = np.nanmean(np.where(np.isfinite(scores), scores, np.nan), 0)
    base["invalid"] = ~np.isfinite(base["score"].to_numpy(float))
    probs = {lv: np.mean([m[f"p_{lv}"].to_numpy(float) for m in members], 0) for lv in LEVELS}
    base["level"] = [majority_level([m["level"].iat[i] for m in members if m["level"].iat[i]],
                                    {lv: probs[lv][i] for lv in LEVELS}) for i in range(len(base))]
    for lv in LEVELS:
        base[f"p_{lv}"] = probs[lv]
    return base


def run_setup(name: str, overrides: dict, folds: list[int] | None, seeds: list[int], ridge_only: bool,
              log, eval_variants: dict | None = None, curve: bool = False, extra: dict | None = None,
              drop_fold: int | None = None) -> list[dict]:
    """Results of one setup: one per evaluation variant ("" = the config's `evaluation`, then each of
    `eval_variants` {name: evaluation overrides}, scored with the same trained models). `extra`: extra
    training data {"selectors", "config", "fraction", "map", "exclude"} (see the module docstring).
    `drop_fold`: that fold's videos are left out of everything (training, ridge, tests), so the other
    folds are inner folds of its training data (bench_choose.py)."""
    import torch

    from pipeline.core import paths, resolve
    from pipeline.core.config import deep_merge, load_config
    from pipeline.features.stores.store_reader import DatasetFeatures
    from pipeline.model.tokenizer import load_tokenizer, train_tokenizer
    from pipeline.prompts.shards import build_samples, load_templates
    from pipeline.training.data import split_validation
    from pipeline.training.train import fit, new_model, training_feature_info, validation_seed
    from pipeline.training.validation import prob_srcc

    config_file, dataset = SETUPS[name]
    if not Path(config_file).exists():
        raise SystemExit(f"setup {name}: {config_file} not found")
    cfg = load_config(config_file, overrides)
    cfg["experiments"] = {}
    manifest = manifest_for(cfg, dataset)
    settings = resolve.of(cfg).features.hash
    stores = [paths.store(dataset, settings, s) for s in sorted(manifest["shard"].unique())]
    missing = [str(s) for s in stores if not s.exists()]
    if missing:
        raise SystemExit(f"setup {name}: feature stores missing ({missing[0]} ...): run the workflow on "
                         f"{config_file} first")
    features = DatasetFeatures(stores)
    features.preload(8 << 30)
    manifest = manifest[manifest["id"].isin(set(features.ids))].reset_index(drop=True)
    if drop_fold is not None:
        manifest = manifest[manifest["fold"] != drop_fold].reset_index(drop=True)
    k = cfg["datasets"][dataset]["split"]["k"]
    folds = [f for f in (range(k) if folds is None else folds) if f < k and f != drop_fold]
    fmt = cfg["prompts"]["answer_format"]
    bank = load_templates(cfg["prompts"]["templates"], fmt)
    samples = build_samples(manifest, dataset, cfg["prompts"]["seed"], cfg["prompts"]["questions"], bank, fmt)
    extra = extra or {}
    extras = load_extras(cfg, extra["selectors"], extra["config"], extra.get("fraction", 1.0),
                                                    extra.get("subset_seed", 0)) if extra.get("selectors") else {}

    def extra_samples(d, mos=None):
        m = extras[d]["manifest"] if mos is None else extras[d]["manifest"].assign(mos=mos)
        return build_samples(m, d, cfg["prompts"]["seed"], cfg["prompts"]["questions"], bank, fmt)

    vocab = samples + [x for d in extras for x in extra_samples(d)]
    llm = resolve.of(cfg).models["llm"]
    tokenizer = train_tokenizer(vocab, fmt) if llm.source is None else load_tokenizer(llm.source)
    all_features = {dataset: features, **{d: e["features"] for d, e in extras.items()}}
    info = training_feature_info(all_features)
    evals = {"": cfg["evaluation"], **{v: deep_merge(cfg["evaluation"], o) for v, o in (eval_variants or {}).items()}}

    ids = manifest["id"].tolist()
    fold_of = manifest["fold"].to_numpy(int)
    x, y = video_vectors(features, ids), manifest["mos"].to_numpy(float)
    column = extra.get("exclude", EXCLUDE_SHARED.get(name))
    excluded = {f: excluded_extras(cfg, dataset, manifest, extras, column, f) for f in range(k)} if extras else {}

    def extra_mos(d, f):  # an extra dataset's labels while fold f is held out (mapped onto its training MOS)
        mos = extras[d]["manifest"]["mos"].to_numpy(float)
        return mapped_mos(mos, y[fold_of != f]) if extra.get("map") == "quantile" else mos

    xe = {d: video_vectors(e["features"], e["manifest"]["id"].astype(str).tolist()) for d, e in extras.items()}
    ridge_res, ridge_pooled = {}, []
    for f in folds:
        ridge_extra = None
        if extras:
            ridge_extra = (np.concatenate(list(xe.values())), np.concatenate([extra_mos(d, f) for d in extras]),
                           {h: np.concatenate([excluded[h][d] for d in extras]) for h in excluded})
        pred, alpha = ridge_fold(x, y, fold_of, f, ridge_extra)
        te = fold_of == f
        ridge_pooled.append(pd.DataFrame({"prob_score": pred, "mos": y[te]}))
        r = metrics_row(pd.DataFrame({"id": np.array(ids)[te], "mos": y[te], "level_true": "", "score": pred,
                                      "invalid": False, "prob_score": pred, "level": ""}))
        n_extra = int(sum((~excluded[f][d]).sum() for d in extras)) if extras else 0
        ridge_res[str(f)] = {"srcc": r["prob_srcc"], "plcc": r["prob_plcc"], "plcc_raw": r["prob_plcc_raw"],
                             "alpha": alpha, "n_train": int((~te).sum()), "n_test": int(te.sum()), "n_extra": n_extra}
        log(f"{name} fold {f}: ridge SRCC {r['prob_srcc']:.3f} PLCC {r['prob_plcc']:.3f} (alpha {alpha:g}"
            f"{f'; + {n_extra} extra videos' if extras else ''})")
    extra_doc = {**extra, "exclude": column, "videos": {d: len(e["manifest"]) for d, e in extras.items()}} if extras else None
    results = {v: {"setup": name, "eval_variant": v, "config": config_file, "dataset": dataset, "folds": folds,
                   "seeds": seeds, "answer_format": fmt, "training": cfg["training"], "evaluation": ev,
                   "videos": len(ids), "extra": extra_doc, "ridge": ridge_res, "runs": [], "ensemble": {},
                   "pooled": {"ridge": pooled_srcc(ridge_pooled), "seeds": {}}}
               for v, ev in evals.items()}
    if ridge_only:
        return [results[""]]

    test_rows = manifest.set_index("id")
    pooled = {}  # (variant, seed) -> that seed's test predictions of every fold
    for f in folds:
        train_all = ordered_training_samples(cfg, samples, dataset, f)
        for d, e in extras.items():  # after the setup's own, as an experiment's later train selectors
            keep = set(e["manifest"]["id"].astype(str)[~excluded[f][d]])
            mine = [x for x in extra_samples(d, extra_mos(d, f)) if x["id"] in keep]
            train_all += ordered_training_samples(cfg, mine, d, f, e["selector"])
        test_ids = manifest.loc[manifest["fold"] == f, "id"].tolist()
        test_samples = [s for s in samples if s["id"] in set(test_ids)]
        members = {v: [] for v in evals}
        for seed in seeds:
            for v in evals:
                pooled.setdefault((v, seed), [])
            c = copy.deepcopy(cfg)
            c["training"] = deep_merge(c["training"], {"seed": int(seed)})
            plan = resolve.of(c)
            tr, llm = plan.training, plan.models["llm"]
            tr_s, val_s = split_validation(train_all, tr.val_fraction, validation_seed(tr))
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            points = []

            def monitor(step, model):  # learning curves: validation, and the test fold (diagnostic only)
                points.append({"step": step, "val_prob_srcc": prob_srcc(model, val_s, all_features),
                               "test_prob_srcc": prob_srcc(model, test_samples, all_features)})

            t0 = time.perf_counter()
            model = new_model(tr, llm, plan.prompts, tokenizer, info, tr_s, all_features)
            run = fit(tr, llm, model, tr_s, val_s, all_features, eval_batch_size=plan.evaluation.batch_size,
                      progress=False, name=f"{name}/fold{f}/seed{seed}",
                      monitor=monitor if curve else None)
            train_s = time.perf_counter() - t0
            model.eval()
            for v, ev in evals.items():
                t0 = time.perf_counter()
                preds = predict(model, features, test_ids, bank, c["prompts"]["seed"], ev, test_rows)
                eval_s = time.perf_counter() - t0
                members[v].append(preds)
                pooled[(v, seed)].append(preds)
                row = {"fold": f, "seed": seed, **metrics_row(preds), "train_s": round(train_s, 1),
                       "eval_s": round(eval_s, 1), "steps": run["step"], "selection": run["selection"],
                       "n_train_videos": len({(s["dataset"], s["id"]) for s in tr_s}),
                       "n_extra_videos": len({(s["dataset"], s["id"]) for s in tr_s if s["dataset"] != dataset}),
                       "n_val_videos": len({(s["dataset"], s["id"]) for s in val_s}),
                       "curve": points}
                results[v]["runs"].append(row)
                log(f"{name}{'+' + v if v else ''} fold {f} seed {seed}: prob SRCC {row['prob_srcc']:.3f} "
                    + (f"(model {row['lmm_prob_srcc']:.3f}, prior {row['prior_srcc']:.3f}) " if "prior_srcc" in row else "")
                    + f"PLCC {row['prob_plcc']:.3f} raw {row['prob_plcc_raw']:.3f}; text SRCC {_f(row['text_srcc'])}; "
                    f"level {row['level_accuracy']:.3f}; invalid {row['invalid']}; train {train_s:.0f} s, eval {eval_s:.0f} s")
        for v in evals:
            if len(members[v]) > 1:
                ens = metrics_row(ensemble_predictions(members[v]))
                results[v]["ensemble"][str(f)] = ens
                log(f"{name}{'+' + v if v else ''} fold {f} ensemble of {len(members[v])}: prob SRCC "
                    f"{ens['prob_srcc']:.3f} PLCC {ens['prob_plcc']:.3f}")
    for (v, seed), parts in pooled.items():
        results[v]["pooled"]["seeds"][str(seed)] = pooled_srcc(parts)
    for r in results.values():
        r["summary"] = summarise(r)
    return list(results.values())


def pooled_srcc(parts: list[pd.DataFrame]) -> dict:
    """SRCC of the out-of-fold predictions of every fold pooled into one ranking (prob and, where there is
    one, text): unlike the per-fold mean it also counts how well the folds' scales agree."""
    if not parts:
        return {}
    p = pd.concat(parts, ignore_index=True)
    out = {"n": len(p), "prob_srcc": _srcc(p["prob_score"].to_numpy(float), p["mos"].to_numpy(float))}
    if "score" in p:
        text = pd.to_numeric(p["score"], errors="coerce")
        ok = text.notna().to_numpy()
        out["text_srcc"] = _srcc(text[ok].to_numpy(float), p["mos"].to_numpy(float)[ok]) if ok.sum() > 2 else None
    return out


def predict(model, features, test_ids, bank, prompt_seed, ev, test_rows) -> pd.DataFrame:
    """Prediction rows of the test videos (as `lmmvqa evaluate` makes them), with mos and level_true."""
    from pipeline.evaluation.predict import predict_batch
    from pipeline.features.stores.store_reader import collate_videos

    rows = []
    for i in range(0, len(test_ids), ev["batch_size"]):
        chunk = test_ids[i:i + ev["batch_size"]]
        batch = collate_videos([(features.spatial(v), features.motion(v)) for v in chunk])
        rows += predict_batch(model, batch, chunk, bank=bank, seed=prompt_seed, templates=ev["templates_per_video"],
                              max_new_tokens=ev["max_new_tokens"], decoding=ev["decoding"],
                              media=[features.media(v) for v in chunk])
    preds = pd.DataFrame(rows)
    preds.insert(1, "mos", test_rows.loc[preds["id"], "mos"].to_numpy(float))
    preds.insert(2, "level_true", test_rows.loc[preds["id"], "level"].to_numpy())
    return preds


def _f(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"


def _std(v) -> float | None:
    v = [x for x in v if x is not None and np.isfinite(x)]
    return float(np.std(v, ddof=1)) if len(v) > 1 else None


def summarise(result: dict) -> dict:
    runs = pd.DataFrame(result["runs"])
    out = {"ridge_srcc": float(np.mean([r["srcc"] for r in result["ridge"].values()])),
           "ridge_plcc": float(np.mean([r["plcc"] for r in result["ridge"].values()])),
           "ridge_srcc_std_folds": _std([r["srcc"] for r in result["ridge"].values()])}
    pooled = result.get("pooled") or {}
    if pooled.get("ridge"):
        out["ridge_pooled_srcc"] = pooled["ridge"]["prob_srcc"]
    if not len(runs):
        return out
    per_seed = list((pooled.get("seeds") or {}).values())
    if per_seed:
        for key in ("prob_srcc", "text_srcc"):
            vals = [s_[key] for s_ in per_seed if s_.get(key) is not None]
            out[f"pooled_{key}"] = float(np.mean(vals)) if vals else None
            out[f"pooled_{key}_std_seeds"] = _std(vals)
    for key in ("prob_srcc", "prob_plcc", "prob_plcc_raw", "text_srcc", "text_plcc", "level_accuracy", "invalid",
                "train_s", "eval_s"):
        vals = pd.to_numeric(runs[key], errors="coerce")
        out[key] = float(vals.mean())
        per_fold = runs.assign(v=vals).groupby("fold")["v"]
        seed_std = [s for s in per_fold.std(ddof=1).tolist() if np.isfinite(s)]
        out[f"{key}_std_seeds"] = float(np.mean(seed_std)) if seed_std else None
        out[f"{key}_std_seeds_max"] = float(np.max(seed_std)) if seed_std else None
        out[f"{key}_std_folds"] = _std(per_fold.mean().tolist())
    out["invalid_total"] = int(pd.to_numeric(runs["invalid"]).sum())
    if "prior_srcc" in runs:
        out["lmm_prob_srcc"], out["prior_srcc"] = float(runs["lmm_prob_srcc"].mean()), float(runs["prior_srcc"].mean())
        out["prior_blend_srcc"] = {w: float(np.mean([r[w] for r in runs["prior_blend_srcc"]]))
                                   for w in runs["prior_blend_srcc"].iloc[0]}
    below = [int(r["fold"]) for _, r in runs.groupby("fold")["prob_srcc"].mean().reset_index().iterrows()
             if r["prob_srcc"] < result["ridge"][str(int(r["fold"]))]["srcc"]]
    out["folds_below_ridge"] = below
    if result["ensemble"]:
        ens = result["ensemble"].values()
        for key in ("prob_srcc", "prob_plcc", "prob_plcc_raw", "text_srcc", "level_accuracy"):
            out[f"ensemble_{key}"] = float(np.nanmean([e[key] if e[key] is not None else np.nan for e in ens]))
        out["ensemble_prob_srcc_std_folds"] = _std([e["prob_srcc"] for e in ens])
    return out


# ------------------------------------------------------------------ table

COLUMNS = [
    ("ridge SRCC (pooled)", lambda s: f"{_f(s.get('ridge_srcc'))} ({_f(s.get('ridge_pooled_srcc'))})"),
    ("prob SRCC", lambda s: f"{_f(s.get('prob_srcc'))} ({_f(s.get('prob_srcc_std_seeds'))} / "
                            f"{_f(s.get('prob_srcc_std_seeds_max'))} / {_f(s.get('prob_srcc_std_folds'))})"),
    ("pooled prob / text SRCC (seeds)", lambda s: f"{_f(s.get('pooled_prob_srcc'))} / {_f(s.get('pooled_text_srcc'))} "
                                                  f"({_f(s.get('pooled_prob_srcc_std_seeds'))})"),
    ("prob PLCC / raw", lambda s: f"{_f(s.get('prob_plcc'))} / {_f(s.get('prob_plcc_raw'))}"),
    ("text SRCC", lambda s: _f(s.get("text_srcc"))),
    ("level acc.", lambda s: _f(s.get("level_accuracy"))),
    ("invalid", lambda s: str(s.get("invalid_total", "n/a"))),
    ("ensemble prob SRCC / PLCC", lambda s: f"{_f(s.get('ensemble_prob_srcc'))} / {_f(s.get('ensemble_prob_plcc'))}"
     if "ensemble_prob_srcc" in s else ""),
    ("model / prior SRCC", lambda s: f"{_f(s.get('lmm_prob_srcc'))} / {_f(s.get('prior_srcc'))}" if "prior_srcc" in s else ""),
    ("train s / run", lambda s: f"{s['train_s']:.0f}" if "train_s" in s else ""),
]


def table(results: list[dict]) -> str:
    """The markdown table of results (one row per variant and setup)."""
    head = ["variant", "setup", "folds x seeds", *[c for c, _ in COLUMNS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        s = r.get("summary") or summarise(r)
        cells = [r.get("name", ""), r["setup"], f"{len(r['folds'])} x {len(r['seeds'])}", *[fn(s) for _, fn in COLUMNS]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def source_commit() -> str:
    """The commit the benchmark runs, "+dirty" when tracked files differ from it (for the JSON record)."""
    commit = os.popen(f"git -C {REPO} rev-parse --short HEAD 2>/dev/null").read().strip()
    dirty = bool(os.popen(f"git -C {REPO} status --porcelain --untracked-files=no 2>/dev/null").read().strip())
    return commit + ("+dirty" if dirty else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--setup", nargs="+", default=["demo"], choices=sorted(SETUPS))
    ap.add_argument("--folds", default=None, help="comma-separated folds (default: all)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. training.epochs=6 (YAML value); repeatable")
    ap.add_argument("--name", default="default", help="name of this variant (in the table and the JSON file name)")
    ap.add_argument("--ridge-only", action="store_true", help="only the ridge readout")
    ap.add_argument("--eval", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                    help="also score every trained model with these `evaluation` overrides (a row of its own, "
                         "e.g. tpl3:templates_per_video=3); repeatable")
    ap.add_argument("--curve", action="store_true",
                    help="record the validation and test probability-score SRCC at every evaluated step (per epoch)")
    ap.add_argument("--extra-train", default="", metavar="DATASET:SUBSET[,...]",
                    help="extra training datasets (selectors of --extra-config), e.g. synth-real:all,synth-clips:all")
    ap.add_argument("--extra-config", default="config/synth-dev.yaml", help="config defining the extra datasets")
    ap.add_argument("--extra-fraction", type=float, default=1.0, help="a fixed share of the extra videos (default all)")
    ap.add_argument("--extra-seed", type=int, default=0, help="seed of the --extra-fraction draw (default 0)")
    ap.add_argument("--extra-map", choices=["none", "quantile"], default="none",
                    help="quantile: extra labels mapped by rank onto the training folds' MOS distribution")
    ap.add_argument("--exclude-shared", default=None, metavar="COLUMN",
                    help="column an extra video must not share with a test video (default: source for "
                         "realset-dev-loso, group for realset-dev, none for demo; '' for none)")
    ap.add_argument("--out", default=None, help="JSON (default benchmarks/results/bench_head-<name>.json)")
    ap.add_argument("--table", nargs="+", default=None, metavar="JSON", help="print the table of earlier results")
    args = ap.parse_args(argv)
    if args.table:
        results = []
        for f in args.table:
            data = json.loads(Path(f).read_text())
            results += data["results"]
        print(table(results))
        return 0
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    os.chdir(REPO)  # configs, stores and dataset paths are relative to the repository root
    overrides = parse_sets(args.set)
    folds = None if args.folds is None else [int(v) for v in args.folds.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    out = Path(args.out or REPO / "benchmarks" / "results" / f"bench_head-{args.name}.json")
    doc = {"name": args.name, "overrides": overrides, "command": " ".join(["benchmarks/bench_head.py", *(argv or sys.argv[1:])]),
           "commit": source_commit(), "date": time.strftime("%Y-%m-%d %H:%M"), "results": []}
    t0 = time.perf_counter()
    eval_variants = {}
    for item in args.eval:
        vname, _, sets = item.partition(":")
        eval_variants[vname] = parse_sets(sets.split(","))
    extra = {"selectors": [v for v in args.extra_train.split(",") if v], "config": args.extra_config,
             "fraction": args.extra_fraction, "subset_seed": args.extra_seed, "map": args.extra_map}
    if args.exclude_shared is not None:
        extra["exclude"] = args.exclude_shared or None
    for setup in args.setup:
        for r in run_setup(setup, overrides, folds, seeds, args.ridge_only, lambda m: print(m, flush=True),
                           eval_variants, args.curve, extra):
            r["name"] = args.name + (f"+{r['eval_variant']}" if r["eval_variant"] else "")
            doc["results"].append(r)
        doc["seconds"] = round(time.perf_counter() - t0, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        os.replace(tmp, out)
    print()
    print(table(doc["results"]))
    print(f"\n{args.name}: {doc['seconds']:.0f} s; -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
