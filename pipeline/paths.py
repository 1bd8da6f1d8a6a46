"""Where every artifact lives, relative to the workflow's working directory.

The Snakemake rules and the CLI commands both take paths from here, so a rule's declared inputs and
what its command reads cannot drift apart.
"""
from __future__ import annotations

from pathlib import Path

RESULTS = Path("results")
CACHE = Path("cache")


def shard_name(shard: int) -> str:
    return f"shard-{int(shard):05d}"


def manifest(dataset: str) -> Path:
    return RESULTS / "manifest" / f"{dataset}.csv"


def missing(dataset: str) -> Path:
    return RESULTS / "manifest" / f"{dataset}.missing.csv"


def probe(dataset: str, shard: int) -> Path:
    return RESULTS / "probe" / dataset / f"{shard_name(shard)}.csv"


def probe_failures(dataset: str, shard: int) -> Path:
    return RESULTS / "probe" / dataset / f"{shard_name(shard)}.failures.csv"


def store(dataset: str, settings_hash: str, shard: int) -> Path:
    return CACHE / "features" / dataset / settings_hash / f"{shard_name(shard)}.zarr"


def stats(dataset: str) -> Path:
    """Dataset-level feature statistics (pipeline/feature_stats.py)."""
    return RESULTS / "stats" / f"{dataset}.json"


def prompts_dir(dataset: str) -> Path:
    return RESULTS / "prompts" / dataset


def prompt_part(dataset: str, part: str) -> Path:
    """One JSONL shard of Q&A samples: part = 'fold<k>' (k-fold datasets) or an official split name."""
    return prompts_dir(dataset) / f"{part}.jsonl"


def tokenizer_dir() -> Path:
    return RESULTS / "tokenizer"


def _fold(fold: int | None) -> str:
    return f"fold{int(fold)}"


def model_dir(experiment: str, fold: int | None = None) -> Path:
    """Model folder; one per fold of a `folds: all` experiment (`results/models/<experiment>/fold<f>`)."""
    base = RESULTS / "models" / experiment
    return base if fold is None else base / _fold(fold)


def checkpoint_dir(experiment: str, fold: int | None = None) -> Path:
    base = CACHE / "checkpoints" / experiment
    return base if fold is None else base / _fold(fold)


def predictions(experiment: str, dataset: str, fold: int | None = None) -> Path:
    """Predictions of a test dataset; per fold under `results/eval/<experiment>/fold<f>/<dataset>/`. For a
    `folds: all` experiment the fold-less path holds every fold's predictions pooled (a `fold` column)."""
    base = RESULTS / "eval" / experiment
    return (base if fold is None else base / _fold(fold)) / dataset / "predictions.csv"


def metrics(experiment: str, dataset: str, fold: int | None = None) -> Path:
    """metrics.json; for a `folds: all` experiment the fold-less path is the aggregate over folds."""
    return predictions(experiment, dataset, fold).with_name("metrics.json")


def experiment_table(experiment: str) -> Path:
    return RESULTS / "eval" / experiment / "table.csv"


def summary_table() -> Path:
    """Cross-experiment summary (experiments x test datasets), written by the report."""
    return RESULTS / "eval" / "summary.csv"


def report() -> Path:
    return RESULTS / "report" / "index.html"
