"""Which videos an experiment trains and tests on: 'DATASET:SUBSET' selectors over manifests.

SUBSET is `all`; for k-fold datasets `train` (every fold but the experiment's holdout fold) or
`test` (the holdout fold); for official splits (LSVQ) a split name such as `train`, `test`, `test_1080p`.
"""
from __future__ import annotations

import pandas as pd

from .errors import UserError


def parse_selector(selector: str) -> tuple[str, str]:
    dataset, _, subset = selector.partition(":")
    return dataset, subset or "all"


def prompt_parts(cfg: dict, selector: str, holdout_fold: int) -> list[str]:
    """Prompt shard names (see paths.prompt_part) that make up a selector."""
    dataset, subset = parse_selector(selector)
    ds = cfg["datasets"].get(dataset)
    if ds is None:
        raise UserError(f"experiment selector '{selector}': unknown dataset '{dataset}'")
    split = ds["split"]
    if split["scheme"] == "kfold":
        k = split["k"]
        if holdout_fold >= k:
            raise UserError(f"experiment selector '{selector}': holdout_fold {holdout_fold} >= k={k}")
        folds = {"all": range(k), "train": [f for f in range(k) if f != holdout_fold], "test": [holdout_fold]}
        if subset not in folds:
            raise UserError(f"experiment selector '{selector}': subset must be all, train or test for a k-fold dataset")
        return [f"fold{f}" for f in folds[subset]]
    names = official_split_names(ds)
    if subset == "all":
        return names
    if subset not in names:
        raise UserError(f"experiment selector '{selector}': split '{subset}' not among {names}")
    return [subset]


def official_split_names(ds: dict) -> list[str]:
    """Split names an official-split dataset has, from its label file names (LSVQ conventions)."""
    from .labels import split_from_filename

    return sorted({split_from_filename(f) for f in [ds["labels"], *ds.get("extra_labels", [])]})


def select(manifest: pd.DataFrame, cfg: dict, selector: str, holdout_fold: int) -> pd.DataFrame:
    """Rows of a manifest that a selector picks."""
    parts = set(prompt_parts(cfg, selector, holdout_fold))
    part = manifest.apply(part_of_row, axis=1)
    return manifest[part.isin(parts)]


def part_of_row(row) -> str:
    fold = row.get("fold", -1)
    if pd.notna(fold) and int(fold) >= 0:
        return f"fold{int(fold)}"
    return str(row["split"])


def dataset_features(cfg: dict, dataset: str):
    """(reader over the feature stores of a dataset that exist for the current feature settings, their paths)."""
    from . import paths
    from .manifest import read_manifest
    from .settings import feature_settings_hash
    from .feature_store import DatasetFeatures

    settings = feature_settings_hash(cfg)
    manifest = read_manifest(paths.manifest(dataset))
    stores = [paths.store(dataset, settings, s) for s in sorted(manifest["shard"].astype(int).unique())]
    present = [p for p in stores if p.exists()]
    if not present:
        raise UserError(f"no feature store of '{dataset}' under {paths.store(dataset, settings, 0).parent}")
    return DatasetFeatures(present), [str(p) for p in present]
