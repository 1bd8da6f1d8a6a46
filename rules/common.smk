# Config validation and the input functions shared by every rule file; the decisions behind them
# live in pipeline/workflow.py.
import json
import os
import shutil
import sys
from pathlib import Path

from snakemake.utils import min_version

from pipeline.ingest import manifest as pipeline_manifest
from pipeline.core import paths, resources as pipeline_resources
from pipeline import workflow as pipeline_workflow
from pipeline.core.specs import adapter_file, feature_settings, feature_settings_hash, model_spec, trains_tokenizer
from pipeline.core.versions import code_version
from pipeline.training import runs as pipeline_runs

min_version("9.0")


# Validated once, by the package (it names a bad key in one line and fills every default); a mistake found
# while Snakemake reads this file ends it with that one line (no traceback).
config = pipeline_workflow.at_parse_time(pipeline_workflow.load, config)
# A label file or media folder that no rule writes and that does not exist stops the run here, naming
# the dataset, the key and the path (and ../shared, the development data, where the path runs through it).
if workflow.is_main_process:
    pipeline_workflow.at_parse_time(pipeline_workflow.check_inputs, config)

SETTINGS = feature_settings_hash(config)
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
# aggregate per test dataset); experiments absent here hold out one fold. Checked at parse time, so a
# `folds: all` experiment without a k-fold dataset stops before any job runs.
FOLDS = pipeline_workflow.folds(config)
# The single-fold rules (train, evaluate) and the per-fold ones produce disjoint experiments' files, and
# the aggregate writes a `folds: all` experiment's results/eval/<e>/<d>/metrics.json where a single-fold
# experiment's evaluate job writes its own.
SINGLE_EXPERIMENTS = pipeline_workflow.names_regex(set(config["experiments"]) - set(FOLDS))
FOLD_EXPERIMENTS = pipeline_workflow.names_regex(FOLDS)
RESOLVED_CONFIG = pipeline_workflow.write_resolved_config(config)
# An experiment name that already holds another config file's results stops the run here, naming both;
# else the config file is recorded beside its results. Jobs (which re-read the Snakefile) skip it.
if workflow.is_main_process:
    pipeline_workflow.at_parse_time(
        pipeline_workflow.claim_experiments, config, pipeline_workflow.config_sources(workflow.configfiles)
    )
# The quality adapter of the vision role (rules/encoder.smk): null, its settings, or a file.
ADAPTED = config["models"]["vision"].get("adapted")


def family_threads(rule):
    """The threads of a rule's jobs, its family's (pipeline/core/resources.py); Snakemake caps them at
    --cores on one machine."""
    return pipeline_resources.threads(config, pipeline_resources.family_of(rule))


def family_resources(rule):
    """The resources of a rule's jobs, unpacked into its resources directive (`**family_resources(name)`),
    from its family: GPUs, memory in MB for the job's threads, run time in minutes, the figures that
    `lmmvqa plan` prints."""
    family = pipeline_resources.family_of(rule)
    fixed = pipeline_resources.job_resources(config, family)
    out = {
        "mem_mb": lambda wildcards, threads: pipeline_resources.mem_mb(family, threads),
        "runtime": fixed["runtime"],
    }
    if pipeline_resources.FAMILIES[family].gpu_stage:  # GPU stages declare `gpu` (0 on CPU): train's command reads it
        out["gpu"] = fixed["gpu"]
    return out


def dataset_cfg(dataset):
    return config["datasets"][dataset]


def generated_datasets():
    """Datasets the demo generator writes (a synth dataset's `generate` renders its references instead)."""
    return [d for d, c in config["datasets"].items() if c.get("generate") and c["format"] != "synth"]


def label_files(dataset):
    ds = dataset_cfg(dataset)
    return [ds["labels"], *ds["extra_labels"]]


def videos_dir(dataset):
    return dataset_cfg(dataset)["videos"] or ""


def videos_state(dataset):
    """Rerun trigger of the manifest for videos replaced in place (pipeline.ingest.manifest.folder_state).
    Not for generated or synth datasets: their folder is a rule's output, tracked by Snakemake."""
    if not videos_dir(dataset) or dataset_cfg(dataset).get("generate") or dataset_cfg(dataset)["format"] == "synth":
        return ""
    return pipeline_manifest.folder_state(videos_dir(dataset))


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


def manifest_df(dataset):
    """The dataset's manifest, once the manifest checkpoint has run (input functions re-evaluate then)."""
    return _manifest_entry(dataset)[0]


def shards(dataset):
    return sorted(_manifest_entry(dataset)[1])


def shard_digest(wildcards):
    return _manifest_entry(wildcards.dataset)[1][int(wildcards.shard)]


def dataset_digest(wildcards):
    return pipeline_workflow.manifest_digest(manifest_df(wildcards.dataset))


def after_manifest(path_of):
    """An input function giving `path_of(wildcards)` once the dataset's manifest checkpoint has run."""

    def input_function(wildcards):
        shards(wildcards.dataset)
        return path_of(wildcards)

    return input_function


def adapter_inputs(wildcards):
    """The adapter file extraction needs (none without `models.vision.adapted`)."""
    return [str(adapter_file(config))] if ADAPTED else []


def store_paths(dataset):
    return [str(paths.store(dataset, SETTINGS, s)) for s in shards(dataset)]


def probe_paths(dataset):
    return [str(paths.probe(dataset, s)) for s in shards(dataset)]


def training_inputs(wildcards):
    datasets = pipeline_workflow.experiment_datasets(config, wildcards.experiment, "train")
    inputs = {
        "prompts": [str(paths.prompts_dir(d)) for d in datasets],
        "stores": [p for d in datasets for p in store_paths(d)],
    }
    if trains_tokenizer(config):
        inputs["tokenizer"] = str(paths.tokenizer_dir())
    if config["experiments"][wildcards.experiment].get("exclude_shared"):
        # which training videos share content with the test videos is read from every manifest involved
        tested = pipeline_workflow.experiment_datasets(config, wildcards.experiment, "test", rated=True)
        inputs["manifests"] = [str(paths.manifest(d)) for d in sorted(set(datasets) | set(tested))]
    return inputs


def training_input_args(declared):
    """The flags that hand a training job the inputs declared for it (its feature stores, the
    trained tokenizer and the model it continues from, where it has them)."""
    names = declared.keys()
    args = ["--stores", *declared.stores] if "stores" in names else []
    args += ["--tokenizer", declared.tokenizer] if "tokenizer" in names else []
    args += ["--init", declared.init] if "init" in names and declared.init else []
    return " ".join(args)


def wildcard_fold(wildcards):
    """The fold of a per-fold job (None for single-fold jobs)."""
    return int(wildcards.fold) if "fold" in wildcards.keys() else None


def fold_option(wildcards):
    """`--fold F` for a per-fold job's command, '' for a single-fold one (rules of the model trained on
    every fold set `--fold all` in their params)."""
    fold = wildcard_fold(wildcards)
    return "" if fold is None else f"--fold {fold}"


def member_option(wildcards):
    """`--member I` for an ensemble member's training job, '' otherwise."""
    return f"--member {wildcards.member}" if "member" in wildcards.keys() else ""


def ensemble_model_dirs(experiment, fold):
    """The model folders an evaluation scores with: the experiment's (fold's) own model, then its
    ensemble members' (`experiments.<E>.ensemble`)."""
    return [str(d) for d in pipeline_runs.ensemble_model_dirs(config, experiment, fold)]


def fold_metrics(wildcards):
    """Per-fold metrics and predictions that the aggregate of (experiment, test selector) reads."""
    e, s = wildcards.experiment, f"{wildcards.dataset}:{wildcards.subset}"
    return {
        "metrics": [str(paths.metrics(e, s, f)) for f in FOLDS[e]],
        "predictions": [str(paths.predictions(e, s, f)) for f in FOLDS[e]],
    }


def run_init(fold=None, stage=None):
    """Input function of a training run's `init`: the model it continues from (its stage 1 or
    `init_from` model; for a per-fold run, that fold's), [] for none. Apart from the data inputs, which
    wait for the manifest checkpoint, so a dry run already plans stage 1 before stage 2. `fold`: the
    run's fold where the job has no fold wildcard (`all`, the model trained on every fold)."""

    def init(wildcards):
        run_fold = wildcard_fold(wildcards) if fold is None else fold
        return pipeline_runs.init_inputs(config, wildcards.experiment, stage, run_fold).get("init", [])

    return init
