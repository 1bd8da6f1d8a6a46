"""Where every artifact lives, relative to the workflow's working directory.

The single source of artifact paths: the Snakemake rules build their input, output, log and benchmark
patterns from these functions (called with wildcard names such as `"{dataset}"`), and the commands
get the paths a rule declared as arguments, so a rule's files and what its command reads and writes
cannot drift apart (tests/test_paths.py checks that no rule spells a path by hand).
"""
from __future__ import annotations

from pathlib import Path

RESULTS = Path("results")
CACHE = Path("cache")


def _is_wildcard(value) -> bool:
    return isinstance(value, str) and value.startswith("{") and value.endswith("}")


def shard_name(shard: int | str) -> str:
    """`shard-00003` for shard 3 (or "00003"); `shard-{shard}` for the wildcard."""
    return f"shard-{shard}" if _is_wildcard(shard) else f"shard-{int(shard):05d}"


def manifest(dataset: str) -> Path:
    return RESULTS / "manifest" / f"{dataset}.csv"


def missing(dataset: str) -> Path:
    return RESULTS / "manifest" / f"{dataset}.missing.csv"


def probe(dataset: str, shard: int | str) -> Path:
    return RESULTS / "probe" / dataset / f"{shard_name(shard)}.csv"


def probe_failures(dataset: str, shard: int | str) -> Path:
    return RESULTS / "probe" / dataset / f"{shard_name(shard)}.failures.csv"


def store_dir(dataset: str, settings_hash: str) -> Path:
    """The feature stores of a dataset under one feature-settings hash (one per shard)."""
    return CACHE / "features" / dataset / settings_hash


def store(dataset: str, settings_hash: str, shard: int | str) -> Path:
    return store_dir(dataset, settings_hash) / f"{shard_name(shard)}.zarr"


def synth_dir(dataset: str) -> Path:
    """Tables of a `synth` dataset (pipeline/synth): its plan, label file and failures."""
    return RESULTS / "synth" / dataset


def synth_plan(dataset: str) -> Path:
    """One row per planned variant (reference, segment, family, level, parameters, shard)."""
    return synth_dir(dataset) / "plan.csv"


def synth_plan_failures(dataset: str) -> Path:
    """References the plan could not open or probe."""
    return synth_dir(dataset) / "plan.failures.csv"


def synth_labels(dataset: str) -> Path:
    """The generic label file of a synth dataset (what its manifest reads)."""
    return synth_dir(dataset) / "labels.csv"


def synth_failures(dataset: str) -> Path:
    """Every reference and variant of a synth dataset that failed, with the error."""
    return synth_dir(dataset) / "failures.csv"


def synth_videos(dataset: str) -> Path:
    """The videos folder of a synth dataset (links to the variants of every shard)."""
    return CACHE / "synth" / dataset / "videos"


def synth_segments(dataset: str, reference: str) -> Path:
    """The lossless segments cut from one reference (a folder, with its segments.csv)."""
    return CACHE / "synth" / dataset / "segments" / reference


def synth_shard(dataset: str, reference: str, shard: int | str) -> Path:
    """One shard of the variants of a reference: the encoded videos and their scores.csv."""
    return CACHE / "synth" / dataset / "variants" / reference / shard_name(shard)


def stats(dataset: str) -> Path:
    """Dataset-level feature statistics (pipeline/features/stats.py)."""
    return RESULTS / "stats" / f"{dataset}.json"


def prompts_dir(dataset: str) -> Path:
    return RESULTS / "prompts" / dataset


def prompt_file(part: str) -> str:
    """File name of one JSONL shard of Q&A samples: part = 'fold<k>' (k-fold datasets) or a split name."""
    return f"{part}.jsonl"


def prompt_part(dataset: str, part: str) -> Path:
    return prompts_dir(dataset) / prompt_file(part)


def tokenizer_dir() -> Path:
    return RESULTS / "tokenizer"


def fold_part(fold: int | str) -> str:
    """The folder of one fold of a `folds: all` experiment (`fold3`, or `fold{fold}` in a pattern)."""
    return f"fold{fold}" if _is_wildcard(fold) else f"fold{int(fold)}"


def model_dir(experiment: str, fold: int | None = None) -> Path:
    """Model folder; one per fold of a `folds: all` experiment (`results/models/<experiment>/fold<f>`)."""
    base = RESULTS / "models" / experiment
    return base if fold is None else base / fold_part(fold)


def train_log(experiment: str, fold: int | str | None = None) -> Path:
    """The training log (step, loss, ...) in a model folder."""
    return model_dir(experiment, fold) / "train_log.csv"


def checkpoint_dir(experiment: str, fold: int | None = None) -> Path:
    base = CACHE / "checkpoints" / experiment
    return base if fold is None else base / fold_part(fold)


def predictions(experiment: str, dataset: str, fold: int | None = None) -> Path:
    """Predictions of a test dataset; per fold under `results/eval/<experiment>/fold<f>/<dataset>/`. For a
    `folds: all` experiment the fold-less path holds every fold's predictions pooled (a `fold` column)."""
    base = RESULTS / "eval" / experiment
    return (base if fold is None else base / fold_part(fold)) / dataset / "predictions.csv"


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


def report_plots() -> Path:
    """The report's plots as PNG files, beside its page."""
    return report().parent / "plots"


def resolved_config() -> Path:
    """The validated config with every default, as the commands read it (written at parse time)."""
    return RESULTS / "config.resolved.yaml"


def _job_file(kind: str, suffix: str, stage: str, parts: tuple[str, ...]) -> Path:
    names = (stage, *parts)
    return (RESULTS / kind).joinpath(*names[:-1]) / f"{names[-1]}{suffix}"


def log(stage: str, *parts: str) -> Path:
    """A job's log: `results/logs/<stage>/<part>/.../<last part>.log` (`results/logs/<stage>.log`
    for a stage with one job)."""
    return _job_file("logs", ".log", stage, parts)


def benchmark(stage: str, *parts: str) -> Path:
    """A job's Snakemake benchmark table, laid out as its log under `results/benchmarks/`."""
    return _job_file("benchmarks", ".tsv", stage, parts)
