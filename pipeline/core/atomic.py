"""Files that appear whole or not at all: write to a temporary sibling, then rename over the target.

A reader (a later stage, Snakemake, a user) never sees a half-written table, even when the writer is
killed; a killed writer leaves only a hidden `.<name>.tmp-<pid>` file behind.
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pandas as pd


def write_file(path, write) -> Path:
    """`write(tmp)` fills a temporary sibling of `path` (any writer that takes a file name), which then
    replaces `path`; on an error the temporary file is removed and `path` stays as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def readable_by_all(path) -> Path:
    """Give `path` (a file, or every file and folder under it) the mode a plain `open` would: 0666 / 0777
    less the umask (0644 / 0755 by default). Writers that go through a private temporary file (safetensors'
    `save_file` writes 0600) would otherwise leave weights only their owner can read."""
    path = Path(path)
    umask = os.umask(0)
    os.umask(umask)
    for p in [path, *(path.rglob("*") if path.is_dir() else [])]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)
    return path


def write_text(path, text: str) -> Path:
    return write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_csv(df: pd.DataFrame, path, **to_csv) -> Path:
    """`df.to_csv(path, index=False)` with Unix line ends, atomically."""
    return write_text(path, df.to_csv(index=False, lineterminator="\n", **to_csv))


@contextmanager
def directory(path):
    """A folder that appears whole or not at all: yields a temporary sibling to fill, which replaces `path`
    when the block ends without an error (and is removed when it raises). Temporaries a killed writer
    left behind are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
