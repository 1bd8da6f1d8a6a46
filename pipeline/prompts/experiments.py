"""Config-dict spellings of the selector functions (pipeline/prompts/selectors.py) for callers that
still hold a config dict; each answers from the resolved settings, `resolve.of(cfg)`."""
from __future__ import annotations

import pandas as pd

from pipeline.core import resolve
from pipeline.prompts import selectors
from pipeline.prompts.selectors import fold_arg, official_split_names, parse_selector, part_of_row  # noqa: F401


def _ds(cfg):
    return resolve.of(cfg).datasets


def require_experiment(cfg, experiment: str) -> dict:
    return resolve.of(cfg).experiment(experiment).block


def unrated(cfg, dataset: str) -> bool:
    return selectors.unrated(_ds(cfg), dataset)


def prompt_parts(cfg, selector: str, holdout_fold: int | None) -> list[str]:
    return selectors.prompt_parts(_ds(cfg), selector, holdout_fold)


def split_names(cfg, dataset: str) -> list[str]:
    return selectors.split_names(_ds(cfg)[dataset])


def test_selectors(cfg, experiment: str) -> list[str]:
    return selectors.test_selectors(resolve.of(cfg).experiment(experiment))


def fold_dependent(cfg, selector: str) -> bool:
    return selectors.fold_dependent(_ds(cfg), selector)


def experiment_folds(cfg, experiment: str) -> list[int] | None:
    return resolve.of(cfg).experiments[experiment].folds


def with_holdout(cfg, experiment: str, fold: int | str) -> dict:
    return resolve.of(cfg).with_holdout(experiment, fold).config


def shipped_model(cfg, experiment: str):
    return selectors.shipped_model(resolve.of(cfg).experiment(experiment))


def unseen_tests(cfg, experiment: str) -> list[str]:
    s = resolve.of(cfg)
    return selectors.unseen_tests(s.experiment(experiment), s.datasets)


def select(manifest: pd.DataFrame, cfg, selector: str, holdout_fold: int) -> pd.DataFrame:
    return selectors.select(manifest, _ds(cfg), selector, holdout_fold)


def shared_content(cfg, experiment: str, manifests: dict[str, pd.DataFrame] | None = None) -> dict:
    s = resolve.of(cfg)
    return selectors.shared_content(s.experiment(experiment), s.datasets, manifests)
