"""Where every artifact lives, relative to the workflow's working directory.

The single source of artifact paths: the Snakemake rules build their input, output, log and benchmark
patterns from these functions (called with wildcard names such as `"{dataset}"`), and the commands
get the paths a rule declared as arguments, so a rule's files and what its command reads and writes
cannot drift apart (tests/test_paths.py checks that no rule spells a path by hand). A command's side
outputs (`--missing`, `--failures`, `--metrics`, `--predictions`, `--plots`) default to the paths
beside its main output that the `*_beside` / `*_table` functions give, the same ones the rules declare,
so a stage also runs by hand with only its inputs and `--out`.
"""
from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path("results")
CACHE = Path("cache")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")  # dataset names, subset (split) names: no '.', no '/'


def _is_wildcard(value) -> bool:
    return isinstance(value, str) and value.startswith("{") and value.endswith("}")


def shard_name(shard: int | str) -> str:
    """`shard-00003` for shard 3 (or "00003"); `shard-{shard}` for the wildcard."""
    return f"shard-{shard}" if _is_wildcard(shard) else f"shard-{int(shard):05d}"


def manifest(dataset: str) -> Path:
    return RESULTS / "manifest" / f"{dataset}.csv"


def missing(dataset: str) -> Path:
    return missing_table(manifest(dataset))


def missing_table(manifest_csv: str | Path) -> Path:
    """The missing-videos table beside a manifest (`m.csv` -> `m.missing.csv`)."""
    return Path(manifest_csv).with_suffix(".missing.csv")


def probe(dataset: str, shard: int | str) -> Path:
    return RESULTS / "probe" / dataset / f"{shard_name(shard)}.csv"


def probe_failures(dataset: str, shard: int | str) -> Path:
    return failures_table(probe(dataset, shard))


def failures_table(table_csv: str | Path) -> Path:
    """The failures table beside a table (probe shard, synth plan or labels: `p.csv` -> `p.failures.csv`)."""
    return Path(table_csv).with_suffix(".failures.csv")


def store_dir(dataset: str, settings_hash: str) -> Path:
    """The feature stores of a dataset under one feature-settings hash (one per shard)."""
    return CACHE / "features" / dataset / settings_hash


def store(dataset: str, settings_hash: str, shard: int | str) -> Path:
    return store_dir(dataset, settings_hash) / f"{shard_name(shard)}.zarr"


def adapter(adapter_hash: str) -> Path:
    """A quality adapter's weights (safetensors), named by its hash (pipeline/features/encoding/quality_adapter.py)."""
    return CACHE / "encoders" / f"adapter-{adapter_hash}.safetensors"


def synth_dir(dataset: str) -> Path:
    """Tables of a `synth` dataset (pipeline/synth): its plan, label file and failures."""
    return RESULTS / "synth" / dataset


def synth_plan(dataset: str) -> Path:
    """One row per planned variant (reference, segment, family, level, parameters, shard)."""
    return synth_dir(dataset) / "plan.csv"


def synth_plan_failures(dataset: str) -> Path:
    """References the plan could not open or probe (beside the plan)."""
    return failures_table(synth_plan(dataset))


def synth_labels(dataset: str) -> Path:
    """The generic label file of a synth dataset (what its manifest reads)."""
    return synth_dir(dataset) / "labels.csv"


def synth_failures(dataset: str) -> Path:
    """Every reference and variant of a synth dataset that failed, with the error (beside its labels)."""
    return failures_table(synth_labels(dataset))


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
    """Dataset-level feature statistics (pipeline/features/stores/stats.py)."""
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


FULL_MODEL = "all"  # the model a `folds: all` experiment trains on every fold (the one to ship)


def fold_part(fold: int | str) -> str:
    """The folder of one fold of a `folds: all` experiment (`fold3`, or `fold{fold}` in a pattern);
    `all` for the model trained on every fold."""
    if fold == FULL_MODEL:
        return FULL_MODEL
    return f"fold{fold}" if _is_wildcard(fold) else f"fold{int(fold)}"


def model_dir(experiment: str, fold: int | str | None = None) -> Path:
    """Model folder; one per fold of a `folds: all` experiment (`results/models/<experiment>/fold<f>`)
    and its model trained on every fold (`results/models/<experiment>/all`)."""
    base = RESULTS / "models" / experiment
    return base if fold is None else base / fold_part(fold)


def train_log(experiment: str, fold: int | str | None = None) -> Path:
    """The training log (step, loss, ...) in a model folder."""
    return model_dir(experiment, fold) / "train_log.csv"


def checkpoint_dir(experiment: str, fold: int | str | None = None) -> Path:
    base = CACHE / "checkpoints" / experiment
    return base if fold is None else base / fold_part(fold)


def selector_part(selector: str) -> Path:
    """`<dataset>/<subset>` for a test selector `dataset:subset` (`lsvq/test_1080p`, or
    `{dataset}/{subset}` for the pattern `{dataset}:{subset}`). Both names are checked, so a path is
    never built from text that could leave its folder."""
    dataset, sep, subset = str(selector).partition(":")
    for name in (dataset, subset):
        if not sep or not (_is_wildcard(name) or _NAME.fullmatch(name)):
            raise ValueError(f"not a test selector 'dataset:subset': {selector!r}")
    return Path(dataset) / subset


def eval_dir(experiment: str, selector: str, fold: int | str | None = None) -> Path:
    """Results of one test selector: `results/eval/<experiment>/<dataset>/<subset>/`, per fold under
    `results/eval/<experiment>/fold<f>/<dataset>/<subset>/`."""
    base = RESULTS / "eval" / experiment
    return (base if fold is None else base / fold_part(fold)) / selector_part(selector)


def predictions(experiment: str, selector: str, fold: int | str | None = None) -> Path:
    """Predictions of a test selector (`dataset:subset`). For a `folds: all` experiment the fold-less
    path holds every fold's predictions pooled (a `fold` column)."""
    return eval_dir(experiment, selector, fold) / "predictions.csv"


def metrics(experiment: str, selector: str, fold: int | str | None = None) -> Path:
    """metrics.json of a test selector; for a `folds: all` experiment the fold-less path is the
    aggregate over folds."""
    return metrics_beside(predictions(experiment, selector, fold))


def metrics_beside(predictions_csv: str | Path) -> Path:
    """The metrics.json that goes with a predictions table: in the same folder."""
    return Path(predictions_csv).with_name("metrics.json")


def predictions_beside(metrics_json: str | Path) -> Path:
    """The predictions table that goes with a metrics.json: in the same folder."""
    return Path(metrics_json).with_name("predictions.csv")


def experiment_table(experiment: str) -> Path:
    return RESULTS / "eval" / experiment / "table.csv"


def experiment_source(experiment: str) -> Path:
    """Which config file(s) an experiment's results come from (pipeline.workflow.claim_experiments)."""
    return RESULTS / "eval" / experiment / "source.json"


def summary_table() -> Path:
    """Cross-experiment summary (experiments x test datasets), written by the report."""
    return RESULTS / "eval" / "summary.csv"


def report() -> Path:
    return RESULTS / "report" / "index.html"


def report_plots() -> Path:
    return plots_beside(report())


def plots_beside(page: str | Path) -> Path:
    """The report's plots as PNG files: a `plots/` folder beside its page."""
    return Path(page).parent / "plots"


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
