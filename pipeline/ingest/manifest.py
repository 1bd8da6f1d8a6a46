"""Manifest stage: label file(s) + videos folder -> one table per dataset (+ a missing table).

`lmmvqa manifest --format F --labels FILE [FILE...] [--videos DIR] --out FILE.csv [--missing M.csv]
[--shard-size N] [--k K] [--seed S] [--split-scheme kfold|official] [--mos-scale 0-100|1-5]`

writes FILE.csv (columns `MANIFEST_COLUMNS`, contract in docs/DESIGN.md) and the missing table (default
`<stem>.missing.csv` beside it) (`id, path, row, reason`), each through a temp file + `os.replace`, and prints the row and
missing counts. Any `UserError` leaves no output (old outputs are removed first). A label file or videos
folder that does not exist stops it with the one line the workflow gives at parse time
(pipeline/ingest/inputs.py).

- `level`: good / fair / poor by the 33rd / 66th percentiles of the MOS of every labelled row
  (`mos <= p33` poor, `<= p66` fair), so whether a file is present never changes another's level.
- `fold`: k-fold datasets get `int(sha1(f"{seed}:{id}")[:12], 16) % k` -- a function of the id only,
  so adding or removing videos never moves a video to another fold; -1 for official splits.
  Folded by a column instead (`--group-by COLUMN`, config `split.group_by`; by default the `group`
  column of a generic label file when it has one) the folds are content-separated (`group_folds`):
  every video with one value of the column lands in the same fold, values are dealt largest first
  (ties in a seeded hash order of the value) to the fold holding the fewest videos so far, so fold
  sizes are as balanced as the values allow and the assignment is a function of (values, seed).
  `group_by: source` on a set made of a few source clips gives leave-one-source-out folds (k = the
  number of sources). A video with an empty cell is a group of its own. Fewer values than folds is an
  error.
- Extra columns of a generic label file (e.g. `source`, `distortion`) follow the standard ones, as text.
- `split`: official splits take a generic label file's `split` column when it has one (a fixed
  train/test assignment), else the label file's name (LSVQ conventions); k-fold rows are `kfold`.
- `shard`: position among all labelled rows (label files concatenated in order) // shard_size, so
  appending rows never moves a video and a missing file keeps its slot (shards may hold fewer rows).
- `size_bytes`, `fingerprint`: file size and sha1 of its first and last 64 KiB (empty without --videos).
- With a videos folder: labelled rows whose file is absent go to the missing table (`file not found`),
  as do video files (image files, for an image format) in the folder that no label names (`no label`).
  Without one, every labelled row is listed and no file is looked at. When no labelled row matches a
  file at all, nothing is written: the error names the folder and the first file names looked for
  (a wrong folder, or the wrong format: e.g. images under `generic`, which looks for videos).
"""
from __future__ import annotations

import argparse
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from pipeline.core import atomic, paths
from pipeline.core.config import default_split_scheme
from pipeline.core.errors import UserError
from pipeline.core.levels import levels
from pipeline.ingest import labels as L
from pipeline.ingest.inputs import require_inputs

MANIFEST_COLUMNS = ["id", "path", "row", "mos_raw", "mos", "level", "split", "fold", "shard", "size_bytes",
                    "fingerprint", "group"]
MISSING_COLUMNS = ["id", "path", "row", "reason"]
SPLIT_SCHEMES = ("kfold", "official")

FINGERPRINT_BYTES = 64 * 1024


def fold_of(video_id: str, k: int, seed: int = 0) -> int:
    """Seeded hash of the id -> fold in 0..k-1 (independent of row order and of the other ids)."""
    digest = hashlib.sha1(f"{int(seed)}:{video_id}".encode()).hexdigest()
    return int(digest[:12], 16) % int(k)


def group_folds(ids, groups, k: int, seed: int = 0, where: str = "labels", column: str = "group") -> list[int]:
    """Content-separated k-fold assignment: one fold per group, fold sizes balanced as far as the groups
    allow (largest group first to the currently smallest fold; equal sizes in seeded hash order of the
    group name, equal loads to the lower fold). An empty group = the video alone."""
    k = int(k)
    keys = [str(g) if str(g) != "" else f"\x00{vid}" for vid, g in zip(ids, groups)]
    sizes: dict[str, int] = {}
    for key in keys:
        sizes[key] = sizes.get(key, 0) + 1
    if len(sizes) < k:
        raise UserError(f"{where}: {len(sizes)} distinct value(s) in column '{column}' cannot fill k={k} folds "
                        f"(every value stays in one fold); lower split.k or fold by another column")

    def tie(g: str) -> str:
        return hashlib.sha1(f"{int(seed)}:{g}".encode()).hexdigest()

    load = [0] * k
    fold: dict[str, int] = {}
    for g in sorted(sizes, key=lambda g: (-sizes[g], tie(g))):
        f = min(range(k), key=lambda j: (load[j], j))
        fold[g] = f
        load[f] += sizes[g]
    return [fold[key] for key in keys]


def folder_state(folder) -> str:
    """Hash of (relative path, size, mtime) of every video file under a folder: a cheap rerun trigger
    for the manifest (a folder's own mtime misses a video replaced in place under the same name).
    The manifest's per-file fingerprints then decide which shards actually changed."""
    folder = Path(folder)
    if not folder.is_dir():
        return "absent"
    h = hashlib.sha256()
    for rel in L.scan_media(folder, L.MEDIA):
        st = (folder / rel).stat()
        h.update(f"{rel}\x1f{st.st_size}\x1f{st.st_mtime_ns}\x1e".encode())
    return h.hexdigest()[:16]


def fingerprint(path) -> tuple[int, str]:
    """(size in bytes, sha1 hex of the first and last 64 KiB): cheap, changes with almost any edit."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha1()
    h.update(str(size).encode() + b":")
    with open(path, "rb") as f:
        h.update(f.read(FINGERPRINT_BYTES))
        if size > FINGERPRINT_BYTES:
            f.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
            h.update(f.read(FINGERPRINT_BYTES))
    return size, h.hexdigest()


def _resolve_files(df: pd.DataFrame, videos_dir: Path,
                   media: str = "video") -> tuple[list[str | None], list[str], set[str]]:
    """Per labelled row: its relative path on disk (None if absent) and why; plus every file of the
    dataset's media (video or image) seen."""
    on_disk = set(L.scan_media(videos_dir, media))
    by_stem: dict[str, list[str]] = {}
    for rel in on_disk:
        by_stem.setdefault(str(PurePosixPath(rel).with_suffix("")), []).append(rel)
    found, reasons = [], []
    claimed = set(df["path"])
    for rel in df["path"]:
        p = videos_dir / rel
        if rel in on_disk or p.is_file():
            found.append(rel)
            reasons.append("")
            continue
        if p.exists():
            found.append(None)
            reasons.append("not a regular file")
            continue
        # `<name>.mp4` was assumed: accept `<name>` itself when it is a video file, or a single file
        # `<name>.<other video extension>`
        # an image named without its extension: a single file `<name>.<image extension>`
        base = rel[:-4] if media == "video" and rel.endswith(".mp4") else (rel if media == "image" else None)
        if base is not None:
            alternatives = [base] if base in on_disk else by_stem.get(base, [])
            if len(alternatives) == 1 and alternatives[0] not in claimed:
                claimed.add(alternatives[0])
                found.append(alternatives[0])
                reasons.append("")
                continue
        found.append(None)
        reasons.append("file not found")
    return found, reasons, on_disk


def build_manifest(fmt: str, label_files, videos_dir=None, shard_size: int = 256, k: int = 5, seed: int = 0,
                   split_scheme: str | None = None, mos_scale: str | None = None,
                   workers: int = 4, group_by: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(manifest, missing) tables; see the module docstring. Raises UserError on bad input."""
    if int(shard_size) < 1:
        raise UserError(f"shard size must be >= 1 (got {shard_size})")
    split_scheme = split_scheme or default_split_scheme(fmt)
    if split_scheme not in SPLIT_SCHEMES:
        raise UserError(f"unknown split scheme '{split_scheme}' (one of: {', '.join(SPLIT_SCHEMES)})")
    if split_scheme == "kfold" and int(k) < 2:
        raise UserError(f"k-fold split needs k >= 2 (got {k})")
    if group_by is not None and split_scheme != "kfold":
        raise UserError(f"split.group_by ('{group_by}') applies to k-fold splits only (the split scheme is "
                        f"'{split_scheme}')")
    media = L.media_of_format(fmt) if fmt in L.FORMATS else "video"
    files = [label_files] if isinstance(label_files, (str, os.PathLike)) else list(label_files or [])
    unrated = fmt == "folder" or (fmt == "image" and len(files) == 1 and Path(files[0]).is_dir())
    if unrated:
        if videos_dir is None and files:
            videos_dir = files[0]
        if videos_dir is None:
            raise UserError("format 'folder' needs the videos folder (--videos or --labels DIR)")
        labels = L.read_folder(videos_dir, media)
    else:
        labels = L.read_labels(fmt, label_files, mos_scale)
    if videos_dir is not None:
        videos_dir = Path(videos_dir)
        if not videos_dir.is_dir():
            raise UserError(f"videos folder not found: {videos_dir}")

    df = labels.copy()
    df["level"] = levels(df["mos"])
    if unrated:
        df["split"], df["fold"] = "all", -1
    elif split_scheme == "kfold":
        df["split"] = "kfold"
        where = ", ".join(dict.fromkeys(df["label_file"]))
        if group_by is not None and group_by not in L.extra_columns(df) + ["group"]:
            raise UserError(f"{where}: split.group_by is '{group_by}' but the label file has no such column "
                            f"(columns it can fold by: {', '.join(['group', *L.extra_columns(df)])})")
        if group_by is None and (df["group"] != "").any():
            group_by = "group"
        if group_by is not None:
            df["fold"] = group_folds(df["id"], df[group_by].astype(str), k, seed, where, group_by)
        else:
            df["fold"] = [fold_of(i, k, seed) for i in df["id"]]
    else:
        if fmt != "lsvq":  # a generic `split` column, else the label file's name
            df["split"] = [s if s != "kfold" else L.split_from_filename(f)
                           for s, f in zip(df["split"], df["label_file"])]
        df["fold"] = -1
    df["shard"] = np.arange(len(df)) // int(shard_size)
    df["size_bytes"] = pd.array([pd.NA] * len(df), dtype="Int64")
    df["fingerprint"] = ""

    missing_rows: list[dict] = []
    if videos_dir is not None:
        found, reasons, on_disk = _resolve_files(df, videos_dir, media)
        present = np.array([f is not None for f in found], dtype=bool)
        if len(df) and not present.any():
            raise UserError(no_match_message(df, videos_dir, media))
        for i in np.flatnonzero(~present):
            missing_rows.append({"id": df["id"].iat[i], "path": df["path"].iat[i], "row": int(df["row"].iat[i]),
                                 "reason": reasons[i]})
        used = {f for f in found if f is not None}
        for rel in sorted(on_disk - used):
            missing_rows.append({"id": L.id_and_path(rel, str(videos_dir))[0], "path": rel, "row": pd.NA,
                                 "reason": "no label"})
        df["path"] = [f if f is not None else p for f, p in zip(found, df["path"])]
        df = df[present].reset_index(drop=True)
        with ThreadPoolExecutor(max(1, int(workers))) as pool:
            prints = list(pool.map(lambda rel: _safe_fingerprint(videos_dir / rel), df["path"]))
        df["size_bytes"] = pd.array([p[0] for p in prints], dtype="Int64")
        df["fingerprint"] = [p[1] for p in prints]

    manifest = df[MANIFEST_COLUMNS + L.extra_columns(df)].reset_index(drop=True)
    manifest["row"] = manifest["row"].astype(int)
    manifest["fold"] = manifest["fold"].astype(int)
    manifest["shard"] = manifest["shard"].astype(int)
    missing = pd.DataFrame(missing_rows, columns=MISSING_COLUMNS)
    missing["row"] = pd.array(missing["row"].tolist(), dtype="Int64")
    return manifest, missing


def no_match_message(df: pd.DataFrame, videos_dir: Path, media: str) -> str:
    """Why a dataset whose labels match no file at all stops: the folder, the first names looked for,
    what the folder holds instead."""
    looked = ", ".join(df["path"].head(3)) + (", ..." if len(df) > 3 else "")
    where = ", ".join(dict.fromkeys(df["label_file"]))
    other = "image" if media == "video" else "video"
    others = L.scan_media(videos_dir, other)
    hint = ""
    if others:
        hint = (f"; the folder holds {len(others)} {other} file(s) (e.g. {others[0]}): "
                + ("use format: image for images" if other == "image" else "use a video format for videos"))
    return (f"{where}: none of the {len(df)} labelled {media}s is a file in {videos_dir} (looked for {looked}); "
            f"check `videos` and the label names{hint}")


def _safe_fingerprint(path: Path) -> tuple[int, str]:
    try:
        return fingerprint(path)
    except OSError as exc:
        raise UserError(f"{path}: cannot read the video file: {exc.strerror or exc}") from None


# ---------------------------------------------------------------------------------------------------
# Reading and writing
# ---------------------------------------------------------------------------------------------------
def write_manifest(manifest: pd.DataFrame, missing: pd.DataFrame, out, missing_out) -> tuple[Path, Path]:
    """Both tables, atomically; the missing table first, so a complete manifest implies it."""
    atomic.write_csv(missing, missing_out)
    atomic.write_csv(manifest, out)
    return Path(out), Path(missing_out)


def read_manifest(path) -> pd.DataFrame:
    """A manifest CSV with its dtypes: id/path/split/level/fingerprint str, row/fold/shard int,
    mos_raw/mos float (NaN for unlabeled videos), size_bytes Int64 (<NA> when no file was checked)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest not found: {path}")
    numeric = {"row", "mos_raw", "mos", "fold", "shard", "size_bytes"}
    try:  # every column but the numeric ones is text (extra label columns included)
        header = pd.read_csv(path, nrows=0).columns
        df = pd.read_csv(path, dtype={c: str for c in header if c not in numeric}, keep_default_na=False,
                         na_values={"mos_raw": [""], "mos": [""], "size_bytes": [""]})
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable manifest: {' '.join(str(exc).split())}") from None
    absent = [c for c in ("id", "path", "shard") if c not in df.columns]
    if absent:
        raise UserError(f"{path}: not a manifest: missing column(s) {', '.join(absent)}")
    for c in ("row", "fold", "shard"):
        if c in df.columns:
            df[c] = df[c].astype(int)
    for c in ("mos_raw", "mos"):
        if c in df.columns:
            df[c] = df[c].astype(float)
    if "size_bytes" in df.columns:
        df["size_bytes"] = df["size_bytes"].astype("Int64")
    return df


def shard_ids(manifest_csv) -> list[int]:
    """Sorted shard numbers present in a manifest (a CSV path or a DataFrame)."""
    df = manifest_csv if isinstance(manifest_csv, pd.DataFrame) else read_manifest(manifest_csv)
    return sorted(int(s) for s in pd.unique(df["shard"]))


def _rows_digest(rows: pd.DataFrame) -> str:
    h = hashlib.sha256()
    for r in rows[["id", "path", "size_bytes", "fingerprint"]].itertuples(index=False):
        size = "" if pd.isna(r.size_bytes) else str(int(r.size_bytes))
        fp = "" if pd.isna(r.fingerprint) else str(r.fingerprint)
        h.update("\x1f".join([str(r.id), str(r.path), size, fp]).encode() + b"\x1e")
    return h.hexdigest()[:16]


def shard_digest(manifest_df: pd.DataFrame, shard: int) -> str:
    """Hash of (id, path, size, fingerprint) of one shard's rows, in order: a rerun trigger for the
    per-shard rules (changes when a video of the shard is added, removed, renamed or edited)."""
    return _rows_digest(manifest_df[manifest_df["shard"].astype(int) == int(shard)])


def shard_digests(manifest_df: pd.DataFrame) -> dict[int, str]:
    """{shard: shard_digest} for every shard, in one pass over the table."""
    return {int(shard): _rows_digest(rows) for shard, rows in manifest_df.groupby("shard", sort=True)}


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------
def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", required=True, metavar="FORMAT",
                   help=f"label format: {', '.join(L.FORMATS)} (folder = an unlabeled folder of videos; "
                        "image with a folder as --labels = an unlabeled folder of images)")
    p.add_argument("--labels", required=True, nargs="+", metavar="FILE",
                   help="label file(s) of that format, concatenated in order (LSVQ: train test test_1080p); "
                        "for --format folder the videos folder")
    p.add_argument("--videos", metavar="DIR", default=None,
                   help="folder holding the videos; rows whose file is absent and files with no label go to "
                        "the missing table. Without it every labelled row is listed and no file is checked")
    p.add_argument("--out", required=True, metavar="FILE.csv", help="manifest CSV to write")
    p.add_argument("--missing", default=None, metavar="FILE.csv",
                   help="table of labelled videos with no file and files with no label, to write "
                        "(default: beside --out, OUT.missing.csv)")
    p.add_argument("--shard-size", type=int, default=256, metavar="N", help="videos per shard (default: 256)")
    p.add_argument("--k", type=int, default=5, help="number of folds for k-fold splits (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold hash (default: 0)")
    p.add_argument("--group-by", default=None, metavar="COLUMN",
                   help="k-fold: keep every value of this label column in one fold (e.g. source: leave one "
                        "source out); default: the generic label file's `group` column when it has one")
    p.add_argument("--split-scheme", default=None, metavar="SCHEME",
                   help="kfold or official (default: official for lsvq, kfold otherwise)")
    p.add_argument("--mos-scale", default=None, metavar="SCALE",
                   help="override the format's MOS scale: 0-100 or 1-5 (1-5 is mapped x20; generic default 0-100)")


def main(args) -> int:
    out = Path(args.out)
    missing_out = Path(args.missing) if args.missing else paths.missing_table(out)
    for stale in (out, missing_out):  # a failed run must not leave an older, complete-looking table
        if stale.is_file():
            stale.unlink()
    require_inputs([*(("labels", f, None) for f in args.labels),
                    *([("videos", args.videos, None)] if args.videos else [])])
    manifest, missing = build_manifest(args.format, args.labels, args.videos, shard_size=args.shard_size,
                                       k=args.k, seed=args.seed, split_scheme=args.split_scheme,
                                       mos_scale=args.mos_scale, group_by=args.group_by)
    out, miss = write_manifest(manifest, missing, out, missing_out)
    no_file = int((missing["reason"] != "no label").sum()) if len(missing) else 0
    no_label = len(missing) - no_file
    n_shards = len(shard_ids(manifest)) if len(manifest) else 0
    print(f"manifest: {len(manifest)} rows in {n_shards} shard(s), {len(missing)} missing "
          f"({no_file} labelled without a usable file, {no_label} files without a label) -> {out}, {miss}")
    return 0
