"""Training runs of an experiment: its training settings (top-level `training` + the experiment's
overrides), its optional stage 1, and the model a run continues from (`init_from` / stage 1).

    experiments:
      lsvq:                                  # one experiment, two rules (train_stage1, train)
        train: [LSVQ:train]
        test: [LSVQ:test, KoNViD:all]
        stage1: {lr: 1.0e-3, epochs: 1}      # stage 1: LoRA off + these overrides -> results/models/lsvq.stage1
        training: {lora: {enabled: true}, lr: 2.0e-5}   # stage 2 continues from stage 1 -> results/models/lsvq
      lsvq-lora:                             # or: a second experiment continuing from another one's model
        train: [LSVQ:train]
        test: [LSVQ:test]
        init_from: lsvq-proj
        training: {lora: {enabled: true}}
      demo-ens:                              # an ensemble: 3 models (seeds 0, 1, 2), each its own job:
        train: [demo:train]                  # results/models/demo-ens, demo-ens.member1, demo-ens.member2;
        test: [demo:test]                    # evaluation averages their scores
        ensemble: 3

With `folds: all` every run is per fold: fold F's stage 2 continues from fold F's stage 1
(`<E>.stage1/fold<F>`), the model on every fold from `<E>.stage1/all`; `init_from` another `folds: all`
experiment continues fold by fold (same k), so no run ever starts from weights that saw its test fold.

No torch here: the Snakefile imports this module to build the DAG.
"""
from __future__ import annotations

from pathlib import Path

from jsonschema import Draft202012Validator

from pipeline.core import paths
from pipeline.core.config import deep_merge, schema
from pipeline.core.errors import UserError
from pipeline.prompts.experiments import experiment_folds, parse_selector, require_experiment, unrated

STAGE1_SUFFIX = ".stage1"
MEMBER_SUFFIX = ".member"


def run_name(experiment: str, stage: int | None = None) -> str:
    """Name of a training run's model folder and checkpoints: the experiment, or `<experiment>.stage1`
    for stage 1 of a two-stage experiment (experiment names hold no dot, so the two never clash)."""
    return experiment + STAGE1_SUFFIX if stage == 1 else experiment


def member_run(experiment: str, member: int | str = 0) -> str:
    """Name of an ensemble member's model folder and checkpoints (`experiments.<E>.ensemble`): member 0
    is the experiment's own model, member i > 0 `<experiment>.member<i>` (a pattern when given
    "{member}"), trained with seed training.seed + i."""
    if isinstance(member, str) and member.startswith("{"):
        return f"{experiment}{MEMBER_SUFFIX}{member}"
    return experiment if int(member) == 0 else f"{experiment}{MEMBER_SUFFIX}{int(member)}"


def member_seed(training: dict, member: int | None) -> int:
    """The training seed of an ensemble member: training.seed + its index."""
    return int(training["seed"]) + int(member or 0)


def ensemble_members(cfg: dict, experiment: str) -> list[int]:
    """Members of an experiment's ensemble beyond its own model (1 .. ensemble - 1)."""
    return list(range(1, int(cfg["experiments"][experiment].get("ensemble") or 1)))


def ensemble_model_dirs(cfg: dict, experiment: str, fold: int | str | None = None) -> list[Path]:
    """The model folders that score together for an experiment (or one fold of it): its own model, then
    its ensemble members' (`experiments.<E>.ensemble`), averaged by `predict_batch`."""
    return [paths.model_dir(member_run(experiment, m), fold) for m in [0, *ensemble_members(cfg, experiment)]]


def experiment_training(cfg: dict, experiment: str, stage: int | None = None) -> dict:
    """The training settings of an experiment's run: the top-level `training`, then the experiment's
    `training` overrides; for its stage 1 (`stage=1`) then `lora.enabled: false` and the `stage1`
    overrides. Nested objects (lora) merge key by key; the result is checked against the schema."""
    exp = require_experiment(cfg, experiment)
    tr = deep_merge(cfg["training"], exp.get("training") or {})
    where = f"experiments.{experiment}.training"
    if stage == 1:
        if exp.get("stage1") is None:
            raise UserError(f"experiment '{experiment}' has no stage 1 (set experiments.{experiment}.stage1)")
        tr = deep_merge(deep_merge(tr, {"lora": {"enabled": False}}), exp["stage1"])
        where = f"experiments.{experiment}.stage1"
    errors = sorted(Draft202012Validator(schema()["properties"]["training"]).iter_errors(tr),
                    key=lambda e: list(e.absolute_path))
    if errors:
        key = ".".join([where, *map(str, errors[0].absolute_path)])
        raise UserError(f"config error at '{key}': {errors[0].message} (see the `training` keys in "
                        "pipeline/core/config.schema.yaml)")
    return tr


def init_model_dir(cfg: dict, experiment: str, stage: int | None = None,
                   fold: int | str | None = None) -> Path | None:
    """The model folder a run continues from: none for stage 1; `<experiment>.stage1` (of the same
    fold, `fold`, for a `folds: all` experiment) for the second stage of a two-stage experiment; the
    `init_from` experiment's model (of the same fold when that one runs every fold); else none."""
    exp = cfg["experiments"][experiment]
    if stage == 1:
        return None
    if exp.get("stage1") is not None:
        return paths.model_dir(run_name(experiment, 1), fold)
    if exp.get("init_from"):
        other = exp["init_from"]
        return paths.model_dir(other, fold if experiment_folds(cfg, other) is not None else None)
    return None


def init_inputs(cfg: dict, experiment: str, stage: int | None = None, fold: int | str | None = None) -> dict[str, str]:
    """{"init": model folder} of a run that continues from one (a Snakemake input), else {}."""
    init = init_model_dir(cfg, experiment, stage, fold)
    return {"init": str(init)} if init is not None else {}


def check_experiments(cfg: dict) -> None:
    """Every experiment's training settings (both stages) and `init_from` chain, checked up front."""
    exps = cfg["experiments"]
    for name, exp in exps.items():
        experiment_training(cfg, name)
        for selector in exp["train"]:
            if unrated(cfg, parse_selector(selector)[0]):
                raise UserError(f"experiments.{name}.train: '{selector}' is a folder of unrated videos (format "
                                "folder): nothing to train on; list it under test to score its videos")
        if exp.get("stage1") is not None:
            experiment_training(cfg, name, 1)
            if exp.get("init_from"):
                raise UserError(f"experiments.{name}: set either stage1 or init_from, not both")
        if int(exp.get("ensemble") or 1) > 1 and (exp.get("stage1") is not None or exp.get("init_from")):
            raise UserError(f"experiments.{name}: an ensemble cannot continue from another model "
                            "(stage1 / init_from); train its members from scratch")
        other = exp.get("init_from")
        if other in exps and experiment_folds(cfg, other) is not None:
            mine, theirs = experiment_folds(cfg, name), experiment_folds(cfg, other)
            if mine != theirs:
                raise UserError(f"experiments.{name}.init_from: '{other}' runs every fold (folds: all, k={len(theirs)}), "
                                f"so {name} continues fold by fold and must run the same folds (folds: all, "
                                f"k={len(theirs)})")
        seen, cur = [name], exp.get("init_from")
        while cur:
            if cur not in exps:
                raise UserError(f"experiments.{name}.init_from: unknown experiment '{cur}'")
            if cur in seen:
                raise UserError(f"experiments.{name}.init_from: a cycle ({' -> '.join(seen + [cur])})")
            seen.append(cur)
            cur = exps[cur].get("init_from")
