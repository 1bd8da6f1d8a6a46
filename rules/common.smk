# Helpers and config validation shared by every rule file.
import json
import os
import shutil
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

from pipeline import config as pipeline_config
from pipeline import experiments as pipeline_experiments
from pipeline import manifest as pipeline_manifest
from pipeline import paths
from pipeline.settings import feature_settings, feature_settings_hash, model_spec
from pipeline.versions import code_version

min_version("9.0")


# The package's validator first: it names the bad key in one line and fills every default (also
# under optional objects that are null, where Snakemake's set_default would crash). Then the same
# schema through Snakemake's own validate, as a check on what the rules see.
config = pipeline_config.validate(config, "config")
validate(config, "../pipeline/config.schema.yaml", set_default=False)

SETTINGS = feature_settings_hash(config)
PRESET = config["models"]["preset"]
# `auto` runs on a GPU where the job has one, so the GPU stages ask the scheduler for one.
ON_GPU = config["device"] != "cpu"
ENV = "../environment.yml"
# Rules run `lmmvqa`; when it is not on PATH (e.g. `.venv/bin/snakemake` run without activating the
# venv), use the one installed beside this interpreter.
if not shutil.which("lmmvqa") and (Path(sys.executable).parent / "lmmvqa").exists():
    os.environ.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


wildcard_constraints:
    dataset=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    experiment=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    shard=r"\d{5}",
    settings=r"[0-9a-f]{10}",
    fold=r"\d+",


# Experiment -> its folds when it runs every fold (`folds: all`: one train + evaluate job per fold and an
# aggregate per test dataset); experiments absent here hold out one fold. Checked at parse time, so a
# `folds: all` experiment without a k-fold dataset stops before any job runs.
FOLDS = {
    e: f
    for e in config["experiments"]
    if (f := pipeline_experiments.experiment_folds(config, e)) is not None
}


def _names_regex(names):
    """Rule-level wildcard constraint matching exactly these experiment names (none: matches nothing)."""
    return "|".join(sorted(names)) or "(?!)"


# The single-fold rules (train, evaluate) and the per-fold ones produce disjoint experiments' files, and
# the aggregate writes a `folds: all` experiment's results/eval/<e>/<d>/metrics.json where a single-fold
# experiment's evaluate job writes its own.
SINGLE_EXPERIMENTS = _names_regex(set(config["experiments"]) - set(FOLDS))
FOLD_EXPERIMENTS = _names_regex(FOLDS)


def dataset_cfg(dataset):
    return config["datasets"][dataset]


def generated_datasets():
    return [d for d, c in config["datasets"].items() if c.get("generate")]


def label_files(dataset):
    ds = dataset_cfg(dataset)
    return [ds["labels"], *ds["extra_labels"]]


def videos_dir(dataset):
    return dataset_cfg(dataset)["videos"] or ""


def videos_state(dataset):
    """Rerun trigger of the manifest for videos replaced in place (pipeline.manifest.folder_state).
    Not for generated datasets: their folder is the demo_data rule's output, tracked by Snakemake."""
    if not videos_dir(dataset) or dataset_cfg(dataset).get("generate"):
        return ""
    return pipeline_manifest.folder_state(videos_dir(dataset))


def gpu_count(stage):
    """GPUs a job asks for (the `gpu` resource: `--gpus=N` on SLURM, limited by `--resources gpu=N`
    on one box) when the config runs on CUDA or `auto`: one for extraction and evaluation,
    `training.gpus` for training (DDP through `lmmvqa launch`)."""
    if not ON_GPU or stage not in ("extract", "train", "evaluate"):
        return 0
    return config["training"]["gpus"] if stage == "train" else 1


def split_scheme(dataset):
    ds = dataset_cfg(dataset)
    return "official" if ds["format"] == "lsvq" and ds["split"]["scheme"] != "kfold" else ds["split"]["scheme"]


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
    df = manifest_df(wildcards.dataset)
    cols = [c for c in ("id", "mos", "level", "split", "fold") if c in df.columns]
    return pipeline_config.stable_hash(df[cols].astype(str).values.tolist(), 16)


def store_paths(dataset):
    return [str(paths.store(dataset, SETTINGS, s)) for s in shards(dataset)]


def probe_paths(dataset):
    return [str(paths.probe(dataset, s)) for s in shards(dataset)]


def experiment_datasets(experiment, role):
    exp = config["experiments"][experiment]
    return sorted({pipeline_experiments.parse_selector(s)[0] for s in exp[role]})


def training_inputs(wildcards):
    datasets = experiment_datasets(wildcards.experiment, "train")
    inputs = {
        "prompts": [str(paths.prompts_dir(d)) for d in datasets],
        "stores": [p for d in datasets for p in store_paths(d)],
    }
    if model_spec(config, "llm")["source"] is None:  # an LLM built at random init uses our tokenizer
        inputs["tokenizer"] = str(paths.tokenizer_dir())
    return inputs


def wildcard_fold(wildcards):
    """The fold of a per-fold job (None for single-fold jobs)."""
    return int(wildcards.fold) if "fold" in wildcards.keys() else None


def fold_option(wildcards):
    """`--fold F` for a per-fold job's command, '' for a single-fold one."""
    fold = wildcard_fold(wildcards)
    return "" if fold is None else f"--fold {fold}"


def evaluation_inputs(wildcards):
    return {
        "model": str(paths.model_dir(wildcards.experiment, wildcard_fold(wildcards))),
        "prompts": str(paths.prompts_dir(wildcards.dataset)),
        "stores": store_paths(wildcards.dataset),
    }


def experiment_tests():
    """(experiment, dataset) pairs that get predictions and metrics (for `folds: all`: the aggregate)."""
    return [(e, d) for e in config["experiments"] for d in experiment_datasets(e, "test")]


def fold_metrics(wildcards):
    """Per-fold metrics and predictions that the aggregate of (experiment, dataset) reads."""
    e, d = wildcards.experiment, wildcards.dataset
    return {
        "metrics": [str(paths.metrics(e, d, f)) for f in FOLDS[e]],
        "predictions": [str(paths.predictions(e, d, f)) for f in FOLDS[e]],
    }


def model_dirs():
    """Every model folder of the config: one per single-fold experiment, one per fold of the others."""
    return [
        str(paths.model_dir(e, f))
        for e in config["experiments"]
        for f in FOLDS.get(e, [None])
    ]


def all_targets():
    targets = []
    for dataset in config["datasets"]:
        targets.append(str(paths.manifest(dataset)))
    if config["experiments"]:
        # The metrics and tables of every experiment too, not only the report page: a run that already
        # has a report would otherwise skip an experiment added to the config later, as the report's
        # own output is present and its new outputs are not requested by anything.
        targets += [str(paths.metrics(e, d)) for e, d in experiment_tests()]
        targets += [str(paths.experiment_table(e)) for e in config["experiments"]]
        targets.append(str(paths.report()))
    return targets


def _write_resolved_config():
    """The validated config with every default, as the `lmmvqa` commands read it.

    Written only when its content changes, so its mtime never triggers reruns; rules carry the
    settings they depend on in `params:` instead.
    """
    import yaml

    path = paths.resolved_config()
    text = yaml.safe_dump(config, sort_keys=True)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return str(path)


RESOLVED_CONFIG = _write_resolved_config()


def template_bank_digest():
    """Hash of the prompt template bank in use, so editing it reruns prompts -> training -> evaluation."""
    import hashlib

    bank = config["prompts"]["templates"] or str(Path(pipeline_config.__file__).parent / "data" / "templates.yaml")
    return hashlib.sha256(Path(bank).read_bytes()).hexdigest()[:12] if Path(bank).exists() else "missing"
