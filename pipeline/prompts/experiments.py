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

import argparse
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


def unrated(cfg: dict, dataset: str) -> bool:
    """Whether a dataset has no ratings (format `folder`: videos to score). An experiment may test on it
    (predictions, no metrics) but not train on it."""
    ds = cfg["datasets"].get(dataset)
    return ds is not None and ds["format"] == "folder"


def prompt_parts(cfg: dict, selector: str, holdout_fold: int | None) -> list[str]:
    """Prompt shard names (see paths.prompt_part) that make up a selector. `holdout_fold` None: no fold
    is held out (the model a `folds: all` experiment trains on every fold): `train` is every fold and
    `test` none. `all` does not depend on the held-out fold, so a dataset with fewer folds than the
    experiment's (a synth set of 4 folds beside 5 grouped folds) serves every one of them."""
    dataset, subset = parse_selector(selector)
    ds = cfg["datasets"].get(dataset)
    if ds is None:
        raise UserError(f"experiment selector '{selector}': unknown dataset '{dataset}'")
    if unrated(cfg, dataset):  # one part, whatever the split scheme: the manifest gives every video split `all`
        if subset != "all":
            raise UserError(f"experiment selector '{selector}': '{dataset}' is a folder of unrated videos; "
                            f"select all of it ('{dataset}:all')")
        return ["all"]
    split = ds["split"]
    if split["scheme"] == "kfold":
        k = split["k"]
        if holdout_fold is not None and holdout_fold >= k and subset != "all":
            raise UserError(f"experiment selector '{selector}': holdout_fold {holdout_fold} >= k={k}")
        held = [] if holdout_fold is None else [holdout_fold]
        folds = {"all": range(k), "train": [f for f in range(k) if f not in held], "test": held}
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


def test_selectors(cfg: dict, experiment: str) -> list[str]:
    """The experiment's test selectors, each evaluated on its own (own predictions, metrics, table row
    and report section). A selector listed twice is an error; two selectors of one dataset that share
    videos (`konvid:all` beside `konvid:test`) are an error unless the experiment sets
    `allow_test_overlap: true`. Decided from the selectors alone (no manifest needed): selectors of one
    dataset overlap when one is `all` or both are the same subset; distinct splits or folds do not."""
    exp = require_experiment(cfg, experiment)
    selectors = list(exp["test"])
    for i, a in enumerate(selectors):
        for b in selectors[:i]:
            if a == b:
                raise UserError(f"experiments.{experiment}.test: '{a}' is listed twice")
            (da, sa), (db, sb) = parse_selector(a), parse_selector(b)
            if da == db and "all" in (sa, sb) and not exp.get("allow_test_overlap"):
                raise UserError(f"experiments.{experiment}.test: '{b}' and '{a}' share videos; set "
                                f"experiments.{experiment}.allow_test_overlap: true to evaluate both")
    return selectors


def fold_dependent(cfg: dict, selector: str) -> bool:
    """Whether a selector's videos depend on the held-out fold (`train` / `test` of a k-fold dataset)."""
    dataset, subset = parse_selector(selector)
    ds = cfg["datasets"].get(dataset)
    return (ds is not None and not unrated(cfg, dataset) and ds["split"]["scheme"] == "kfold"
            and subset in ("train", "test"))


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


def with_holdout(cfg: dict, experiment: str, fold: int | str) -> dict:
    """A copy of the config whose experiment holds out `fold` (one fold of a `folds: all` experiment),
    or, for `fold` = `all` (paths.FULL_MODEL), holds out nothing: the model trained on every fold."""
    require_experiment(cfg, experiment)
    folds = experiment_folds(cfg, experiment)
    if folds is None:
        raise UserError(f"experiment '{experiment}' runs a single held-out fold (folds: holdout); "
                        "--fold needs folds: all")
    out = copy.deepcopy(cfg)
    if fold == paths.FULL_MODEL:
        out["experiments"][experiment]["holdout_fold"] = None
        return out
    if int(fold) not in folds:
        raise UserError(f"experiment '{experiment}': fold {fold} not among its folds 0..{len(folds) - 1}")
    out["experiments"][experiment]["holdout_fold"] = int(fold)
    return out


def fold_arg(value: str) -> int | str:
    """A `--fold` command-line value: a fold number, or `all` (the model trained on every fold)."""
    if value == paths.FULL_MODEL:
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fold takes a fold number or '{paths.FULL_MODEL}', not {value!r}") from None


def shipped_model(cfg: dict, experiment: str):
    """The model folder of an experiment to score videos with: its model (`folds: holdout`) or, for
    `folds: all`, its model trained on every fold (`results/models/<E>/all`)."""
    require_experiment(cfg, experiment)
    every_fold = experiment_folds(cfg, experiment) is not None
    return paths.model_dir(experiment, paths.FULL_MODEL if every_fold else None)


def unseen_tests(cfg: dict, experiment: str) -> list[str]:
    """Test selectors whose videos the experiment's models never train on: a held-out fold, or a dataset
    it does not train on (these say what its model is worth; `dataset:all` of a training dataset does not).
    Unrated datasets are left out: they have no metrics."""
    trained = {parse_selector(s)[0] for s in require_experiment(cfg, experiment)["train"]}
    return [s for s in test_selectors(cfg, experiment) if not unrated(cfg, parse_selector(s)[0])
            and (fold_dependent(cfg, s) or parse_selector(s)[0] not in trained)]


def official_split_names(ds: dict) -> list[str]:
    """Split names an official-split dataset has, from its label file names (LSVQ conventions)."""
    return sorted({split_from_filename(f) for f in [ds["labels"], *ds.get("extra_labels", [])]})


def select(manifest: pd.DataFrame, cfg: dict, selector: str, holdout_fold: int) -> pd.DataFrame:
    """Rows of a manifest that a selector picks."""
    parts = set(prompt_parts(cfg, selector, holdout_fold))
    part = manifest.apply(part_of_row, axis=1)
    return manifest[part.isin(parts)]


def shared_content(cfg: dict, experiment: str, manifests: dict[str, pd.DataFrame] | None = None) -> dict:
    """What `experiments.<E>.exclude_shared: COLUMN` leaves out of training: {"column", "values" (the
    column's values among the test videos of the fold being run), "videos" ({(dataset, id)} of training
    videos holding one of them)}; nothing when the option is unset. Reads the manifests of the
    experiment's datasets (`manifests`: dataset -> manifest table to use instead of its file, e.g. one
    built in memory by a benchmark); empty cells never match."""
    exp = require_experiment(cfg, experiment)
    column = exp.get("exclude_shared")
    if not column:
        return {"column": None, "values": set(), "videos": set()}
    given = manifests or {}

    def selected(selectors):
        for selector in selectors:
            dataset, _ = parse_selector(selector)
            manifest = given[dataset] if dataset in given else read_manifest(paths.manifest(dataset))
            if column not in manifest.columns:
                where = "given" if dataset in given else str(paths.manifest(dataset))
                raise UserError(f"experiments.{experiment}.exclude_shared: column '{column}' is not in the "
                                f"manifest of '{dataset}' ({where}); it has "
                                f"{', '.join(manifest.columns)}")
            rows = select(manifest, cfg, selector, exp["holdout_fold"])
            yield dataset, rows["id"].astype(str), rows[column].astype(str).str.strip()

    values = set()
    for _, _, cells in selected([s for s in exp["test"] if not unrated(cfg, parse_selector(s)[0])]):
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
