"""What the Snakemake workflow decides from the config, so `rules/common.smk` only wires it.

Every function takes the validated config; none needs a manifest (input functions that read one live
in common.smk, behind the manifest checkpoint). No torch here: the Snakefile imports this module to
build the DAG.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import yaml

from pipeline.core import atomic, paths, resources
from pipeline.core.config import stable_hash, validate
from pipeline.core.errors import UserError
from pipeline.ingest.inputs import require_inputs
from pipeline.prompts.experiments import experiment_folds, parse_selector, test_selectors, unrated
from pipeline.prompts.shards import BANK_PATH

# GPUs per stage: pipeline.core.resources (with each rule family's threads, memory and run time)
GPU_STAGES, gpu_count, on_gpu = resources.GPU_STAGES, resources.gpu_count, resources.on_gpu


def load(config: dict) -> dict:
    """The workflow's config, validated against the package schema once, every default filled."""
    return validate(config, "config")


# Jobs never download: pretrained weights come from `lmmvqa fetch-weights` (or local folders) beforehand.
# A user who wants downloads on first use sets HF_HUB_OFFLINE=0 in the environment of `snakemake`.
OFFLINE = {"HF_HUB_OFFLINE": "1"}


def offline_jobs(environ=os.environ) -> dict:
    """Set HF_HUB_OFFLINE=1 for the workflow's jobs (they inherit Snakemake's environment; cluster jobs
    re-read the Snakefile) unless the environment already says otherwise; returns what is in effect."""
    for key, value in OFFLINE.items():
        environ.setdefault(key, value)
    return {key: environ[key] for key in OFFLINE}


def folds(cfg: dict) -> dict[str, list[int]]:
    """Experiment -> its folds, for the experiments that run every fold (`folds: all`)."""
    return {e: f for e in cfg["experiments"] if (f := experiment_folds(cfg, e)) is not None}


def synth_datasets(cfg: dict, generated: bool | None = None) -> list[str]:
    """The `synth` datasets (pipeline/synth); `generated=True`: those whose references the demo generator
    renders (`generate:`), False: the others."""
    return [d for d, ds in cfg["datasets"].items() if ds["format"] == "synth"
            and (generated is None or bool(ds.get("generate")) == generated)]


def written_inputs(cfg: dict) -> list[Path]:
    """The dataset files and folders the workflow writes itself (none of them needs to exist when it
    starts): a generated dataset's label file and videos (the demo generator), a synth dataset's label
    file and variants (its stages), and a synth dataset's rendered references with their labels.csv."""
    out = []
    for ds in cfg["datasets"].values():
        if ds["format"] == "synth":
            out += [Path(ds["labels"]), Path(ds["videos"])]
            if ds.get("generate"):
                out += [Path(ds["references"]), Path(ds["references"]).parent / "labels.csv"]
        elif ds.get("generate"):
            out += [Path(ds["labels"]), Path(ds["videos"])]
    return out


def read_inputs(cfg: dict) -> list[tuple[str, str, str]]:
    """(key, path, dataset) of every dataset input the workflow only reads: the label files, videos and
    references folders and reference tables of the config, less those it writes itself (`written_inputs`,
    and anything inside them: a `folder` dataset of the demo's videos)."""
    written = [os.path.normpath(os.path.abspath(p)) for p in written_inputs(cfg)]

    def is_written(path: str) -> bool:
        full = os.path.normpath(os.path.abspath(path))
        return any(full == w or full.startswith(w + os.sep) for w in written)

    out = []
    for name, ds in cfg["datasets"].items():
        keys = [("labels", ds["labels"]), *(("extra_labels", f) for f in ds["extra_labels"]),
                ("videos", ds["videos"]), ("references", ds["references"]),
                ("reference_labels", ds["reference_labels"])]
        out += [(key, path, name) for key, path in keys if path and not is_written(path)]
    return out


def check_inputs(cfg: dict) -> None:
    """Stop before any job when a dataset input that no rule writes is absent, in one line naming the
    dataset, the key and the path (with a word on `../shared`, the development data, when the path runs
    through it): the same line as `lmmvqa manifest` run by hand (pipeline/ingest/inputs.py)."""
    require_inputs(read_inputs(cfg))


def at_parse_time(decide, *args):
    """`decide(*args)` as the Snakefile calls it while Snakemake reads it: a UserError ends Snakemake
    with its one line on stderr and exit code 1, where Snakemake would print a traceback."""
    try:
        return decide(*args)
    except UserError as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def label_format(cfg: dict, dataset: str) -> str:
    """The format the manifest reads a dataset's label file in: a synth dataset's is a generic one."""
    fmt = cfg["datasets"][dataset]["format"]
    return "generic" if fmt == "synth" else fmt


def names_regex(names) -> str:
    """Rule-level wildcard constraint matching exactly these names (none: matches nothing)."""
    return "|".join(sorted(names)) or "(?!)"


def experiment_datasets(cfg: dict, experiment: str, role: str, rated: bool = False) -> list[str]:
    """Datasets an experiment trains (`role="train"`) or tests (`"test"`) on; `rated`: only those with
    ratings (not format `folder`)."""
    return sorted({d for d in (parse_selector(s)[0] for s in cfg["experiments"][experiment][role])
                   if not (rated and unrated(cfg, d))})


def rated_datasets(cfg: dict) -> list[str]:
    """Datasets with ratings (all but format `folder`): what the tokenizer is trained on."""
    return [d for d in cfg["datasets"] if not unrated(cfg, d)]


def training_experiment(cfg: dict, experiment: str) -> str:
    """An experiment's settings as its training jobs depend on them (JSON): all but its test selectors
    of unrated datasets, so listing a folder of new videos to score retrains nothing."""
    exp = dict(cfg["experiments"][experiment])
    exp["test"] = [s for s in exp["test"] if not unrated(cfg, parse_selector(s)[0])]
    return json.dumps(exp, sort_keys=True)


def experiment_tests(cfg: dict) -> list[tuple[str, str]]:
    """(experiment, test selector) pairs that get predictions and metrics of their own (for `folds: all`:
    the aggregate over folds). Overlapping selectors stop here, at parse time (`test_selectors`)."""
    return [(e, s) for e in cfg["experiments"] for s in test_selectors(cfg, e)]


def model_dirs(cfg: dict) -> list[str]:
    """Every model folder of the config: one per single-fold experiment; one per fold of the others
    and their model trained on every fold (`results/models/<E>/all`, the one to ship)."""
    fold_map = folds(cfg)
    return [str(paths.model_dir(e, f)) for e in cfg["experiments"]
            for f in ([*fold_map[e], paths.FULL_MODEL] if e in fold_map else [None])]


def targets(cfg: dict) -> list[str]:
    """What `snakemake` with no target builds: every manifest, and with experiments their metrics,
    tables and the report. The metrics and tables are asked for, not only the report page: a run that
    already has a report would otherwise skip an experiment added to the config later."""
    out = [str(paths.manifest(d)) for d in cfg["datasets"]]
    if cfg["experiments"]:
        out += [str(paths.metrics(e, s)) for e, s in experiment_tests(cfg)]
        out += [str(paths.experiment_table(e)) for e in cfg["experiments"]]
        out.append(str(paths.report()))
    return out


def manifest_digest(df) -> str:
    """Hash of what the prompts of a dataset are built from (ids, scores, levels, splits, folds)."""
    cols = [c for c in ("id", "mos", "level", "split", "fold") if c in df.columns]
    return stable_hash(df[cols].astype(str).values.tolist(), 16)


def template_bank(cfg: dict) -> Path:
    """The prompt template bank in use: the config's, else the packaged one."""
    return Path(cfg["prompts"]["templates"] or BANK_PATH)


def template_bank_digest(cfg: dict) -> str:
    """Hash of the template bank, so editing it reruns prompts -> training -> evaluation."""
    bank = template_bank(cfg)
    return hashlib.sha256(bank.read_bytes()).hexdigest()[:12] if bank.exists() else "missing"


def write_resolved_config(cfg: dict) -> str:
    """The validated config with every default, as the `lmmvqa` commands read it. Written (atomically)
    only when its content changes, so its mtime never triggers reruns; rules carry the settings they
    depend on in `params:` instead."""
    path = paths.resolved_config()
    text = yaml.safe_dump(cfg, sort_keys=True)
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


def claim_experiments(cfg: dict, sources: list[str]) -> None:
    """Stop a run whose config names an experiment that already holds results of another config
    file (naming both), before any job runs; else record this run's config file(s) beside each
    experiment's results (`paths.experiment_source`). "Another config" is another file: an edit of
    the same file (an evaluation key, a training setting) reruns what it changes, as always, while
    two files naming one experiment would overwrite each other's models and metrics. A record without
    results (a dry run, an interrupted first run) is taken over."""
    for experiment in cfg["experiments"]:
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
