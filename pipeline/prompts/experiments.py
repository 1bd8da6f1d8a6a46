"""Which videos an experiment trains and tests on: 'DATASET:SUBSET' selectors over manifests.

SUBSET is `all`; for k-fold datasets `train` (every fold but the experiment's holdout fold) or
`test` (the holdout fold); for official splits a split name: LSVQ `train`, `test`, `test_1080p` (from
the label file names), or the values of a generic label file's `split` column.

An experiment either holds out one fold (`folds: holdout`, the default: `holdout_fold`) or runs every
fold (`folds: all`): one model per fold f, trained and evaluated as if `holdout_fold` were f
(`with_holdout`), with per-fold results aggregated by pipeline/evaluation/aggregate.py. `experiment_folds`
says which folds an experiment runs. `shared_content` lists the training videos that
`exclude_shared` leaves out (they share a source, group or other column value with a test video).
"""
from __future__ import annotations

import copy

import pandas as pd

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.ingest.labels import split_from_filename
from pipeline.ingest.manifest import read_manifest


def require_experiment(cfg: dict, experiment: str) -> dict:
    """The config of an experiment; a UserError naming the config's experiments when it has none of that name."""
    if experiment not in cfg["experiments"]:
        raise UserError(f"unknown experiment '{experiment}' (config has: {', '.join(cfg['experiments']) or 'none'})")
    return cfg["experiments"][experiment]


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
    names = split_names(cfg, dataset)
    if subset == "all":
        return names
    if subset not in names:
        raise UserError(f"experiment selector '{selector}': split '{subset}' not among {names}")
    return [subset]


def split_names(cfg: dict, dataset: str) -> list[str]:
    """Official split names of a dataset: from its label file names (LSVQ conventions), or, for the
    generic format, the values of the `split` column recorded in its manifest (once built)."""
    ds = cfg["datasets"][dataset]
    names = official_split_names(ds)
    if ds["format"] == "generic" and paths.manifest(dataset).is_file():
        present = set(read_manifest(paths.manifest(dataset))["split"]) - {"kfold"}
        if present:
            names = sorted(present)
    return names


def fold_dependent(cfg: dict, selector: str) -> bool:
    """Whether a selector's videos depend on the held-out fold (`train` / `test` of a k-fold dataset)."""
    dataset, subset = parse_selector(selector)
    ds = cfg["datasets"].get(dataset)
    return ds is not None and ds["split"]["scheme"] == "kfold" and subset in ("train", "test")


def experiment_folds(cfg: dict, experiment: str) -> list[int] | None:
    """Folds an experiment runs: None for a single held-out fold (`folds: holdout`), else 0..k-1
    (`folds: all`). UserError when `folds: all` has no k-fold selector or the k-fold datasets' k differ."""
    exp = cfg["experiments"][experiment]
    if exp.get("folds", "holdout") != "all":
        return None
    ks = {}
    for selector in [*exp["train"], *exp["test"]]:
        if fold_dependent(cfg, selector):
            dataset = parse_selector(selector)[0]
            ks[dataset] = int(cfg["datasets"][dataset]["split"]["k"])
    if not ks:
        raise UserError(f"experiment '{experiment}': folds: all needs a k-fold dataset selected as "
                        "DATASET:train or DATASET:test (official splits have no folds)")
    if len(set(ks.values())) > 1:
        raise UserError(f"experiment '{experiment}': folds: all needs one k for all its k-fold datasets "
                        f"(got {', '.join(f'{d}: k={k}' for d, k in sorted(ks.items()))})")
    return list(range(next(iter(ks.values()))))


def with_holdout(cfg: dict, experiment: str, fold: int) -> dict:
    """A copy of the config whose experiment holds out `fold` (one fold of a `folds: all` experiment)."""
    require_experiment(cfg, experiment)
    folds = experiment_folds(cfg, experiment)
    if folds is None:
        raise UserError(f"experiment '{experiment}' runs a single held-out fold (folds: holdout); "
                        "--fold needs folds: all")
    if int(fold) not in folds:
        raise UserError(f"experiment '{experiment}': fold {fold} not among its folds 0..{len(folds) - 1}")
    out = copy.deepcopy(cfg)
    out["experiments"][experiment]["holdout_fold"] = int(fold)
    return out


def official_split_names(ds: dict) -> list[str]:
    """Split names an official-split dataset has, from its label file names (LSVQ conventions)."""
    return sorted({split_from_filename(f) for f in [ds["labels"], *ds.get("extra_labels", [])]})


def select(manifest: pd.DataFrame, cfg: dict, selector: str, holdout_fold: int) -> pd.DataFrame:
    """Rows of a manifest that a selector picks."""
    parts = set(prompt_parts(cfg, selector, holdout_fold))
    part = manifest.apply(part_of_row, axis=1)
    return manifest[part.isin(parts)]


def shared_content(cfg: dict, experiment: str) -> dict:
    """What `experiments.<E>.exclude_shared: COLUMN` leaves out of training: {"column", "values" (the
    column's values among the test videos of the fold being run), "videos" ({(dataset, id)} of training
    videos holding one of them)}; nothing when the option is unset. Reads the manifests of the
    experiment's datasets; empty cells never match."""
    exp = require_experiment(cfg, experiment)
    column = exp.get("exclude_shared")
    if not column:
        return {"column": None, "values": set(), "videos": set()}

    def selected(selectors):
        for selector in selectors:
            dataset, _ = parse_selector(selector)
            manifest = read_manifest(paths.manifest(dataset))
            if column not in manifest.columns:
                raise UserError(f"experiments.{experiment}.exclude_shared: column '{column}' is not in the "
                                f"manifest of '{dataset}' ({paths.manifest(dataset)}); it has "
                                f"{', '.join(manifest.columns)}")
            rows = select(manifest, cfg, selector, exp["holdout_fold"])
            yield dataset, rows["id"].astype(str), rows[column].astype(str).str.strip()

    values = set()
    for _, _, cells in selected(exp["test"]):
        values |= set(cells) - {""}
    videos = set()
    for dataset, ids, cells in selected(exp["train"]):
        videos |= {(dataset, i) for i, c in zip(ids, cells) if c in values}
    return {"column": column, "values": values, "videos": videos}


def part_of_row(row) -> str:
    fold = row.get("fold", -1)
    if pd.notna(fold) and int(fold) >= 0:
        return f"fold{int(fold)}"
    return str(row["split"])
