"""Which videos an experiment trains and tests on: 'DATASET:SUBSET' selectors over manifests.

SUBSET is `all`; for k-fold datasets `train` (every fold but the experiment's holdout fold) or
`test` (the holdout fold); for official splits a split name: LSVQ `train`, `test`, `test_1080p` (from
the label file names), or the values of a generic label file's `split` column.

An experiment either holds out one fold (`folds: holdout`, the default: `holdout_fold`) or runs every
fold (`folds: all`): one model per fold f, trained and evaluated as if `holdout_fold` were f
(`Settings.with_holdout`), with per-fold results aggregated by pipeline/evaluation/aggregate.py.
The resolver (pipeline/core/resolve.py) decides which folds an experiment runs. `shared_content` lists the training videos that
`exclude_shared` leaves out (they share a source, group or other column value with a test video).
Every function takes the typed pieces of the resolved plan (pipeline/core/settings.py): the
`datasets` mapping (name -> Dataset) and an `Experiment`.
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Mapping

import pandas as pd

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.ingest.labels import split_from_filename
from pipeline.ingest.manifest import read_manifest

if TYPE_CHECKING:
    from pipeline.core.settings import Dataset, Experiment


def parse_selector(selector: str) -> tuple[str, str]:
    dataset, _, subset = selector.partition(":")
    return dataset, subset or "all"


def unrated(datasets: Mapping[str, "Dataset"], dataset: str) -> bool:
    """Whether a dataset has no ratings (format `folder`: videos to score). An experiment may test on it
    (predictions, no metrics) but not train on it."""
    ds = datasets.get(dataset)
    return ds is not None and not ds.rated


def prompt_parts(datasets: Mapping[str, "Dataset"], selector: str, holdout_fold: int | None) -> list[str]:
    """Prompt shard names (see paths.prompt_part) that make up a selector. `holdout_fold` None: no fold
    is held out (the model a `folds: all` experiment trains on every fold): `train` is every fold and
    `test` none. `all` does not depend on the held-out fold, so a dataset with fewer folds than the
    experiment's (a synth set of 4 folds beside 5 grouped folds) serves every one of them."""
    dataset, subset = parse_selector(selector)
    ds = datasets.get(dataset)
    if ds is None:
        raise UserError(f"experiment selector '{selector}': unknown dataset '{dataset}'")
    if not ds.rated:  # one part, whatever the split scheme: the manifest gives every video split `all`
        if subset != "all":
            raise UserError(f"experiment selector '{selector}': '{dataset}' is a folder of unrated videos; "
                            f"select all of it ('{dataset}:all')")
        return ["all"]
    if ds.split.scheme == "kfold":
        k = ds.split.k
        if holdout_fold is not None and holdout_fold >= k and subset != "all":
            raise UserError(f"experiment selector '{selector}': holdout_fold {holdout_fold} >= k={k}")
        held = [] if holdout_fold is None else [holdout_fold]
        folds = {"all": range(k), "train": [f for f in range(k) if f not in held], "test": held}
        if subset not in folds:
            raise UserError(f"experiment selector '{selector}': subset must be all, train or test for a k-fold dataset")
        return [f"fold{f}" for f in folds[subset]]
    names = split_names(ds)
    if subset == "all":
        return names
    if subset not in names:
        raise UserError(f"experiment selector '{selector}': split '{subset}' not among {names}")
    return [subset]


def official_split_names(ds: "Dataset") -> list[str]:
    """Split names an official-split dataset has, from its label file names (LSVQ conventions)."""
    return sorted({split_from_filename(f) for f in ds.label_files})


def split_names(ds: "Dataset") -> list[str]:
    """Official split names of a dataset: from its label file names (LSVQ conventions), or, for the
    generic format, the values of the `split` column recorded in its manifest (once built)."""
    names = official_split_names(ds)
    if ds.format == "generic" and paths.manifest(ds.name).is_file():
        present = set(read_manifest(paths.manifest(ds.name))["split"]) - {"kfold"}
        if present:
            names = sorted(present)
    return names


def test_selectors(exp: "Experiment") -> list[str]:
    """The experiment's test selectors, each evaluated on its own (own predictions, metrics, table row
    and report section). A selector listed twice is an error; two selectors of one dataset that share
    videos (`konvid:all` beside `konvid:test`) are an error unless the experiment sets
    `allow_test_overlap: true`. Decided from the selectors alone (no manifest needed): selectors of one
    dataset overlap when one is `all` or both are the same subset; distinct splits or folds do not."""
    selectors = list(exp.test)
    for i, a in enumerate(selectors):
        for b in selectors[:i]:
            if a == b:
                raise UserError(f"experiments.{exp.name}.test: '{a}' is listed twice")
            (da, sa), (db, sb) = parse_selector(a), parse_selector(b)
            if da == db and "all" in (sa, sb) and not exp.allow_test_overlap:
                raise UserError(f"experiments.{exp.name}.test: '{b}' and '{a}' share videos; set "
                                f"experiments.{exp.name}.allow_test_overlap: true to evaluate both")
    return selectors


def fold_dependent(datasets: Mapping[str, "Dataset"], selector: str) -> bool:
    """Whether a selector's videos depend on the held-out fold (`train` / `test` of a k-fold dataset)."""
    dataset, subset = parse_selector(selector)
    ds = datasets.get(dataset)
    return ds is not None and ds.rated and ds.split.scheme == "kfold" and subset in ("train", "test")


def fold_arg(value: str) -> int | str:
    """A `--fold` command-line value: a fold number, or `all` (the model trained on every fold)."""
    if value == paths.FULL_MODEL:
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fold takes a fold number or '{paths.FULL_MODEL}', not {value!r}") from None


def shipped_model(exp: "Experiment"):
    """The model folder of an experiment to score videos with: its model (`folds: holdout`) or, for
    `folds: all`, its model trained on every fold (`results/models/<E>/all`)."""
    return paths.model_dir(exp.name, paths.FULL_MODEL if exp.every_fold else None)


def trained_datasets(exp: "Experiment") -> set[str]:
    """The datasets an experiment's `train` selectors draw from."""
    return {parse_selector(s)[0] for s in exp.train}


def unseen_tests(exp: "Experiment", datasets: Mapping[str, "Dataset"]) -> list[str]:
    """Test selectors whose videos the experiment's models never train on: a held-out fold, or a dataset
    it does not train on (these say what its model is worth; `dataset:all` of a training dataset does not).
    Unrated datasets are left out: they have no metrics."""
    trained = trained_datasets(exp)
    return [s for s in test_selectors(exp) if not unrated(datasets, parse_selector(s)[0])
            and (fold_dependent(datasets, s) or parse_selector(s)[0] not in trained)]


def select(manifest: pd.DataFrame, datasets: Mapping[str, "Dataset"], selector: str, holdout_fold: int | None) -> pd.DataFrame:
    """Rows of a manifest that a selector picks."""
    parts = set(prompt_parts(datasets, selector, holdout_fold))
    part = manifest.apply(part_of_row, axis=1)
    return manifest[part.isin(parts)]


def shared_content(exp: "Experiment", datasets: Mapping[str, "Dataset"],
                   manifests: dict[str, pd.DataFrame] | None = None) -> dict:
    """What `experiments.<E>.exclude_shared: COLUMN` leaves out of training: {"column", "values" (the
    column's values among the test videos of the fold being run), "videos" ({(dataset, id)} of training
    videos holding one of them)}; nothing when the option is unset. Reads the manifests of the
    experiment's datasets (`manifests`: dataset -> manifest table to use instead of its file, e.g. one
    built in memory by a benchmark); empty cells never match. A training dataset without the column is an
    error; a test dataset the experiment does not train on may lack it (photos rated by people beside
    footage grouped by source) and then shares nothing."""
    column = exp.exclude_shared
    if not column:
        return {"column": None, "values": set(), "videos": set()}
    given = manifests or {}

    trained = trained_datasets(exp)

    def selected(selectors):
        for selector in selectors:
            dataset, _ = parse_selector(selector)
            manifest = given[dataset] if dataset in given else read_manifest(paths.manifest(dataset))
            if column not in manifest.columns and dataset not in trained:
                continue  # a test dataset the experiment does not train on, without the column: it shares nothing
            if column not in manifest.columns:
                where = "given" if dataset in given else str(paths.manifest(dataset))
                raise UserError(f"experiments.{exp.name}.exclude_shared: column '{column}' is not in the "
                                f"manifest of '{dataset}' ({where}); it has "
                                f"{', '.join(manifest.columns)}")
            rows = select(manifest, datasets, selector, exp.holdout_fold)
            yield dataset, rows["id"].astype(str), rows[column].astype(str).str.strip()

    values = set()
    for _, _, cells in selected([s for s in exp.test if not unrated(datasets, parse_selector(s)[0])]):
        values |= set(cells) - {""}
    videos = set()
    for dataset, ids, cells in selected(exp.train):
        videos |= {(dataset, i) for i, c in zip(ids, cells) if c in values}
    return {"column": column, "values": values, "videos": videos}


def part_of_row(row) -> str:
    fold = row.get("fold", -1)
    if pd.notna(fold) and int(fold) >= 0:
        return f"fold{int(fold)}"
    return str(row["split"])
