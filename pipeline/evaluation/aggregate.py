"""`lmmvqa aggregate`: every fold of a `folds: all` experiment on one test selector -> one result.

`lmmvqa aggregate --config C --experiment E --test D:S --out results/eval/E/D/S/metrics.json
[--predictions results/eval/E/D/S/predictions.csv]` (default: beside --out)

reads the per-fold results `results/eval/E/fold<f>/D/S/{metrics.json,predictions.csv}` (written by
`lmmvqa evaluate --fold f --test D:S`) and writes:

* `metrics.json`: the aggregate of pipeline.core.metrics.aggregate_folds -- each fold (`fold_metrics`),
  mean / std / median / min / max over folds (`aggregate`), and the usual fields (`methods`: the mean
  over folds) so the report and the experiment table read it like any metrics.json;
* `predictions.csv`: every fold's predictions pooled, with a `fold` column, for the report's scatter
  plot (a k-fold test selector gives each video once, as the folds' test sets are disjoint; a
  fold-independent one such as `other:all` gives each video once per fold's model).

A missing per-fold file is an error naming it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from pipeline.cli_args import add_config_arg
from pipeline.core import paths, resolve
from pipeline.core.errors import UserError
from pipeline.core.metrics import aggregate_folds, unrated_metrics, write_results
from pipeline.prompts.selectors import parse_selector, test_selectors

if TYPE_CHECKING:
    from pipeline.core.settings import Experiment


def aggregate(exp: "Experiment", selector: str, out: str | Path, predictions_out: str | Path) -> dict:
    """The results of every fold of `exp` (a `folds: all` experiment) on one test selector, as one."""
    experiment = exp.name
    if selector not in test_selectors(exp):
        raise UserError(f"experiment '{experiment}' has no test selector '{selector}'")
    folds = exp.folds
    if folds is None:
        raise UserError(f"experiment '{experiment}' runs a single held-out fold (folds: holdout); nothing to aggregate")
    per_fold, preds = [], []
    for f in folds:
        mpath, ppath = paths.metrics(experiment, selector, f), paths.predictions(experiment, selector, f)
        for p in (mpath, ppath):
            if not p.is_file():
                raise UserError(f"fold {f} of experiment '{experiment}' on '{selector}': {p} not found "
                                "(run `lmmvqa evaluate --fold` first)")
        try:
            m = json.loads(mpath.read_text())
        except ValueError as exc:
            raise UserError(f"{mpath}: not valid JSON ({exc})") from None
        m["fold"] = f
        per_fold.append(m)
        df = pd.read_csv(ppath, dtype={"id": str, "text": str}, keep_default_na=True)
        df.insert(1, "fold", f)
        preds.append(df)
    if any(m.get("unrated") for m in per_fold):  # a folder of unrated videos: scored by every fold's model
        metrics = {**unrated_metrics(sum(m["n"] for m in per_fold), experiment, parse_selector(selector)[0]),
                   "folds": len(folds)}
    else:
        metrics = aggregate_folds(per_fold, experiment, parse_selector(selector)[0])
    metrics["test"] = selector
    write_results(pd.concat(preds, ignore_index=True), metrics, predictions_out, out)
    return metrics


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_config_arg(parser)
    parser.add_argument("--experiment", required=True, help="a `folds: all` experiment of the config")
    parser.add_argument("--test", required=True, metavar="DATASET:SUBSET", help="one test selector of the experiment")
    parser.add_argument("--out", required=True, metavar="JSON", help="aggregate metrics.json to write")
    parser.add_argument("--predictions", default=None, metavar="CSV",
                        help="every fold's predictions pooled (a `fold` column), to write "
                             "(default: predictions.csv beside --out)")


def main(args) -> int:
    exp = resolve.load(args.config).experiment(args.experiment)
    m = aggregate(exp, args.test, args.out, args.predictions or paths.predictions_beside(args.out))
    if m.get("unrated"):
        print(f"{args.experiment}/{args.test}: {m['n']} predictions of unrated videos over {m['folds']} folds (no metrics)")
        return 0
    for method in ("text", "prob"):
        agg = m["aggregate"][method]
        cells = []
        for key in ("srcc", "plcc"):
            s = agg[key]
            cells.append("n/a" if s["mean"] is None else
                         f"{key.upper()} {s['mean']:.4f} ± {s['std'] if s['std'] is not None else float('nan'):.4f} "
                         f"(median {s['median']:.4f})")
        print(f"{args.experiment}/{args.test} {method:>4} over {m['folds']} folds: {'; '.join(cells)}")
    print(f"invalid answers: {m['invalid']} (all folds)")
    return 0
