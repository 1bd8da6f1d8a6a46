"""What the Snakemake workflow decides from the resolved plan, so `rules/common.smk` only wires it.

The Snakefile validates the config (`load`) and resolves it once (`resolve_plan`: the typed settings of
pipeline/core/settings.py); every function here takes that `Settings` or the piece it needs (the
`datasets` or `experiments` mapping, an `Experiment`, a `Dataset`). None needs a manifest (input
functions that read one live in common.smk, behind the manifest checkpoint). No torch here: the
Snakefile imports this module to build the DAG.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

import yaml

from pipeline.core import atomic, paths, resolve, resources
from pipeline.core.config import stable_hash, validate
from pipeline.core.errors import UserError
from pipeline.ingest.inputs import require_inputs
from pipeline.ingest.manifest import folder_state
from pipeline.prompts.selectors import parse_selector, test_selectors, unrated
from pipeline.prompts.shards import BANK_PATH
from pipeline.training import runs

if TYPE_CHECKING:
    from pipeline.core.settings import Dataset, Experiment, PromptSettings, Settings

# GPUs per stage: pipeline.core.resources (with each rule family's threads, memory and run time)
GPU_STAGES, gpu_count, on_gpu = resources.GPU_STAGES, resources.gpu_count, resources.on_gpu


def load(config: dict) -> dict:
    """The workflow's config, validated against the package schema once, every default filled."""
    return validate(config, "config")


def resolve_plan(config: dict) -> "Settings":
    """The validated config's resolved plan (pipeline/core/resolve.py): what every rule reads."""
    return resolve.resolve(config, validated=True)


# Jobs never download: pretrained weights come from `lmmvqa fetch-weights` (or local folders) beforehand.
# A user who wants downloads on first use sets HF_HUB_OFFLINE=0 in the environment of `snakemake`.
OFFLINE = {"HF_HUB_OFFLINE": "1"}


def offline_jobs(environ=os.environ) -> dict:
    """Set HF_HUB_OFFLINE=1 for the workflow's jobs (they inherit Snakemake's environment; cluster jobs
    re-read the Snakefile) unless the environment already says otherwise; returns what is in effect."""
    for key, value in OFFLINE.items():
        environ.setdefault(key, value)
    return {key: environ[key] for key in OFFLINE}


def folds(experiments: Mapping[str, "Experiment"]) -> dict[str, list[int]]:
    """Experiment -> its folds, for the experiments that run every fold (`folds: all`)."""
    return {name: exp.folds for name, exp in experiments.items() if exp.folds is not None}


def synth_datasets(datasets: Mapping[str, "Dataset"], generated: bool | None = None) -> list[str]:
    """The `synth` datasets (pipeline/synth); `generated=True`: those whose references the demo generator
    renders (`generate:`), False: the others."""
    return [d for d, ds in datasets.items() if ds.format == "synth"
            and (generated is None or bool(ds.generate) == generated)]


def generated_datasets(datasets: Mapping[str, "Dataset"]) -> list[str]:
    """Datasets the demo generator writes (a synth dataset's `generate` renders its references instead)."""
    return [d for d, ds in datasets.items() if ds.generate and ds.format != "synth"]


def written_inputs(datasets: Mapping[str, "Dataset"]) -> list[Path]:
    """The dataset files and folders the workflow writes itself (none of them needs to exist when it
    starts): a generated dataset's label file and videos (the demo generator), a synth dataset's label
    file and variants (its stages), and a synth dataset's rendered references with their labels.csv."""
    out = []
    for ds in datasets.values():
        if ds.format == "synth":
            out += [Path(ds.labels), Path(ds.videos)]
            if ds.generate:
                out += [Path(ds.references), Path(ds.references).parent / "labels.csv"]
        elif ds.generate:
            out += [Path(ds.labels), Path(ds.videos)]
    return out


def read_inputs(datasets: Mapping[str, "Dataset"]) -> list[tuple[str, str, str]]:
    """(key, path, dataset) of every dataset input the workflow only reads: the label files, videos and
    references folders and reference tables of the config, less those it writes itself (`written_inputs`,
    and anything inside them: a `folder` dataset of the demo's videos)."""
    written = [os.path.normpath(os.path.abspath(p)) for p in written_inputs(datasets)]

    def is_written(path: str) -> bool:
        full = os.path.normpath(os.path.abspath(path))
        return any(full == w or full.startswith(w + os.sep) for w in written)

    out = []
    for name, ds in datasets.items():
        keys = [("labels", ds.labels), *(("extra_labels", f) for f in ds.extra_labels),
                ("videos", ds.videos), ("references", ds.references),
                ("reference_labels", ds.reference_labels)]
        out += [(key, path, name) for key, path in keys if path and not is_written(path)]
    return out


def check_inputs(datasets: Mapping[str, "Dataset"]) -> None:
    """Stop before any job when a dataset input that no rule writes is absent, in one line naming the
    dataset, the key and the path (with a word on `../shared`, the development data, when the path runs
    through it): the same line as `lmmvqa manifest` run by hand (pipeline/ingest/inputs.py)."""
    require_inputs(read_inputs(datasets))


def at_parse_time(decide, *args):
    """`decide(*args)` as the Snakefile calls it while Snakemake reads it: a UserError ends Snakemake
    with its one line on stderr and exit code 1, where Snakemake would print a traceback."""
    try:
        return decide(*args)
    except UserError as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def names_regex(names) -> str:
    """Rule-level wildcard constraint matching exactly these names (none: matches nothing)."""
    return "|".join(sorted(names)) or "(?!)"


def experiment_datasets(exp: "Experiment", datasets: Mapping[str, "Dataset"], role: str,
                        rated: bool = False) -> list[str]:
    """Datasets an experiment trains (`role="train"`) or tests (`"test"`) on; `rated`: only those with
    ratings (not format `folder`)."""
    return sorted({d for d in (parse_selector(s)[0] for s in getattr(exp, role))
                   if not (rated and unrated(datasets, d))})


def rated_datasets(datasets: Mapping[str, "Dataset"]) -> list[str]:
    """Datasets with ratings (all but format `folder`): what the tokenizer is trained on."""
    return [d for d in datasets if not unrated(datasets, d)]


def training_experiment(exp: "Experiment", datasets: Mapping[str, "Dataset"]) -> str:
    """An experiment's settings as its training jobs depend on them (JSON of its config block): all but
    its test selectors of unrated datasets, so listing a folder of new videos to score retrains nothing."""
    block = dict(exp.block)
    block["test"] = [s for s in block["test"] if not unrated(datasets, parse_selector(s)[0])]
    return json.dumps(block, sort_keys=True)


def experiment_tests(experiments: Mapping[str, "Experiment"]) -> list[tuple[str, str]]:
    """(experiment, test selector) pairs that get predictions and metrics of their own (for `folds: all`:
    the aggregate over folds). Overlapping selectors stop here, at parse time (`test_selectors`)."""
    return [(name, s) for name, exp in experiments.items() for s in test_selectors(exp)]


def model_dirs(experiments: Mapping[str, "Experiment"]) -> list[str]:
    """Every model folder of the config: one per single-fold experiment; one per fold of the others
    and their model trained on every fold (`results/models/<E>/all`, the one to ship)."""
    return [str(paths.model_dir(name, f)) for name, exp in experiments.items()
            for f in ([*exp.folds, paths.FULL_MODEL] if exp.folds is not None else [None])]


def targets(s: "Settings") -> list[str]:
    """What `snakemake` with no target builds: every manifest, and with experiments their metrics,
    tables and the report. The metrics and tables are asked for, not only the report page: a run that
    already has a report would otherwise skip an experiment added to the config later."""
    out = [str(paths.manifest(d)) for d in s.datasets]
    if s.experiments:
        out += [str(paths.metrics(e, sel)) for e, sel in experiment_tests(s.experiments)]
        out += [str(paths.experiment_table(e)) for e in s.experiments]
        out.append(str(paths.report()))
    return out


def manifest_digest(df) -> str:
    """Hash of what the prompts of a dataset are built from (ids, scores, levels, splits, folds)."""
    cols = [c for c in ("id", "mos", "level", "split", "fold") if c in df.columns]
    return stable_hash(df[cols].astype(str).values.tolist(), 16)


def template_bank(prompts: "PromptSettings") -> Path:
    """The prompt template bank in use: the config's, else the packaged one."""
    return Path(prompts.templates or BANK_PATH)


def template_bank_digest(prompts: "PromptSettings") -> str:
    """Hash of the template bank, so editing it reruns prompts -> training -> evaluation."""
    bank = template_bank(prompts)
    return hashlib.sha256(bank.read_bytes()).hexdigest()[:12] if bank.exists() else "missing"


def write_resolved_config(s: "Settings") -> str:
    """The validated config with every default (`Settings.config`), as the `lmmvqa` commands read it.
    Written (atomically) only when its content changes, so its mtime never triggers reruns; rules carry
    the settings they depend on in `params:` instead."""
    path = paths.resolved_config()
    text = yaml.safe_dump(s.config, sort_keys=True)
    if not path.exists() or path.read_text() != text:
        atomic.write_text(path, text)
    return str(path)


def config_sources(configfiles, workdir: str | Path | None = None) -> list[str]:
    """The config files a run was started with (`snakemake --configfile`, else the default config.yaml),
    as the experiment records name them: relative to the working directory when inside it (so a moved
    checkout keeps its records), else absolute."""
    base = Path(workdir or os.getcwd()).resolve()
    out = []
    for f in configfiles:
        p = Path(f).resolve()
        out.append(str(p.relative_to(base)) if p.is_relative_to(base) else str(p))
    return out


def experiment_results(experiment: str) -> list[Path]:
    """What an experiment's name holds on disk: its model folders (stages and members included) and
    its evaluation results (anything under results/eval/<E>/ but the source record)."""
    models = paths.model_dir(experiment)
    found = [p for p in [models, *sorted(models.parent.glob(f"{experiment}.*"))] if p.exists()]
    source = paths.experiment_source(experiment)
    evals = source.parent
    found += sorted(p for p in evals.iterdir() if p != source) if evals.is_dir() else []
    return found


def claim_experiments(experiments, sources: list[str]) -> None:
    """Stop a run whose config names an experiment that already holds results of another config
    file (naming both), before any job runs; else record this run's config file(s) beside each
    experiment's results (`paths.experiment_source`). "Another config" is another file: an edit of
    the same file (an evaluation key, a training setting) reruns what it changes, as always, while
    two files naming one experiment would overwrite each other's models and metrics. A record without
    results (a dry run, an interrupted first run) is taken over."""
    for experiment in experiments:
        record = paths.experiment_source(experiment)
        mine = {"experiment": experiment, "config_files": list(sources)}
        try:
            theirs = json.loads(record.read_text()) if record.is_file() else None
        except ValueError:
            theirs = None
        if theirs == mine:
            continue
        held = experiment_results(experiment)
        if theirs is not None and theirs.get("config_files") != mine["config_files"] and held:
            def name(files):
                return " + ".join(files) if files else "the command line's config"
            raise UserError(
                f"experiment '{experiment}' already holds the results of config {name(theirs.get('config_files'))} "
                f"({', '.join(map(str, held[:3]))}; recorded in {record}); this run's config {name(sources)} names "
                f"the same experiment and would overwrite them. Rename the experiment in one of the configs, or "
                f"delete {record} to let this config take the results over")
        atomic.write_text(record, json.dumps(mine, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------------
# what the rules' directives ask, given the plan (rules/common.smk wires these to Snakemake)


def family_threads(s: "Settings", rule: str) -> int:
    """The threads of a rule's jobs, its family's (pipeline/core/resources.py); Snakemake caps them at
    --cores on one machine."""
    return resources.threads(s.features, resources.family_of(rule))


def family_resources(s: "Settings", rule: str) -> dict:
    """The resources of a rule's jobs (unpacked into its resources directive) from its family: GPUs,
    memory in MB for the job's threads, run time in minutes, the figures that `lmmvqa plan` prints."""
    family = resources.family_of(rule)
    fixed = resources.job_resources(s, family)
    out = {"mem_mb": lambda wildcards, threads: resources.mem_mb(family, threads), "runtime": fixed["runtime"]}
    if resources.FAMILIES[family].gpu_stage:  # GPU stages declare `gpu` (0 on CPU): train's command reads it
        out["gpu"] = fixed["gpu"]
    return out


def videos_state(ds: "Dataset") -> str:
    """Rerun trigger of the manifest for videos replaced in place (pipeline.ingest.manifest.folder_state).
    Not for generated or synth datasets: their folder is a rule's output, tracked by Snakemake."""
    if not ds.videos or ds.generate or ds.format == "synth":
        return ""
    return folder_state(ds.videos)


def group_by_option(ds: "Dataset") -> str:
    """`--group-by COLUMN` of the manifest command where the dataset's split groups videos, else ''."""
    return f"--group-by {ds.split.group_by}" if ds.split.group_by else ""


def mos_scale_option(ds: "Dataset") -> str:
    """`--mos-scale SCALE` of the manifest command where the dataset overrides its format's, else ''."""
    return f"--mos-scale {ds.mos_scale}" if ds.mos_scale else ""


def synth_settings(ds: "Dataset") -> str:
    """What a synth dataset's plan depends on (JSON): its synth block (the metric only changes the labels)."""
    return json.dumps({k: v for k, v in ds.synth.items() if k != "metric"}, sort_keys=True)


def references_state(ds: "Dataset") -> str:
    """Rerun trigger of a synth plan for references added, removed or replaced in place (not for rendered
    references: their folder is a rule's output)."""
    return "" if ds.generate else folder_state(ds.references)


def adapter_inputs(s: "Settings") -> list[str]:
    """The adapter file extraction needs (none without `models.vision.adapted`)."""
    return [str(s.adapter.file)] if s.adapter is not None else []


def training_inputs(s: "Settings", experiment: str, store_paths: Callable[[str], list[str]]) -> dict:
    """A training job's inputs: the prompts and feature stores (`store_paths(dataset)`) of the datasets it
    trains on, the trained tokenizer where the LLM uses one, and, with `exclude_shared`, the manifests
    that say which training videos share content with the test videos."""
    exp = s.experiments[experiment]
    datasets = experiment_datasets(exp, s.datasets, "train")
    inputs = {"prompts": [str(paths.prompts_dir(d)) for d in datasets],
              "stores": [p for d in datasets for p in store_paths(d)]}
    if s.trains_tokenizer:
        inputs["tokenizer"] = str(paths.tokenizer_dir())
    if exp.exclude_shared:
        tested = experiment_datasets(exp, s.datasets, "test", rated=True)
        inputs["manifests"] = [str(paths.manifest(d)) for d in sorted(set(datasets) | set(tested))]
    return inputs


def training_input_args(declared) -> str:
    """The flags that hand a training job the inputs declared for it (its feature stores, the
    trained tokenizer and the model it continues from, where it has them)."""
    names = declared.keys()
    args = ["--stores", *declared.stores] if "stores" in names else []
    args += ["--tokenizer", declared.tokenizer] if "tokenizer" in names else []
    args += ["--init", declared.init] if "init" in names and declared.init else []
    return " ".join(args)


def wildcard_fold(wildcards) -> int | None:
    """The fold of a per-fold job (None for single-fold jobs)."""
    return int(wildcards.fold) if "fold" in wildcards.keys() else None


def fold_option(wildcards) -> str:
    """`--fold F` for a per-fold job's command, '' for a single-fold one (rules of the model trained on
    every fold set `--fold all` in their params)."""
    fold = wildcard_fold(wildcards)
    return "" if fold is None else f"--fold {fold}"


def member_option(wildcards) -> str:
    """`--member I` for an ensemble member's training job, '' otherwise."""
    return f"--member {wildcards.member}" if "member" in wildcards.keys() else ""


def ensemble_model_dirs(exp: "Experiment", fold: int | str | None) -> list[str]:
    """The model folders an evaluation scores with: the experiment's (fold's) own model, then its
    ensemble members' (`experiments.<E>.ensemble`)."""
    return [str(d) for d in runs.member_model_dirs(exp, fold)]


def fold_metrics(exp: "Experiment", selector: str) -> dict:
    """Per-fold metrics and predictions that the aggregate of (experiment, test selector) reads."""
    return {"metrics": [str(paths.metrics(exp.name, selector, f)) for f in exp.folds],
            "predictions": [str(paths.predictions(exp.name, selector, f)) for f in exp.folds]}


def run_init(s: "Settings", fold: int | str | None = None, stage: int | None = None):
    """Input function of a training run's `init`: the model it continues from (its stage 1 or
    `init_from` model; for a per-fold run, that fold's), [] for none. Apart from the data inputs, which
    wait for the manifest checkpoint, so a dry run already plans stage 1 before stage 2. `fold`: the
    run's fold where the job has no fold wildcard (`all`, the model trained on every fold)."""

    def init(wildcards):
        run_fold = wildcard_fold(wildcards) if fold is None else fold
        found = runs.continues_from(s.experiments[wildcards.experiment], s.experiments, stage, run_fold)
        return str(found) if found is not None else []

    return init
