"""Quality metrics of predictions against MOS, the metrics.json of one (experiment, dataset), and
the experiment table.

Per scoring method (`text`: the parsed generated answer; `prob`: the score from the answer token
probabilities) the metrics are

* `srcc`, `krcc`: Spearman / Kendall (tau-b, tie-aware) rank correlation (scipy.stats);
* `plcc_raw`: Pearson correlation of the raw predictions with MOS;
* `plcc`, `rmse`: Pearson correlation and root-mean-square error (MOS units, 0-100) after the
  standard monotonic 4-parameter logistic mapping of predictions to MOS (VQEG):
  `f(x) = (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2`, fitted by least squares
  (scipy.optimize.curve_fit);
* `srcc_ci`, `plcc_ci`: 95% percentile bootstrap intervals (scipy.stats.bootstrap, paired resampling
  of videos, seeded, vectorised; `plcc_ci` resamples the logistic-mapped predictions, i.e. the mapping
  fitted on all videos is held fixed, which keeps 1000 resamples under a second where refitting on
  every resample took minutes); null when `bootstrap` is 0.

Invalid answers. A generated score answer that does not parse (see pipeline.model.answers) has no value,
so it cannot enter a correlation, and replacing it by a constant would make the numbers depend on an
arbitrary choice. The `text` metrics are therefore computed over the videos with a valid answer
only; `methods.text.n` is that number, the top-level `n` counts every test video and the top-level
`invalid` counts the invalid answers, and the `note` of the text method says how many videos were
left out. The experiment table puts the invalid count next to every row. The `prob` score is defined
for every video, so its `n` is normally the top-level `n`, and comparing the two shows what the
invalid answers cost.

Level answers: `accuracy` is over all `n` videos, an invalid level answer counting as wrong; the
confusion matrix (rows: true level, columns: predicted, label order poor, fair, good) holds the
valid answers, and `invalid` counts the others.

Undefined metrics (fewer than 3 valid predictions, constant predictions or MOS, a logistic fit that
does not converge) are `None` (JSON null) with a `note` that starts "not defined:" — never NaN.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from scipy import optimize, stats

from pipeline.core import atomic
from pipeline.core.levels import LEVELS

METHODS = ("text", "prob")
# With a quality prior `prob` is an ensemble of two scorers, and its metrics say so; `lmm_prob` (the answer
# head's own probability score) is measured beside it.
ENSEMBLE = {"of": ["the answer head's probability score (lmm_prob_score)",
                   "the quality adapter's calibrated score (quality_score)"],
            "method": "prob", "alone": "lmm_prob"}
ENSEMBLE_NOTE = "an ensemble: the answer head's score blended with the quality adapter's (lmm_prob: the head alone)"
METRIC_KEYS = ("n", "srcc", "krcc", "plcc", "plcc_raw", "rmse", "srcc_ci", "plcc_ci", "note")
MIN_CORRELATION = 3  # fewer valid pairs: no correlation is defined
MIN_FIT = 5  # fewer: the 4-parameter logistic would interpolate the points, PLCC/RMSE after it are not defined
CONFIDENCE = 0.95


# ------------------------------------------------------------------ logistic mapping

def logistic(x, b1, b2, b3, b4):
    """The VQEG 4-parameter logistic; monotonic in x (increasing when b1 > b2)."""
    z = -(np.asarray(x, dtype=float) - b3) / (abs(b4) + 1e-12)
    return (b1 - b2) / (1.0 + np.exp(np.clip(z, -500.0, 500.0))) + b2


def fit_logistic(pred, mos, p0=None, maxfev: int = 5000) -> np.ndarray | None:
    """Least-squares parameters (b1, b2, b3, b4) mapping predictions to MOS, or None when it fails.

    Initial guess: b1 / b2 = max / min MOS (swapped when the predictions are anti-correlated),
    b3 = mean prediction, b4 = the prediction standard deviation; `p0` (a warm start, as the
    bootstrap uses) is tried first. The parameters are bounded (b1, b2 within 10 MOS ranges of the
    MOS, b3 within 10 prediction ranges of the predictions, b4 between 1/1000 and 10 prediction
    ranges): on nearly linear data the unbounded least-squares optimum runs off to infinity and the
    fit fails to converge, while the bounded one stops at a logistic as close to the line as makes no
    difference (same error to 1e-8 in our checks).
    """
    x = np.asarray(pred, dtype=float)
    y = np.asarray(mos, dtype=float)
    if len(x) < MIN_FIT or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    xr, yr = float(np.ptp(x)), float(np.ptp(y))
    lower = np.array([y.min() - 10 * yr, y.min() - 10 * yr, x.min() - 10 * xr, 1e-3 * xr])
    upper = np.array([y.max() + 10 * yr, y.max() + 10 * yr, x.max() + 10 * xr, 10 * xr])
    r = np.corrcoef(x, y)[0, 1]
    hi, lo = (y.max(), y.min()) if not r < 0 else (y.min(), y.max())
    starts = [np.array([hi, lo, x.mean(), x.std()]), np.array([hi, lo, np.median(x), xr / 4])]
    if p0 is not None:
        p0 = np.asarray(p0, dtype=float).copy()
        p0[3] = abs(p0[3])
        starts.insert(0, p0)
    for start in starts:
        start = np.clip(start, lower + 1e-9 * (upper - lower), upper - 1e-9 * (upper - lower))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                params, _ = optimize.curve_fit(logistic, x, y, p0=start, bounds=(lower, upper), maxfev=maxfev)
        except (RuntimeError, ValueError, optimize.OptimizeWarning, FloatingPointError):
            continue
        if np.all(np.isfinite(params)):
            return params
    return None


# ------------------------------------------------------------------ one scoring method

def _defined(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _pearson(a, b, axis=-1):
    return stats.pearsonr(a, b, axis=axis).statistic


def _spearman(a, b, axis=-1):
    return _pearson(stats.rankdata(a, axis=axis), stats.rankdata(b, axis=axis), axis=axis)


def _bootstrap_ci(x, y, statistic, n_resamples: int, seed: int) -> list[float] | None:
    """Percentile interval of a vectorised statistic(x, y, axis) over paired resamples of videos."""
    if n_resamples <= 0:
        return None
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        res = stats.bootstrap((x, y), statistic, paired=True, vectorized=True, n_resamples=n_resamples,
                              confidence_level=CONFIDENCE, method="percentile",
                              rng=np.random.default_rng(seed))
    lo, hi = _defined(res.confidence_interval.low), _defined(res.confidence_interval.high)
    if lo is None or hi is None:
        # some resamples were degenerate (constant); take the percentiles of the defined ones
        dist = np.asarray(res.bootstrap_distribution, dtype=float)
        dist = dist[np.isfinite(dist)]
        if len(dist) < max(10, n_resamples // 2):
            return None
        alpha = (1 - CONFIDENCE) / 2
        lo, hi = (float(v) for v in np.quantile(dist, [alpha, 1 - alpha]))
    return [lo, hi]


def score_metrics(pred, mos, bootstrap: int = 1000, seed: int = 0) -> dict:
    """Metrics of one scoring method over the given (valid) prediction / MOS pairs."""
    x = np.asarray(pred, dtype=float)
    y = np.asarray(mos, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(len(x))
    out = {k: None for k in METRIC_KEYS}
    out["n"] = n
    notes: list[str] = []
    if n < MIN_CORRELATION:
        out["note"] = f"not defined: fewer than {MIN_CORRELATION} valid predictions (n={n})"
        return out
    if np.ptp(x) == 0:
        out["note"] = f"not defined: constant predictions (all {x[0]:g})"
        return out
    if np.ptp(y) == 0:
        out["note"] = f"not defined: constant MOS (all {y[0]:g})"
        return out
    out["srcc"] = _defined(stats.spearmanr(x, y).statistic)
    out["krcc"] = _defined(stats.kendalltau(x, y).statistic)
    out["plcc_raw"] = _defined(stats.pearsonr(x, y).statistic)
    params = fit_logistic(x, y)
    if n < MIN_FIT:
        notes.append(f"plcc, rmse not defined: the logistic fit needs at least {MIN_FIT} predictions (n={n})")
    elif params is None:
        notes.append("plcc, rmse not defined: the logistic fit did not converge")
    else:
        fitted = logistic(x, *params)
        out["rmse"] = _defined(np.sqrt(np.mean((fitted - y) ** 2)))
        out["plcc"] = _defined(stats.pearsonr(fitted, y).statistic) if np.ptp(fitted) > 0 else None
        if out["plcc"] is None:
            notes.append("plcc not defined: the fitted logistic is flat")
    if bootstrap > 0:
        out["srcc_ci"] = _bootstrap_ci(x, y, _spearman, bootstrap, seed)
        if out["plcc"] is not None:
            out["plcc_ci"] = _bootstrap_ci(logistic(x, *params), y, _pearson, bootstrap, seed)
        if out["srcc_ci"] is None or (out["plcc"] is not None and out["plcc_ci"] is None):
            notes.append("confidence interval not defined: too many degenerate bootstrap resamples")
    out["note"] = "; ".join(notes) or None
    return out


# ------------------------------------------------------------------ levels

def level_metrics(level_true: Iterable, level_pred: Iterable) -> dict:
    """Accuracy over all videos (invalid = wrong), confusion matrix of the valid answers."""
    true = [str(v).lower() if isinstance(v, str) else None for v in level_true]
    pred = [str(v).lower() if isinstance(v, str) and str(v).lower() in LEVELS else None for v in level_pred]
    n = len(true)
    index = {lab: i for i, lab in enumerate(LEVELS)}
    confusion = [[0] * len(LEVELS) for _ in LEVELS]
    correct = invalid = 0
    for t, p in zip(true, pred):
        if p is None:
            invalid += 1
            continue
        if t in index:
            confusion[index[t]][index[p]] += 1
        correct += int(t == p)
    out = {"accuracy": (correct / n) if n else None, "labels": list(LEVELS), "confusion": confusion,
           "n": n, "invalid": invalid, "note": None}
    if n == 0:
        out["note"] = "not defined: no videos"
    elif invalid:
        out["note"] = f"{invalid} of {n} level answers invalid (counted as wrong)"
    return out


# ------------------------------------------------------------------ one (experiment, dataset)

def invalid_flags(df: pd.DataFrame) -> pd.Series:
    """The `invalid` column of a predictions table as booleans (true / 1 / yes in any case, as written
    or read back from CSV); all False when there is no such column."""
    if "invalid" not in df:
        return pd.Series(False, index=df.index)
    return df["invalid"].map(lambda v: str(v).strip().lower() in ("true", "1", "yes")).astype(bool)


def _invalid_mask(df: pd.DataFrame) -> np.ndarray:
    score = pd.to_numeric(df["score"], errors="coerce") if "score" in df else pd.Series(np.nan, index=df.index)
    return invalid_flags(df).to_numpy(dtype=bool) | ~np.isfinite(score.to_numpy(dtype=float))


def compute_metrics(predictions: pd.DataFrame, bootstrap: int = 1000, seed: int = 0,
                    experiment: str | None = None, dataset: str | None = None) -> dict:
    """metrics.json of docs/DESIGN.md from a predictions table (columns of predictions.csv)."""
    df = predictions.reset_index(drop=True)
    mos = pd.to_numeric(df["mos"], errors="coerce").to_numpy(dtype=float)
    invalid = _invalid_mask(df)
    n = int(len(df))
    methods = {}
    text_score = pd.to_numeric(df["score"], errors="coerce").to_numpy(dtype=float) if "score" in df else np.full(n, np.nan)
    text = score_metrics(text_score[~invalid], mos[~invalid], bootstrap, seed)
    n_invalid = int(invalid.sum())
    if n_invalid:
        left_out = f"{n_invalid} of {n} answers invalid, left out (metrics over {n - n_invalid})"
        text["note"] = f"{text['note']}; {left_out}" if text["note"] else left_out
    methods["text"] = text
    if "prob_score" in df:
        prob = pd.to_numeric(df["prob_score"], errors="coerce").to_numpy(dtype=float)
        methods["prob"] = score_metrics(prob, mos, bootstrap, seed)
        missing = int((~np.isfinite(prob)).sum())
        if missing:
            extra = f"{missing} of {n} probability scores missing"
            methods["prob"]["note"] = f"{methods['prob']['note']}; {extra}" if methods["prob"]["note"] else extra
    else:
        methods["prob"] = {**{k: None for k in METRIC_KEYS}, "n": 0, "note": "not defined: no probability scores"}
    blended = "quality_score" in df and pd.to_numeric(df["quality_score"], errors="coerce").notna().any()
    if blended and "lmm_prob_score" in df:
        methods["lmm_prob"] = score_metrics(pd.to_numeric(df["lmm_prob_score"], errors="coerce").to_numpy(dtype=float),
                                            mos, bootstrap, seed)
        methods["prob"]["note"] = "; ".join(filter(None, [ENSEMBLE_NOTE, methods["prob"]["note"]]))
    level_true = df["level_true"] if "level_true" in df else [None] * n
    level_pred = df["level"] if "level" in df else [None] * n
    return {
        "experiment": experiment,
        "dataset": dataset,
        "n": n,
        "invalid": n_invalid,
        "methods": methods,
        "level": level_metrics(level_true, level_pred),
        **({"prob_ensemble": ENSEMBLE} if blended else {}),
    }


# ------------------------------------------------------------------ every fold of an experiment

FOLD_STATS = ("mean", "std", "median")
FOLD_KEYS = ("srcc", "krcc", "plcc", "plcc_raw", "rmse")


def fold_summary(values: Iterable) -> dict:
    """mean, std (sample, ddof=1), median, min, max over the folds where a value is defined, their count
    (`folds`) and the per-fold values in fold order (None where undefined)."""
    vals = [None if v is None or not math.isfinite(float(v)) else float(v) for v in values]
    ok = np.array([v for v in vals if v is not None], dtype=float)
    out = {"mean": None, "std": None, "median": None, "min": None, "max": None, "folds": int(len(ok)), "values": vals}
    if len(ok):
        out.update(mean=float(ok.mean()), median=float(np.median(ok)), min=float(ok.min()), max=float(ok.max()))
        out["std"] = float(ok.std(ddof=1)) if len(ok) > 1 else None
    return out


def unrated_metrics(n: int, experiment: str | None = None, dataset: str | None = None) -> dict:
    """metrics.json of a test selector without ratings (a `folder` dataset): how many videos were
    scored and `unrated: true`, no `methods` (nothing to correlate with)."""
    return {"experiment": experiment, "dataset": dataset, "unrated": True, "n": int(n)}


def aggregate_folds(fold_metrics: list[dict], experiment: str | None = None, dataset: str | None = None) -> dict:
    """metrics.json of a `folds: all` experiment on one dataset, from its per-fold metrics.json (each
    with `fold`): `fold_metrics` (every fold, compact), `aggregate` (per method and metric: mean, std,
    median, min, max over folds; also level accuracy and invalid count), and the usual top-level
    fields so every reader of a metrics.json keeps working: `methods.<m>.<metric>` = the mean over
    folds (as papers report k-fold results; no bootstrap CI), `n` / `invalid` / `level.confusion`
    = sums over folds, `level.accuracy` = the mean."""
    folds = sorted(fold_metrics, key=lambda m: int(m.get("fold", 0)))
    if not folds:
        raise ValueError("no per-fold metrics to aggregate")
    k = len(folds)
    methods_in = [meth for meth in (*METHODS, ENSEMBLE["alone"])
                  if meth in METHODS or all(meth in (m.get("methods") or {}) for m in folds)]
    compact = []
    for m in folds:
        level = m.get("level") or {}
        compact.append({
            "fold": int(m.get("fold", len(compact))), "n": m.get("n"), "invalid": m.get("invalid"),
            "methods": {meth: {key: ((m.get("methods") or {}).get(meth) or {}).get(key)
                               for key in ("n", *FOLD_KEYS, "note")} for meth in methods_in},
            "level": {"accuracy": level.get("accuracy"), "invalid": level.get("invalid")},
        })
    aggregate = {meth: {key: fold_summary([c["methods"][meth][key] for c in compact]) for key in FOLD_KEYS}
                 for meth in methods_in}
    aggregate["level_accuracy"] = fold_summary([c["level"]["accuracy"] for c in compact])
    aggregate["invalid"] = fold_summary([c["invalid"] for c in compact])
    aggregate["n"] = fold_summary([c["n"] for c in compact])
    ensemble = all(m.get("prob_ensemble") for m in folds)
    methods = {}
    for meth in methods_in:
        mm = {key: aggregate[meth][key]["mean"] for key in FOLD_KEYS}
        srcc = aggregate[meth]["srcc"]
        undefined = k - srcc["folds"]
        note = f"mean over {srcc['folds']} of {k} folds"
        if srcc["std"] is not None:
            note += f" (SRCC std {srcc['std']:.3f}, median {srcc['median']:.3f})"
        if undefined:
            note += f"; SRCC not defined in {undefined} fold(s)"
        if meth == ENSEMBLE["method"] and ensemble:
            note = f"{ENSEMBLE_NOTE}; {note}"
        methods[meth] = {"n": int(sum(c["methods"][meth]["n"] or 0 for c in compact)), **mm,
                         "srcc_ci": None, "plcc_ci": None, "note": note}
    confusion = np.zeros((len(LEVELS), len(LEVELS)), dtype=int)
    level_n = level_invalid = 0
    for m in folds:
        level = m.get("level") or {}
        if level.get("confusion"):
            confusion += np.asarray(level["confusion"], dtype=int)
        level_n += int(level.get("n") or 0)
        level_invalid += int(level.get("invalid") or 0)
    no_features = [i for m in folds for i in ((m.get("no_features") or {}).get("ids") or [])]
    return {
        "experiment": experiment if experiment is not None else folds[0].get("experiment"),
        "dataset": dataset if dataset is not None else folds[0].get("dataset"),
        "folds": k,
        "n": int(sum(c["n"] or 0 for c in compact)),
        "invalid": int(sum(c["invalid"] or 0 for c in compact)),
        "methods": methods,
        "level": {"accuracy": aggregate["level_accuracy"]["mean"], "labels": list(LEVELS),
                  "confusion": confusion.tolist(), "n": level_n, "invalid": level_invalid,
                  "note": f"accuracy: mean over {k} folds; confusion: summed over folds"},
        "aggregate": aggregate,
        "fold_metrics": compact,
        **({"prob_ensemble": ENSEMBLE} if ensemble else {}),
        "templates_per_video": folds[0].get("templates_per_video"),
        "no_features": {"count": int(sum((m.get("no_features") or {}).get("count", 0) for m in folds)),
                        "ids": no_features[:50]},
    }


# ------------------------------------------------------------------ experiment table

TABLE_METRICS = ("n", "srcc", "krcc", "plcc", "plcc_raw", "rmse")


def _table_row(m: dict, experiment, dataset, test=None) -> dict:
    row = {"experiment": experiment, "test": test or dataset, "dataset": dataset, "videos": m.get("n"),
           "invalid": m.get("invalid"), "level_accuracy": (m.get("level") or {}).get("accuracy")}
    for method in METHODS:
        mm = (m.get("methods") or {}).get(method) or {}
        for key in TABLE_METRICS:
            row[f"{method}_{key}"] = mm.get(key)
        for key in ("srcc_ci", "plcc_ci"):
            ci = mm.get(key) or [None, None]
            row[f"{method}_{key}_lo"], row[f"{method}_{key}_hi"] = ci
    return row


def experiment_table(metrics_list: list[dict]) -> pd.DataFrame:
    """One row per (experiment, test selector): the selector (`test`, e.g. `lsvq:test_1080p`) and its
    dataset; per method n, SRCC, KRCC, PLCC, PLCC raw, RMSE and the CI bounds, plus the video count, the
    invalid-answer count and the level accuracy. Numbers only (undefined = NaN in the frame, empty in the CSV).

    Aggregated `folds: all` metrics (with `fold_metrics`) give one row per fold and then `mean`,
    `std` and `median` rows over the folds, told apart by a `fold` column (which only tables of such
    experiments have)."""
    rows = []
    folded = any(m.get("fold_metrics") for m in metrics_list)
    for m in metrics_list:
        experiment, dataset, test = m.get("experiment"), m.get("dataset"), m.get("test")
        if not m.get("fold_metrics"):
            row = _table_row(m, experiment, dataset, test)
            rows.append({"fold": "holdout", **row} if folded else row)
            continue
        fold_rows = [_table_row(f, experiment, dataset, test) for f in m["fold_metrics"]]
        for f, row in zip(m["fold_metrics"], fold_rows):
            rows.append({"fold": str(f["fold"]), **row})
        for stat in FOLD_STATS:
            row = {"fold": stat, "experiment": experiment, "test": test or dataset, "dataset": dataset}
            for col in fold_rows[0]:
                if col in row:
                    continue
                if col.endswith(("_ci_lo", "_ci_hi")):
                    row[col] = None
                    continue
                vals = [r[col] for r in fold_rows]
                row[col] = fold_summary([None if v is None else float(v) for v in vals])[stat]
            rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    num = [c for c in df.columns if c not in ("experiment", "test", "dataset", "fold")]
    df[num] = df[num].apply(pd.to_numeric, errors="coerce")
    for c in ("videos", "invalid") + tuple(f"{m}_n" for m in METHODS):
        if c in df and (df[c].dropna() % 1 == 0).all():
            df[c] = df[c].astype("Int64")
    return df


def _fmt(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)) or v is pd.NA:
        return "n/a"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.{digits}f}"


def display_table(df: pd.DataFrame) -> pd.DataFrame:
    """The experiment table for reading: invalid count up front, CIs folded into the metric cells,
    3 decimals (RMSE 2), 'n/a' for undefined."""
    out = pd.DataFrame()
    if df.empty:
        return out
    out["experiment"] = df["experiment"]
    out["test"] = df["test"]
    if "fold" in df:
        out["fold"] = df["fold"]
    count = lambda v: _fmt(v, 1)  # noqa: E731  (mean / std rows of counts are not integers)
    out["videos"] = df["videos"].map(count)
    out["invalid"] = df["invalid"].map(count)
    for method in METHODS:
        out[f"{method} n"] = df[f"{method}_n"].map(count)
        for key in ("srcc", "krcc", "plcc", "plcc_raw", "rmse"):
            digits = 2 if key == "rmse" else 3
            cells = df[f"{method}_{key}"].map(lambda v: _fmt(v, digits))
            if key in ("srcc", "plcc"):
                lo, hi = df[f"{method}_{key}_ci_lo"], df[f"{method}_{key}_ci_hi"]
                cells = [c if pd.isna(a) or pd.isna(b) else f"{c} [{a:.3f}, {b:.3f}]"
                         for c, a, b in zip(cells, lo, hi)]
            out[f"{method} {key.upper().replace('_RAW', ' raw')}"] = list(cells)
    out["level acc"] = df["level_accuracy"].map(_fmt)
    return out


def write_results(preds: pd.DataFrame, metrics: dict, predictions_path: str | Path, metrics_path: str | Path) -> None:
    """The predictions table and metrics.json of one (experiment, dataset), each written atomically."""
    atomic.write_text(predictions_path, preds.to_csv(index=False))
    atomic.write_text(metrics_path, json.dumps(metrics, indent=2, allow_nan=False) + "\n")


def write_table(df: pd.DataFrame, csv_path) -> tuple[str, str]:
    """Write the numeric table as CSV and its display form as Markdown beside it (.md)."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(csv_path, index=False, float_format="%.6g")
    md_path = csv_path.with_suffix(".md")
    md = display_table(df).to_markdown(index=False) if not df.empty else "(no results)"
    md_path.write_text(md + "\n")
    return str(csv_path), str(md_path)
