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
from typing import TYPE_CHECKING, Mapping

from pipeline.core import paths

if TYPE_CHECKING:
    from pipeline.core.settings import Experiment

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


def member_model_dirs(exp: "Experiment", fold: int | str | None = None) -> list[Path]:
    """The model folders that score together for an experiment (or one fold of it): its own model, then
    its ensemble members' (`experiments.<E>.ensemble`), averaged by `predict_batch`."""
    return [paths.model_dir(member_run(exp.name, m), fold) for m in [0, *exp.members]]


def continues_from(exp: "Experiment", experiments: Mapping[str, "Experiment"], stage: int | None = None,
                   fold: int | str | None = None) -> Path | None:
    """The model folder a run continues from: none for stage 1; `<experiment>.stage1` (of the same
    fold, `fold`, for a `folds: all` experiment) for the second stage of a two-stage experiment; the
    `init_from` experiment's model (of the same fold when that one runs every fold); else none."""
    if stage == 1:
        return None
    if exp.stage1 is not None:
        return paths.model_dir(run_name(exp.name, 1), fold)
    if exp.init_from:
        return paths.model_dir(exp.init_from, fold if experiments[exp.init_from].every_fold else None)
    return None
