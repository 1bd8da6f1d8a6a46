"""`lmmvqa report`: one self-contained HTML page of every experiment of a config.

The page holds the experiment tables (generated from the metrics.json files, numbers only from
there), for each (experiment, test selector) -- each entry of the experiment's `test:` list, e.g.
`lsvq:test` and `lsvq:test_1080p` apart -- a prediction-vs-MOS scatter with the fitted logistic
curve and the level confusion matrix, the training loss curve of each experiment, the invalid-answer
counts, and the provenance of the run (config, model ids, code versions, feature stores).

Plots (pipeline.evaluation.report_figures) are PNGs embedded as base64 (no external assets, no scripts),
and also written as files into `--plots` (default `<report folder>/plots/`;
`<experiment>--<dataset>--<subset>--scatter.png`, `...--confusion.png`, `<experiment>--loss.png`) for
Snakemake's `report()`. The experiment table of each experiment is also written as CSV + Markdown to
`results/eval/<experiment>/table.{csv,md}` (pipeline.core.paths).

The page names the config file each experiment's results come from (the record the workflow keeps
beside them, `paths.experiment_source`), in its heading and provenance and in the summary's `config`
column: every config writes this one page and summary.

The page opens with a cross-experiment summary (experiments x test selectors: SRCC / PLCC of both
scoring methods, mean ± std over folds for `folds: all` experiments, and the invalid count), also
written as CSV + Markdown to `results/eval/summary.{csv,md}`. A `folds: all` experiment's section
shows, per test selector, a fold table: every fold, then mean, std and median over the folds (from
its aggregate metrics.json); its main table holds the means with ± std beside them, and its loss
plot overlays the folds' training curves. Its model trained on every fold (`results/models/<E>/all`,
the one `lmmvqa score` uses) is listed with the figures that say what it is worth: the folds'.

A test selector of an unrated dataset (format `folder`, metrics.json `unrated: true`) is listed with its
video count and predictions file, without metric rows, plots or a summary entry.

Inputs are found through pipeline.core.paths relative to the working directory; a missing metrics file
or training log is shown as missing on the page rather than failing the report.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import pandas as pd
import yaml
from jinja2 import Environment

from pipeline import DATA_DIR
from pipeline.cli_args import add_config_arg
from pipeline.core import atomic, paths, resolve
from pipeline.core.metrics import FOLD_STATS, METHODS, experiment_table, invalid_flags, write_table
from pipeline.core.provenance import ARCH_NAMES, describe_roles, describe_weights
from pipeline.core.versions import STAGES, code_version
from pipeline.prompts.selectors import parse_selector, shipped_model, test_selectors, unseen_tests
from pipeline.evaluation.report_figures import confusion_plot, scatter_plot, write_png
from pipeline.training.plots import fold_loss_figure, loss_figure

if TYPE_CHECKING:
    from pipeline.core.settings import Dataset, Experiment, ModelSpec, Settings


def configure_parser(p: argparse.ArgumentParser) -> None:
    add_config_arg(p)
    p.add_argument("--out", default=str(paths.report()), help="HTML file to write (default %(default)s)")
    p.add_argument("--plots", default=None, metavar="DIR",
                   help="folder for the plots as PNG files (default: `plots/` beside --out)")
    p.add_argument("--experiment", action="append", default=None,
                   help="only this experiment (repeatable; default: every experiment of the config)")


def main(args) -> int:
    settings = resolve.load(args.config)
    out = build_report(settings, args.out, experiments=args.experiment, config_path=args.config, plots_dir=args.plots)
    print(f"report written: {out}")
    return 0


# ------------------------------------------------------------------ inputs

def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _read_csv(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path, dtype={"id": str, "text": str}, keep_default_na=True)
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return None


def experiment_config(experiment: str) -> str | None:
    """The config file(s) an experiment's results come from, as recorded when the workflow started
    (pipeline.workflow.claim_experiments); None where no record exists (e.g. results of a hand-run)."""
    record = _read_json(paths.experiment_source(experiment))
    if not isinstance(record, dict) or not isinstance(record.get("config_files"), list):
        return None
    return " + ".join(record["config_files"]) or "(the command line's config)"


def _git_commit() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        if res.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).parent)
        return res.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _store_info(settings: str, dataset: str) -> dict:
    """The feature stores of a dataset under the feature settings of hash `settings` (FeatureSettings.hash)."""
    folder = paths.store_dir(dataset, settings)
    stores = []
    for store in sorted(folder.glob("shard-*.zarr")) if folder.is_dir() else []:
        meta = _read_json(store / "zarr.json") or {}
        attrs = meta.get("attributes") or {}
        stores.append({"path": str(store), "videos": len(attrs.get("ids") or []),
                       "code_version": attrs.get("code_version"), "complete": attrs.get("complete")})
    stats = _read_json(paths.stats(dataset)) or {}
    return {"dataset": dataset, "settings_hash": settings, "folder": str(folder), "stores": stores, "stats": stats}


# ------------------------------------------------------------------ page

def _cell(value, digits=3) -> dict:
    """A table cell: display text plus the exact value (data-value) it came from."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return {"text": "n/a", "value": ""}
    if isinstance(value, bool):
        return {"text": str(value), "value": str(value)}
    if isinstance(value, int):
        return {"text": str(value), "value": str(value)}
    if isinstance(value, float):
        return {"text": f"{value:.{digits}f}", "value": repr(value)}
    return {"text": str(value), "value": str(value)}


# column headings of an experiment whose probability score is an ensemble (a quality prior blended in)
METHOD_LABELS = {"prob": "prob (ensemble: answer head + quality adapter)", "lmm_prob": "prob of the answer head alone"}


def metrics_rows(metrics_list: list[dict]) -> list[dict]:
    """Rows of the HTML experiment table, straight from the metrics JSON."""
    rows = []
    for m in metrics_list:
        level = m.get("level") or {}
        methods = []
        ensemble = m.get("prob_ensemble")  # (`ensemble` counts an experiment's member models)
        for method in (*METHODS, *([ensemble["alone"]] if ensemble else [])):
            mm = (m.get("methods") or {}).get(method) or {}
            cells = [("n", _cell(mm.get("n")))]
            for key in ("srcc", "krcc", "plcc", "plcc_raw", "rmse"):
                cells.append((key, _cell(mm.get(key), 2 if key == "rmse" else 3)))
            cis = {k: mm.get(k) for k in ("srcc_ci", "plcc_ci")}
            agg = (m.get("aggregate") or {}).get(method)
            stds = {k: (agg.get(k) or {}).get("std") for k in ("srcc", "krcc", "plcc", "plcc_raw", "rmse")} if agg else None
            methods.append({"name": method, "label": METHOD_LABELS.get(method, method) if ensemble else method,
                            "cells": cells, "cis": cis, "note": mm.get("note"), "stds": stds})
        rows.append({"test": m.get("test") or m.get("dataset"), "n": _cell(m.get("n")), "invalid": _cell(m.get("invalid")),
                     "level_accuracy": _cell(level.get("accuracy")), "level_invalid": _cell(level.get("invalid")),
                     "methods": methods})
    return rows


def _stat(metrics: dict | None, method: str | None, key: str) -> tuple:
    """(value, std over folds or None) of a metric of a metrics.json: the mean and std of an aggregate
    over folds, else the single value. method None: top-level `invalid` / level accuracy."""
    if not metrics:
        return None, None
    agg = metrics.get("aggregate")
    if method is None:
        if key == "invalid":
            return metrics.get("invalid"), None
        value = (metrics.get("level") or {}).get("accuracy")
        return value, ((agg or {}).get("level_accuracy") or {}).get("std") if agg else None
    mm = (metrics.get("methods") or {}).get(method) or {}
    if agg:
        a = (agg.get(method) or {}).get(key) or {}
        return a.get("mean", mm.get(key)), a.get("std")
    return mm.get(key), None


def summary_table(entries: list[tuple[str, str, dict | None]]) -> pd.DataFrame:
    """Long form of the cross-experiment summary: one row per (experiment, test selector) with the
    selector's dataset, the folds count (empty for a single held-out fold), SRCC / PLCC of both methods
    (mean and std over folds for `folds: all` experiments), the invalid count, the level accuracy and
    the config file the experiment's results come from."""
    rows = []
    for experiment, test, m in entries:
        row = {"experiment": experiment, "test": test, "dataset": parse_selector(test)[0],
               "folds": (m or {}).get("folds")}
        for method in ("prob", "text"):
            for key in ("srcc", "plcc"):
                row[f"{method}_{key}"], row[f"{method}_{key}_std"] = _stat(m, method, key)
        row["invalid"] = _stat(m, None, "invalid")[0]
        row["level_accuracy"], row["level_accuracy_std"] = _stat(m, None, "level")
        row["config"] = experiment_config(experiment)
        rows.append(row)
    df = pd.DataFrame(rows)
    if not df.empty:
        df["folds"] = pd.to_numeric(df["folds"], errors="coerce").astype("Int64")
        df["invalid"] = pd.to_numeric(df["invalid"], errors="coerce").astype("Int64")
    return df


def write_summary(df: pd.DataFrame, csv_path: Path) -> None:
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(csv_path, index=False, float_format="%.6g")

    def pm(v, sd):
        if v is None or pd.isna(v):
            return "n/a"
        return f"{v:.3f}" + ("" if sd is None or pd.isna(sd) else f" ± {sd:.3f}")

    lines = ["| experiment | test | folds | prob SRCC | prob PLCC | text SRCC | text PLCC | invalid | level acc |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in df.to_dict("records"):
        folds = "holdout" if pd.isna(r["folds"]) else str(r["folds"])
        cells = [pm(r[f"{m}_{k}"], r[f"{m}_{k}_std"]) for m in ("prob", "text") for k in ("srcc", "plcc")]
        invalid = "n/a" if pd.isna(r["invalid"]) else str(r["invalid"])
        lines.append(f"| {r['experiment']} | {r['test']} | {folds} | {' | '.join(cells)} | {invalid} | "
                     f"{pm(r['level_accuracy'], r['level_accuracy_std'])} |")
    csv_path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def summary_view(df: pd.DataFrame) -> dict:
    """The summary as a matrix for the page: rows = experiments, columns = test selectors."""
    tests = list(dict.fromkeys(df["test"])) if not df.empty else []
    rows = []
    for experiment in (dict.fromkeys(df["experiment"]) if not df.empty else []):
        sub = df[df["experiment"] == experiment].set_index("test")
        cells = []
        for t in tests:
            if t not in sub.index:
                cells.append(None)
                continue
            r = sub.loc[t]
            cell = {"test": t, "invalid": _cell(None if pd.isna(r["invalid"]) else int(r["invalid"]))}
            for m in ("prob", "text"):
                for k in ("srcc", "plcc"):
                    v, sd = r[f"{m}_{k}"], r[f"{m}_{k}_std"]
                    cell[f"{m}_{k}"] = _cell(None if v is None or pd.isna(v) else float(v))
                    cell[f"{m}_{k}_std"] = _cell(None if sd is None or pd.isna(sd) else float(sd))
            cells.append(cell)
        folds = sub["folds"].dropna()
        rows.append({"experiment": experiment, "folds": int(folds.iloc[0]) if len(folds) else None, "cells": cells})
    return {"tests": tests, "rows": rows}


FOLD_COLUMNS = (("videos", None, "n"), ("invalid", None, "invalid"), ("prob SRCC", "prob", "srcc"),
                ("prob PLCC", "prob", "plcc"), ("prob KRCC", "prob", "krcc"), ("prob RMSE", "prob", "rmse"),
                ("text SRCC", "text", "srcc"), ("text PLCC", "text", "plcc"), ("level accuracy", None, "level"))


def fold_rows(metrics: dict) -> list[dict]:
    """Rows of a dataset's fold table: each fold, then mean / std / median (from the aggregate)."""
    agg = metrics["aggregate"]
    rows = []
    for f in metrics.get("fold_metrics") or []:
        cells = []
        for title, method, key in FOLD_COLUMNS:
            if method:
                v = (f["methods"].get(method) or {}).get(key)
            elif key == "level":
                v = (f.get("level") or {}).get("accuracy")
            else:
                v = f.get(key)
            cells.append({"col": f"{method}.{key}" if method else key,
                          **_cell(v, 2 if key == "rmse" else 3)})
        rows.append({"fold": str(f["fold"]), "cells": cells})
    for stat in FOLD_STATS:
        cells = []
        for title, method, key in FOLD_COLUMNS:
            a = agg[method][key] if method else agg["level_accuracy" if key == "level" else key]
            cells.append({"col": f"{method}.{key}" if method else key,
                          **_cell(a.get(stat), 2 if key == "rmse" else 3)})
        rows.append({"fold": stat, "cells": cells})
    return rows


TEMPLATE_PATH = DATA_DIR / "report.html.j2"  # package data (pyproject package-data)


def render_html(**context) -> str:
    """The page: the Jinja2 template `pipeline/data/report.html.j2` rendered with HTML autoescaping."""
    return Environment(autoescape=True).from_string(TEMPLATE_PATH.read_text(encoding="utf-8")).render(**context)


DEFAULT_ARCH = {"vision": "clip", "motion": "slowfast", "llm": "llama"}


def _model_sources(model_record: dict | None, models: Mapping[str, "ModelSpec"], preset: str) -> dict:
    """What each role was built from, one line per role: the model folder's record (`provenance` in
    lmmvqa.json: architecture, weights file + sha256 / hub id + revision / random init, how the LLM was
    trained), else what the config asks for (`models`: role -> ModelSpec of the `preset`), marked as such
    (no trained model to read it from)."""
    if isinstance(model_record, dict) and model_record.get("provenance"):
        return describe_roles(model_record["provenance"])
    out = {}
    for role in ("vision", "motion", "llm"):
        spec = models[role].as_dict()
        arch = ARCH_NAMES.get(spec.get("arch") or DEFAULT_ARCH[role], spec.get("arch"))
        w = spec.get("weights") or {}
        if spec.get("source"):
            what = f"pretrained weights from {spec['source']}"
        elif w.get("package"):
            what = f"weights file {w['file']} of the installed package {w['package']} (expected sha256 {w.get('sha256')})"
        elif spec.get("arch") == "temporal_stats":
            what = describe_weights({"kind": "none"})
        else:
            what = f"random init from the {preset} preset's config"
        out[role] = f"{arch}: {what} [from the config: no trained model folder]"
    return out


def shipped_model_entry(exp: "Experiment", datasets: Mapping[str, "Dataset"], metrics_list: list[dict]) -> dict:
    """The model of an experiment to score videos with and what it is worth: for `folds: all`, the model
    trained on every fold, worth what its folds measured on videos they did not train on (mean ± std
    of SRCC / PLCC over the folds, `unseen_tests`); for one held-out fold, its model and held-out figures."""
    folder = shipped_model(exp)
    worth, unseen = [], set(unseen_tests(exp, datasets))
    for m in (m for m in metrics_list if (m.get("test") or m.get("dataset")) in unseen):
        cells = {}
        for method in ("prob", "text"):
            for key in ("srcc", "plcc"):
                v, sd = _stat(m, method, key)
                cells[f"{method}_{key}"] = {"value": v, "std": sd}
        worth.append({"test": m.get("test") or m.get("dataset"), "folds": m.get("folds"), **cells})
    return {"dir": str(folder), "exists": (folder / "lmmvqa.json").is_file(),
            "every_fold": exp.every_fold, "worth": worth}


def build_report(settings: "Settings", out: str | Path, experiments: list[str] | None = None,
                 config_path: str | None = None, plots_dir: str | Path | None = None) -> Path:
    """The page of every experiment of `settings` (or of `experiments`), written to `out`."""
    out = Path(out)
    plots_dir = Path(plots_dir) if plots_dir else paths.plots_beside(out)
    names = experiments or list(settings.experiments)
    exps, models, feature_datasets, summary_entries = [], [], [], []
    for name in names:
        exp = settings.experiment(name)
        folds = exp.folds
        metrics_list, missing, datasets, fold_tables = [], [], [], []
        for test in test_selectors(exp):
            dataset = parse_selector(test)[0]
            if dataset not in feature_datasets:
                feature_datasets.append(dataset)
            metrics = _read_json(paths.metrics(name, test))
            if (metrics or {}).get("unrated"):  # a folder of unrated videos: predictions only, no metric rows
                datasets.append({"name": test, "predictions": str(paths.predictions(name, test)), "unrated": True,
                                 "n": metrics.get("n"), "scatter": None, "confusion": None, "invalid_examples": []})
                continue
            summary_entries.append((name, test, metrics))
            if metrics is None:
                missing.append(str(paths.metrics(name, test)))
            else:
                metrics.setdefault("experiment", name)
                metrics.setdefault("dataset", dataset)
                metrics.setdefault("test", test)
                metrics_list.append(metrics)
                if metrics.get("fold_metrics") and metrics.get("aggregate"):
                    fold_tables.append({"test": test, "k": metrics.get("folds"), "rows": fold_rows(metrics)})
            pred = _read_csv(paths.predictions(name, test))
            entry = {"name": test, "predictions": str(paths.predictions(name, test)), "scatter": None,
                     "confusion": None, "invalid_examples": [], "invalid_count": 0,
                     "n": (metrics or {}).get("n")}
            stem = f"{name}--{'--'.join(paths.selector_part(test).parts)}"
            if pred is not None and len(pred):
                entry["scatter"] = write_png(scatter_plot(pred, metrics, f"{name} \u2192 {test}: prediction vs MOS"),
                                        plots_dir / f"{stem}--scatter.png")
                if "invalid" in pred:
                    bad = pred[invalid_flags(pred)]
                    entry["invalid_count"] = int(len(bad))
                    entry["invalid_examples"] = [{"id": r["id"], "text": "" if pd.isna(r.get("text")) else str(r["text"])[:200]}
                                                 for _, r in bad.head(5).iterrows()]
            if metrics and metrics.get("level"):
                entry["confusion"] = write_png(confusion_plot(metrics["level"], f"{name} \u2192 {test}: level"),
                                          plots_dir / f"{stem}--confusion.png")
            datasets.append(entry)
        table = experiment_table(metrics_list)
        table_csv = None
        if not table.empty:
            table_csv, _ = write_table(table, paths.experiment_table(name))
        loss = None
        if folds is None:
            log_path = paths.train_log(name)
            log = _read_csv(log_path)
            if log is not None and len(log) and {"step", "loss"} <= set(log.columns):
                loss = write_png(loss_figure(log, f"{name}: training loss"), plots_dir / f"{name}--loss.png")
        else:
            log_path = paths.train_log(name, "{fold}")
            logs = {f: _read_csv(paths.train_log(name, f)) for f in folds}
            logs = {f: lg for f, lg in logs.items() if lg is not None and len(lg) and {"step", "loss"} <= set(lg.columns)}
            if logs:
                loss = write_png(fold_loss_figure(logs, f"{name}: training loss of each fold"), plots_dir / f"{name}--loss.png")
        exps.append({"name": name, "train": list(exp.train), "test": list(exp.test), "rows": metrics_rows(metrics_list),
                     "missing": missing, "datasets": datasets, "loss": loss, "train_log": str(log_path),
                     "table_csv": table_csv, "folds": folds, "fold_tables": fold_tables,
                     "config": experiment_config(name),
                     "shipped": shipped_model_entry(exp, settings.datasets, metrics_list)})
        for fold in [*folds, paths.FULL_MODEL] if folds is not None else [None]:
            model_record = _read_json(paths.model_dir(name, fold) / "lmmvqa.json")
            label = name if fold is None else (f"{name} on every fold" if fold == paths.FULL_MODEL else f"{name} fold {fold}")
            models.append({"experiment": label,
                           "dir": str(paths.model_dir(name, fold)),
                           "config": json.dumps(model_record, indent=2, sort_keys=True) if model_record else None,
                           "sources": _model_sources(model_record, settings.models, settings.preset)})
    summary = summary_table(summary_entries)
    summary_csv = None
    if not summary.empty and experiments is None:  # the whole config's summary, not a --experiment subset
        summary_csv = paths.summary_table()
        write_summary(summary, summary_csv)
    provenance = {
        "config_path": str(config_path) if config_path else "(in memory)",
        "config_files": sorted({c for c in (experiment_config(n) for n in names) if c}),
        "config_yaml": yaml.safe_dump(settings.config, sort_keys=True),
        "git": _git_commit(),
        "preset": settings.preset,
        "code_versions": {stage: code_version(stage) for stage in STAGES},
        "models": models,
        "features": [_store_info(settings.features.hash, d) for d in feature_datasets],
    }
    html = render_html(
        experiments=exps, provenance=provenance, fold_columns=FOLD_COLUMNS,
        summary={**summary_view(summary), "csv": str(summary_csv or paths.summary_table())},
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    atomic.write_text(out, html)
    return out


__all__ = ["build_report", "configure_parser", "main", "metrics_rows", "shipped_model_entry"]
