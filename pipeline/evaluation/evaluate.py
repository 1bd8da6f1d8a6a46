"""Score the test videos of one (experiment, test selector) from cached features; write predictions + metrics.

Every entry of an experiment's `test:` list (`dataset:subset`, e.g. `lsvq:test` and `lsvq:test_1080p`)
is evaluated on its own: its videos only, its own predictions and metrics.json
(`paths.predictions(experiment, selector)`), so two test sets of one dataset never merge. A selector of
an unrated dataset (format `folder`) gets its predictions and a metrics.json that says `unrated: true`
and counts the videos, without metrics.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import pandas as pd
from tqdm import tqdm

from pipeline.cli_args import add_config_arg, add_device_arg, add_dtype_arg, add_stores_arg
from pipeline.core import paths, resolve
from pipeline.core.errors import UserError
from pipeline.core.metrics import compute_metrics, unrated_metrics, write_results
from pipeline.evaluation.predict import predict_batch
from pipeline.features.stores.store_reader import collate_videos, dataset_features
from pipeline.model.answers import LEVEL_PROB_COLUMNS
from pipeline.model.lmm import LMMVQA
from pipeline.model.quality_prior import check_features
from pipeline.prompts.selectors import parse_selector, prompt_parts, test_selectors, unrated
from pipeline.prompts.shards import load_templates, read_prompts

if TYPE_CHECKING:
    from pipeline.core.settings import Dataset, EvaluationSettings, Experiment, PromptSettings, Settings

PREDICTION_COLUMNS = ["id", "mos", "level_true", "text", "score", "invalid", "prob_score", "lmm_prob_score",
                      "quality_score", "level", "level_text", *LEVEL_PROB_COLUMNS.values()]


def test_videos(exp: "Experiment", datasets: Mapping[str, "Dataset"], selector: str,
                prompts_dir: str | Path | None = None) -> pd.DataFrame:
    """id, mos, level_true of the videos of one test selector of the experiment (from its dataset's
    prompt shards, in `prompts_dir`, default the dataset's prompt folder)."""
    if selector not in test_selectors(exp):
        raise UserError(f"experiment '{exp.name}' has no test selector '{selector}' "
                        f"(its tests: {', '.join(exp.test)})")
    dataset = parse_selector(selector)[0]
    parts = sorted(prompt_parts(datasets, selector, exp.holdout_fold))
    folder = Path(prompts_dir) if prompts_dir else paths.prompts_dir(dataset)
    rows = read_prompts([folder / paths.prompt_file(p) for p in parts])
    videos = {r["id"]: (float("nan") if r["mos"] is None else float(r["mos"]), r["level"] or "") for r in rows}
    return pd.DataFrame([(vid, mos, lv) for vid, (mos, lv) in videos.items()], columns=["id", "mos", "level_true"])


def evaluate(settings: "Settings", experiment: str, selector: str, out: str | Path, metrics_out: str | Path,
             device: str = "cpu", dtype: str | None = None, fold: int | None = None,
             model_dir: str | Path | None = None, prompts_dir: str | Path | None = None,
             stores: list[str] | None = None) -> dict:
    """Predictions + metrics of one test selector (`dataset:subset`); `fold`: the model of that fold of a
    `folds: all` experiment, on that fold's test videos. The model folder (a list of folders: an ensemble,
    see predict.predict_batch), prompt folder and feature stores are the ones the rule declares when given
    (else where paths.py puts them)."""
    if fold is not None:
        settings = settings.with_holdout(experiment, fold)
    exp = settings.experiment(experiment)
    dirs = model_dir if isinstance(model_dir, (list, tuple)) else [model_dir or paths.model_dir(experiment, fold)]
    preds, no_features, ensemble = predictions(exp, settings.datasets, selector, settings.evaluation, settings.prompts,
                                  settings.features.hash, dirs, device=device, dtype=dtype,
                                  prompts_dir=prompts_dir, stores=stores)
    ev = settings.evaluation
    dataset = parse_selector(selector)[0]
    if unrated(settings.datasets, dataset):
        metrics = unrated_metrics(len(preds), experiment, dataset)
    else:
        metrics = compute_metrics(preds, ev.bootstrap, ev.seed, experiment, dataset)
    metrics["test"] = selector
    metrics["templates_per_video"] = ev.templates_per_video
    metrics["decoding"] = ev.decoding
    metrics["ensemble"] = ensemble
    if fold is not None:
        metrics["fold"] = int(fold)
    metrics["no_features"] = {"count": len(no_features), "ids": no_features[:50]}
    write_results(preds, metrics, out, metrics_out)
    return metrics


def predictions(exp: "Experiment", datasets: Mapping[str, "Dataset"], selector: str, ev: "EvaluationSettings",
                prompts: "PromptSettings", features_hash: str, dirs: list, device: str = "cpu",
                dtype: str | None = None, prompts_dir: str | Path | None = None,
                stores: list[str] | None = None) -> tuple[pd.DataFrame, list[str], int]:
    """(the prediction table (PREDICTION_COLUMNS) of one test selector's videos that have features, the
    ids of those without features, the number of models that answered: an ensemble's members)."""
    dataset = parse_selector(selector)[0]
    videos = test_videos(exp, datasets, selector, prompts_dir)
    features, _ = dataset_features(features_hash, dataset, stores)
    has = videos["id"].isin(set(features.ids))
    no_features = videos.loc[~has, "id"].tolist()
    videos = videos[has].reset_index(drop=True)
    models = [LMMVQA.from_pretrained(d, device=device, dtype=dtype) for d in dirs]
    model = models[0]
    for d, m in zip(dirs, models):
        check_features(m.config.get("quality_prior"), features, d)
    if len({m.answer_format for m in models}) > 1:
        raise UserError(f"ensemble members {', '.join(map(str, dirs))} answer in different formats")
    bank = load_templates(prompts.templates, model.answer_format.name)
    rows = []
    ids = videos["id"].tolist()
    for start in tqdm(range(0, len(ids), ev.batch_size), desc=f"evaluate {exp.name}/{selector}", file=sys.stderr):
        chunk = ids[start:start + ev.batch_size]
        batch = collate_videos([(features.spatial(v), features.motion(v)) for v in chunk])
        rows += predict_batch(models if len(models) > 1 else model, batch, chunk, bank=bank, seed=prompts.seed,
                              templates=ev.templates_per_video, max_new_tokens=ev.max_new_tokens,
                              decoding=ev.decoding, media=[features.media(v) for v in chunk])
    preds = videos.merge(pd.DataFrame(rows, columns=[c for c in PREDICTION_COLUMNS if c not in ("mos", "level_true")]),
                         on="id", how="left")[PREDICTION_COLUMNS]
    return preds, no_features, len(models)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_config_arg(parser)
    parser.add_argument("--experiment", required=True, help="experiment name (config `experiments`)")
    parser.add_argument("--test", required=True, metavar="DATASET:SUBSET",
                        help="one test selector of the experiment (e.g. lsvq:test_1080p)")
    parser.add_argument("--out", required=True, metavar="CSV", help="predictions table to write")
    parser.add_argument("--metrics", default=None, metavar="JSON",
                        help="metrics.json to write (default: metrics.json beside --out)")
    add_device_arg(parser, help="cpu, cuda or cuda:N (default: config `device`)")
    add_dtype_arg(parser)
    parser.add_argument("--fold", type=int, default=None,
                        help="evaluate the model of this fold of a `folds: all` experiment on that fold's test videos")
    parser.add_argument("--model", default=None, nargs="+", metavar="DIR",
                        help="model folder (default: the experiment's, results/models/<experiment>[/fold<F>]); "
                             "several folders: an ensemble, their scores averaged")
    parser.add_argument("--prompts", default=None, metavar="DIR",
                        help="the dataset's prompt shards (default: results/prompts/<dataset>)")
    add_stores_arg(parser)


def main(args) -> int:
    settings = resolve.load(args.config)
    device = args.device or settings.device
    metrics_out = args.metrics or paths.metrics_beside(args.out)
    metrics = evaluate(settings, args.experiment, args.test, args.out, metrics_out, device=device, dtype=args.dtype, fold=args.fold,
                       model_dir=args.model, prompts_dir=args.prompts, stores=args.stores)
    if metrics.get("unrated"):
        print(f"{args.experiment}/{args.test}: {metrics['n']} unrated videos scored (no metrics) -> {args.out}")
        return 0
    for method, m in metrics["methods"].items():
        fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        print(f"{args.experiment}{'' if args.fold is None else f'/fold{args.fold}'}/{args.test} {method:>4}: n={m['n']} SRCC={fmt(m['srcc'])} "
              f"PLCC={fmt(m['plcc'])} RMSE={fmt(m['rmse'])}")
    print(f"level accuracy: {metrics['level'].get('accuracy')}; invalid answers: {metrics['invalid']}")
    return 0
