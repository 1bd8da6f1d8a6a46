"""A dataset's label file or media folder that does not exist, named in one line before anything runs.

The workflow checks every dataset input that no rule of its own writes when it reads the config
(pipeline/workflow.py), and `lmmvqa manifest` checks its `--labels` and `--videos` when run by hand:
both stop with the message of `missing_input`, which names the key and the path. A path that runs
through `../shared` gets one more clause: that folder is the development data kept beside the
repository (the configs named `*-dev` read it), so it is absent in a user's clone, and what to do
instead (docs/development-data.md).
"""
from __future__ import annotations

from pathlib import Path

from pipeline.core.errors import UserError

DEV_DATA = "../shared"
DEV_DATA_NOTE = (f"{DEV_DATA} is the development data folder kept beside the repository, absent in a user's "
                 "clone: point the dataset at files of your own, see docs/development-data.md")


def through_dev_data(path) -> bool:
    """Whether a path, as written, runs through the development data folder (`../shared`, from any
    depth: `../../shared/x` too, and an absolute path with `/../shared/` in it)."""
    parts = Path(path).parts
    return any(a == ".." and b == Path(DEV_DATA).name for a, b in zip(parts, parts[1:]))


def missing_input(key: str, path, dataset: str | None = None) -> str | None:
    """The one-line message for a dataset input (`key`: labels, extra_labels, videos, references,
    reference_labels) that does not exist, None when it does. Relative paths are read from the working
    directory (the workflow's: the repository root, or `snakemake --directory`)."""
    if Path(path).exists():
        return None
    message = f"{key} not found: {path}"
    if dataset is not None:
        message = f"dataset '{dataset}': {message}"
    return f"{message}; {DEV_DATA_NOTE}" if through_dev_data(path) else message


def require_inputs(inputs) -> None:
    """Raise UserError with `missing_input`'s message for the first absent one of (key, path, dataset)."""
    for key, path, dataset in inputs:
        message = missing_input(key, path, dataset)
        if message:
            raise UserError(message)
