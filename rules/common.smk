# Config validation, the resolved plan and the input functions that every rules file shares (wiring only);
# the decisions behind them live in pipeline/workflow.py, which takes the plan's objects
# (pipeline/core/settings.py).
import json
import os
import shutil
import sys
from pathlib import Path

from snakemake.utils import min_version

from pipeline.ingest import manifest as pipeline_manifest
from pipeline.core import paths
from pipeline.core.settings import as_dict
from pipeline import workflow as pipeline_workflow
from pipeline.core.versions import code_version
from pipeline.training import runs as pipeline_runs

min_version("9.0")


# Validated once, by the package (it names a bad key in one line and fills every default); a mistake found
# while Snakemake reads this file ends it with that one line (no traceback). `config` stays the validated
# dict (Snakemake's own); the rules read the plan resolved from it once (pipeline/core/settings.py).
config = pipeline_workflow.at_parse_time(pipeline_workflow.load, config)
SETTINGS_PLAN = pipeline_workflow.at_parse_time(pipeline_workflow.resolve_plan, config)
DATASETS, EXPERIMENTS = SETTINGS_PLAN.datasets, SETTINGS_PLAN.experiments
# A label file or media folder that no rule writes and that does not exist stops the run here, naming
# the dataset, the key and the path (and ../shared, the development data, where the path runs through it).
if workflow.is_main_process:
    pipeline_workflow.at_parse_time(pipeline_workflow.check_inputs, DATASETS)

# jobs never touch the network (HF_HUB_OFFLINE=1): weights come from `lmmvqa fetch-weights`
OFFLINE_ENV = pipeline_workflow.offline_jobs()
ENV = "../environment.yml"
# Rules run `lmmvqa`; when it is not on PATH (e.g. `.venv/bin/snakemake` run without activating the
# venv), use the one installed beside this interpreter.
if not shutil.which("lmmvqa") and (Path(sys.executable).parent / "lmmvqa").exists():
    os.environ.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


wildcard_constraints:
    dataset=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    experiment=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    subset=r"[A-Za-z0-9_]+",
    shard=r"\d{5}",
    settings=r"[0-9a-f]{10}",
    fold=r"\d+",


# A test selector `dataset:subset` as a pattern: results of each selector live apart
# (results/eval/<experiment>/<dataset>/<subset>/).
TEST = "{dataset}:{subset}"
# Experiment -> its folds when it runs every fold (`folds: all`: one train + evaluate job per fold and an
# aggregate per test dataset); experiments absent here hold out one fold. The resolver checks them, so a
# `folds: all` experiment without a k-fold dataset stops before any job runs.
FOLDS = pipeline_workflow.folds(EXPERIMENTS)
# The single-fold rules (train, evaluate) and the per-fold ones produce disjoint experiments' files, and
# the aggregate writes a `folds: all` experiment's results/eval/<e>/<d>/metrics.json where a single-fold
# experiment's evaluate job writes its own.
SINGLE_EXPERIMENTS = pipeline_workflow.names_regex(set(EXPERIMENTS) - set(FOLDS))
FOLD_EXPERIMENTS = pipeline_workflow.names_regex(FOLDS)
RESOLVED_CONFIG = pipeline_workflow.write_resolved_config(SETTINGS_PLAN)
# An experiment name that already holds another config file's results stops the run here, naming both;
# else the config file is recorded beside its results. Jobs (which re-read the Snakefile) skip it.
if workflow.is_main_process:
    pipeline_workflow.at_parse_time(
        pipeline_workflow.claim_experiments, EXPERIMENTS, pipeline_workflow.config_sources(workflow.configfiles)
    )


def family_threads(rule):
    return pipeline_workflow.family_threads(SETTINGS_PLAN, rule)


def family_resources(rule):
    """Unpacked into a rule's resources directive: `**family_resources(name)`."""
    return pipeline_workflow.family_resources(SETTINGS_PLAN, rule)


_MANIFESTS = {}


def _manifest_entry(dataset):
    """(manifest table, {shard: digest}) of a dataset, read once per version of the file: input
    functions ask for it once per job, and at 40k videos re-reading it each time dominated the DAG."""
    path = checkpoints.manifest.get(dataset=dataset).output.manifest
    key = (path, os.stat(path).st_mtime_ns)
    if dataset not in _MANIFESTS or _MANIFESTS[dataset][0] != key:
        df = pipeline_manifest.read_manifest(path)
        _MANIFESTS[dataset] = (key, df, pipeline_manifest.shard_digests(df))
    return _MANIFESTS[dataset][1:]


def shards(dataset):
    """The dataset's shards, once the manifest checkpoint has run (input functions re-evaluate then)."""
    return sorted(_manifest_entry(dataset)[1])


def shard_digest(wildcards):
    return _manifest_entry(wildcards.dataset)[1][int(wildcards.shard)]


def dataset_digest(wildcards):
    return pipeline_workflow.manifest_digest(_manifest_entry(wildcards.dataset)[0])


def after_manifest(path_of):
    """An input function giving `path_of(wildcards)` once the dataset's manifest checkpoint has run."""

    def input_function(wildcards):
        shards(wildcards.dataset)
        return path_of(wildcards)

    return input_function


def store_paths(dataset):
    return [str(paths.store(dataset, SETTINGS_PLAN.features.hash, s)) for s in shards(dataset)]


def probe_paths(dataset):
    return [str(paths.probe(dataset, s)) for s in shards(dataset)]


def training_inputs(wildcards):
    return pipeline_workflow.training_inputs(SETTINGS_PLAN, wildcards.experiment, store_paths)


def fold_metrics(wildcards):
    return pipeline_workflow.fold_metrics(EXPERIMENTS[wildcards.experiment], f"{wildcards.dataset}:{wildcards.subset}")


def run_init(fold=None, stage=None):
    """Input function of a training run's `init` (pipeline/workflow.py `run_init`)."""
    return pipeline_workflow.run_init(SETTINGS_PLAN, fold, stage)


wildcard_fold = pipeline_workflow.wildcard_fold
fold_option = pipeline_workflow.fold_option
member_option = pipeline_workflow.member_option
training_input_args = pipeline_workflow.training_input_args
