"""Label-file readers: one function per dataset format, all returning the same table.

`read_labels(fmt, label_files, mos_scale=None) -> DataFrame` with columns

    id        video id (string): KoNViD flickr id, LSVQ name as written (`yfcc-batch1/747`), else the
              name without its video extension (`A001.mp4` -> `A001`)
    path      file path relative to the videos folder: KoNViD and LSVQ always `<id>.mp4` (LSVQ names such
              as `ia-batch12/xmas.flv` are stored as `xmas.flv.mp4`); others the name, plus `.mp4` when
              it has no video extension
    row       1-based data row number in its label file (the header is row 0)
    mos_raw   MOS as written in the label file (float; NaN for the unlabeled `folder` format)
    mos       MOS on 0-100 (1-5 scales x 20)
    split     LSVQ: `train` / `test` / `test_1080p` (from `is_test` and the file name); generic with a
              `split` column: its value (a fixed train/test assignment); others `kfold`
    group     generic with a `group` column: its value (content group, e.g. the source clip a variant
              was made from; k-fold keeps a group in one fold), else '' (no group)
    label_file  the label file the row came from (several files are concatenated in order)
    ...       generic only: every other column of the label file, as text ('' when empty; a column
              that only some of several label files have is '' in the others), e.g. `source` or
              `distortion`, so folds and experiments can use it (`split.group_by`,
              `exclude_shared`). A column whose name a manifest uses itself is an error.

Formats (`FORMATS`): konvid (`flickr_id`, `mos` 1-5), lsvq (`name`, `mos` 0-100, many other
columns, `is_test` where present), youtube_ugc (`name`, `mos` 1-5), live_vqc (`name`, `mos` 0-100),
live_gaming (`name` without extension, `mos` 0-100), generic (`name`, `mos`, extra columns allowed;
0-100 unless `mos_scale="1-5"`; optional `group` and `split` columns, see above) and folder (the "label file" is a folder of videos: every video file
in it, recursively, with an empty MOS; for scoring only).

Image formats (`media` "image": every item is a still image, `media_of`): image (a label file like
generic, `name` = the image file, an image extension optional, or a folder of images, unrated, like
folder), and the label files of image-quality databases as released: clive (LIVE Challenge:
`AllImages_release.mat` + `AllMOS_release.mat`, MATLAB files read with scipy.io.loadmat; the first 7
entries are the subjects' training images, left out by convention: 1,169 entries -> 1,162 images,
MOS 0-100), koniq (KonIQ-10k `koniq10k_scores_and_distributions.csv`: `image_name`, `MOS` 1-5),
spaq (SPAQ `MOS and Image attribute scores.xlsx`, or a CSV export of it: `Image name`, `MOS` 0-100;
reading .xlsx needs openpyxl) and kadid (KADID-10k `dmos.csv`: `dist_img`, `dmos` 1-5, `ref_img` as
the content group, so a reference's distorted versions stay in one fold). An image's id is its name
without the image extension (`533.JPG` -> `533`), its path the name as written.

Every problem a user can fix raises `UserError` with one line naming the file, the row and what is
wrong; nothing is returned until every row of every file has been checked.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from pipeline.core.errors import UserError
from pipeline.ingest.media import (IMAGE_EXTENSIONS, MEDIA, VIDEO_EXTENSIONS, is_image_file,  # noqa: F401 - re-exported
                                   is_video_file, item_id, media_of)

SCALES = {"0-100": (0.0, 100.0, 1.0), "1-5": (1.0, 5.0, 20.0)}  # name -> (low, high, factor to 0-100)
COLUMNS = ["id", "path", "row", "mos_raw", "mos", "split", "group", "label_file"]
# names the labels and manifest tables use themselves: a generic label file's extra column may not take one
RESERVED_COLUMNS = frozenset([*COLUMNS, "level", "fold", "shard", "size_bytes", "fingerprint"])
# split names a `split` column may not use: `all` is the selector of every split, `kfold` marks k-fold rows
RESERVED_SPLITS = ("all", "kfold")
SPLIT_NAME = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class Format:
    id_column: str
    mos_column: str | None
    scale: str
    media: str = "video"  # what its files are: video, or image (stills)
    group_column: str | None = None  # a column that is the content group (k-fold keeps it in one fold)


FORMATS: dict[str, Format] = {
    "konvid": Format("flickr_id", "mos", "1-5"),
    "lsvq": Format("name", "mos", "0-100"),
    "youtube_ugc": Format("name", "mos", "1-5"),
    "live_vqc": Format("name", "mos", "0-100"),
    "live_gaming": Format("name", "mos", "0-100"),
    "generic": Format("name", "mos", "0-100"),
    "folder": Format("", None, "0-100"),
    "image": Format("name", "mos", "0-100", "image"),
    "clive": Format("AllImages_release", "AllMOS_release", "0-100", "image"),
    "koniq": Format("image_name", "MOS", "1-5", "image"),
    "spaq": Format("Image name", "MOS", "0-100", "image"),
    "kadid": Format("dist_img", "dmos", "1-5", "image", group_column="ref_img"),
}
# CLIVE's release lists the 7 images that trained the study's subjects first; by convention they are left out
CLIVE_TRAINING_IMAGES = 7


def media_of_format(fmt: str) -> str:
    """video or image: what a format's files are."""
    return FORMATS[fmt].media


def split_from_filename(path) -> str:
    """Official split name a label file stands for (LSVQ conventions): test_1080p, test, train or all."""
    low = Path(str(path)).name.lower()
    if "1080p" in low:
        return "test_1080p"
    if "test" in low:
        return "test"
    if "train" in low:
        return "train"
    return "all"


def check_relative(name: str, where: str) -> str:
    """The label's path as a clean relative POSIX path; UserError if absolute or escaping with `..`."""
    if re.match(r"^([A-Za-z]:)?[\\/]", name) or name.startswith("~"):
        raise UserError(f"{where}: video path '{name}' is absolute; label paths must be relative to the videos folder")
    parts = re.split(r"[\\/]+", name)
    if ".." in parts:
        raise UserError(f"{where}: video path '{name}' escapes the videos folder with '..'")
    parts = [p for p in parts if p not in ("", ".")]
    if not parts:
        raise UserError(f"{where}: empty video name")
    return "/".join(parts)


def video_id(name: str) -> str:
    """A video's id from its (relative) file name: the name without its video extension."""
    suffix = PurePosixPath(name).suffix.lower()
    return name[: -len(suffix)] if suffix in VIDEO_EXTENSIONS else name


def id_and_path(name: str, where: str) -> tuple[str, str]:
    """(id, path) from a label's name: the id drops a video extension, the path adds `.mp4` if none."""
    rel = check_relative(name, where)
    vid = video_id(rel)
    return (vid, rel) if vid != rel else (rel, rel + ".mp4")


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise UserError(f"label file not found: {path}")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a label file (use --format folder for a folder of videos, "
                        "--format image for a folder of images)")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: empty label file (no header, no rows)") from None
    except pd.errors.ParserError as exc:
        msg = " ".join(str(exc).split())
        raise UserError(f"{path}: not a readable CSV file: {msg}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a UTF-8 text CSV file ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the label file: {exc.strerror or exc}") from None
    df.columns = [str(c).strip() for c in df.columns]
    if len(df) == 0:
        raise UserError(f"{path}: empty label file (a header but no data rows)")
    return df


def _column(df: pd.DataFrame, name: str, path: Path) -> pd.Series:
    lower = {c.lower(): c for c in df.columns}
    if name.lower() not in lower:
        cols = ", ".join(df.columns[:12]) + (", ..." if len(df.columns) > 12 else "")
        raise UserError(f"{path}: missing label column '{name}' (columns: {cols})")
    return df[lower[name.lower()]].astype(str).str.strip()


def _mos(raw: pd.Series, path: Path, column: str, scale: str, first_row: int = 1,
         unit: str = "row") -> tuple[np.ndarray, np.ndarray]:
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        i = int(bad[0])
        text = raw.iloc[i]
        what = "is empty" if text == "" else (f"is '{text}', not a number" if np.isnan(values[i]) else f"is '{text}'")
        raise UserError(f"{path}: {unit} {i + first_row}: MOS (column '{column}') {what}")
    lo, hi, factor = SCALES[scale]
    out = np.flatnonzero((values < lo) | (values > hi))
    if len(out):
        i = int(out[0])
        raise UserError(f"{path}: {unit} {i + first_row}: MOS (column '{column}') {raw.iloc[i]} is outside the {scale} scale "
                        f"[{lo:g}, {hi:g}] (set mos_scale / --mos-scale if the scale is different)")
    return values, np.round(values * factor, 6)


def _lsvq_split(df: pd.DataFrame, path: Path) -> list[str]:
    from_name = split_from_filename(path)
    if from_name == "test_1080p":
        return ["test_1080p"] * len(df)
    lower = {c.lower(): c for c in df.columns}
    if "is_test" in lower:
        out = []
        for i, v in enumerate(df[lower["is_test"]].astype(str).str.strip().str.lower()):
            if v in ("true", "1", "1.0", "yes"):
                out.append("test")
            elif v in ("false", "0", "0.0", "no"):
                out.append("train")
            else:
                raise UserError(f"{path}: row {i + 1}: column 'is_test' is '{v}', expected True or False")
        return out
    return [from_name if from_name != "all" else "train"] * len(df)


def image_id_and_path(name: str, where: str) -> tuple[str, str]:
    """(id, path) of an image label: the id drops an image extension, the path is the name as written
    (a name without an extension is matched to `<name>.<image extension>` by the manifest)."""
    rel = check_relative(name, where)
    return item_id(rel), rel


def _read_table(path: Path, fmt: str) -> pd.DataFrame:
    """A label table: CSV, or for SPAQ its released .xlsx sheet (openpyxl) or a CSV export of it."""
    if fmt == "spaq" and path.suffix.lower() == ".xlsx":
        if not path.is_file():
            raise UserError(f"label file not found: {path}")
        try:
            import openpyxl  # noqa: F401 - pandas reads .xlsx through it
        except ImportError:
            raise UserError(f"{path}: reading an .xlsx sheet needs the openpyxl package (pip install openpyxl), "
                            "or save the sheet as CSV (same columns, `Image name` and `MOS`) and give that file") from None
        df = pd.read_excel(path, dtype=str, keep_default_na=False)
        df.columns = [str(c).strip() for c in df.columns]
        if len(df) == 0:
            raise UserError(f"{path}: empty label file (a header but no data rows)")
        return df.apply(lambda c: c.astype(str).str.strip())
    return _read_csv(path)


def _mat_strings(value, path: Path, key: str) -> list[str]:
    """A MATLAB cell array of strings (as scipy.io.loadmat returns it) -> list of str."""
    out = []
    for i, cell in enumerate(np.asarray(value, dtype=object).ravel()):
        item = np.asarray(cell).ravel()
        if item.size != 1:
            raise UserError(f"{path}: '{key}' entry {i + 1} is not one file name")
        out.append(str(item[0]).strip())
    return out


def _load_mat(path: Path, key: str):
    from scipy.io import loadmat  # MATLAB v5 files; no pickle involved

    if not path.is_file():
        raise UserError(f"label file not found: {path}")
    try:
        data = loadmat(str(path))
    except (ValueError, TypeError, OSError, NotImplementedError) as exc:
        raise UserError(f"{path}: not a readable MATLAB .mat file ({' '.join(str(exc).split())})") from None
    if key not in data:
        keys = ", ".join(k for k in data if not k.startswith("__"))
        raise UserError(f"{path}: no variable '{key}' (variables: {keys})")
    return data[key]


def clive_files(label_files) -> tuple[Path, Path]:
    """(AllImages_release.mat, AllMOS_release.mat) of a LIVE Challenge release: both given (any order),
    or the images file alone with the MOS file beside it (the release's `Data` folder holds both)."""
    files = [Path(f) for f in label_files]
    names = {f.name.lower(): f for f in files}
    images = names.get("allimages_release.mat", files[0])
    mos = names.get("allmos_release.mat")
    if mos is None:
        if len(files) > 1:
            mos = next(f for f in files if f != images)
        else:
            mos = images.with_name("AllMOS_release.mat")
    return images, mos


def read_clive(label_files, mos_scale: str | None = None) -> pd.DataFrame:
    """LIVE Challenge as released: names from AllImages_release.mat, MOS from AllMOS_release.mat (same
    order); the first `CLIVE_TRAINING_IMAGES` entries (the subjects' training images) are left out."""
    images_mat, mos_mat = clive_files(label_files)
    names = _mat_strings(_load_mat(images_mat, "AllImages_release"), images_mat, "AllImages_release")
    raw = np.asarray(_load_mat(mos_mat, "AllMOS_release"), dtype=object).ravel()
    if len(raw) != len(names):
        raise UserError(f"{mos_mat}: {len(raw)} MOS values for the {len(names)} images of {images_mat} "
                        "(the two files must list the same images in the same order)")
    if len(names) <= CLIVE_TRAINING_IMAGES:
        raise UserError(f"{images_mat}: {len(names)} entries; the release lists {CLIVE_TRAINING_IMAGES} training "
                        "images and then the rated ones")
    keep = slice(CLIVE_TRAINING_IMAGES, None)
    names, raw = names[keep], pd.Series([str(v) for v in raw[keep]])
    mos_raw, mos = _mos(raw, mos_mat, "AllMOS_release", mos_scale or FORMATS["clive"].scale,
                        first_row=CLIVE_TRAINING_IMAGES + 1, unit="entry")
    ids, rels = zip(*[image_id_and_path(n, f"{images_mat}: entry {i + CLIVE_TRAINING_IMAGES + 1}")
                      for i, n in enumerate(names)])
    return pd.DataFrame({"id": pd.array(ids, dtype=object), "path": pd.array(rels, dtype=object),
                         "row": np.arange(CLIVE_TRAINING_IMAGES + 1, CLIVE_TRAINING_IMAGES + 1 + len(names)),
                         "mos_raw": mos_raw, "mos": mos, "split": "kfold", "group": "", "label_file": str(images_mat)})


def read_label_file(fmt: str, path, mos_scale: str | None = None) -> pd.DataFrame:
    """One label file of a format -> the common table (see the module docstring)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown label format '{fmt}' (one of: {', '.join(FORMATS)})")
    if mos_scale is not None and mos_scale not in SCALES:
        raise UserError(f"unknown MOS scale '{mos_scale}' (one of: {', '.join(SCALES)})")
    path = Path(path)
    if fmt == "folder" or (fmt == "image" and path.is_dir()):
        return read_folder(path, media_of_format(fmt))
    if fmt == "clive":
        return read_clive([path], mos_scale)
    spec = FORMATS[fmt]
    df = _read_table(path, fmt)
    names = _column(df, spec.id_column, path)
    raw = _column(df, spec.mos_column, path)
    ids, rels = [], []
    for i, name in enumerate(names):
        where = f"{path}: row {i + 1}"
        if fmt in ("konvid", "lsvq"):  # the file is always `<name>.mp4` (LSVQ has names like `x.mov`)
            ident = check_relative(name.strip("\"'"), where)
            rel = ident + ".mp4"
        elif spec.media == "image":
            ident, rel = image_id_and_path(name, where)
        else:
            ident, rel = id_and_path(name, where)
        ids.append(ident)
        rels.append(rel)
    scale = mos_scale or spec.scale
    mos_raw, mos = _mos(raw, path, spec.mos_column, scale)
    split = _lsvq_split(df, path) if fmt == "lsvq" else ["kfold"] * len(df)
    group = [""] * len(df)
    if spec.group_column:
        group = _column(df, spec.group_column, path).tolist()
    extra = {}
    if fmt in ("generic", "image"):
        lower = {c.lower(): c for c in df.columns}
        if "split" in lower:
            split = _split_column(df[lower["split"]], path)
        if "group" in lower:
            group = df[lower["group"]].astype(str).str.strip().tolist()
        extra = _extra_columns(df, path, used={spec.id_column, spec.mos_column, "split", "group"})
    table = pd.DataFrame({"id": pd.array(ids, dtype=object), "path": pd.array(rels, dtype=object),
                          "row": np.arange(1, len(df) + 1), "mos_raw": mos_raw, "mos": mos,
                          "split": split, "group": pd.array(group, dtype=object), "label_file": str(path)})
    for name, values in extra.items():
        table[name] = values
    return table


def extra_columns(table: pd.DataFrame) -> list[str]:
    """The extra (generic label file) columns of a labels or manifest table, in their order."""
    return [c for c in table.columns if c not in RESERVED_COLUMNS]


def _extra_columns(df: pd.DataFrame, path: Path, used: set[str]) -> dict[str, pd.Series]:
    """The generic label file's other columns as stripped text, keyed by their names."""
    used_lower = {u.lower() for u in used}
    out = {}
    for col in df.columns:
        if col.lower() in used_lower:
            continue
        if col == "" or col.startswith("Unnamed:"):
            raise UserError(f"{path}: a column has no name in the header; name it or remove it")
        if col.lower() in RESERVED_COLUMNS:
            raise UserError(f"{path}: column '{col}' clashes with a column the manifest writes itself "
                            f"({', '.join(sorted(RESERVED_COLUMNS))}); rename it")
        out[col] = pd.array(df[col].astype(str).str.strip().tolist(), dtype=object)
    return out


def _split_column(raw: pd.Series, path: Path) -> list[str]:
    """Values of a generic label file's `split` column: split names usable in experiment selectors."""
    out = []
    for i, v in enumerate(raw.astype(str).str.strip()):
        if v == "":
            raise UserError(f"{path}: row {i + 1}: column 'split' is empty (a split name such as train or test)")
        if not SPLIT_NAME.match(v):
            raise UserError(f"{path}: row {i + 1}: column 'split' is '{v}'; split names use letters, digits and _ only")
        if v.lower() in RESERVED_SPLITS:
            raise UserError(f"{path}: row {i + 1}: column 'split' is '{v}', a reserved name "
                            f"({', '.join(RESERVED_SPLITS)}); use e.g. train / test")
        out.append(v)
    return out


def read_folder(folder, media: str = "video") -> pd.DataFrame:
    """Every video (or image) file under a folder (recursively, sorted), unlabeled: mos NaN, split `all`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{'videos' if media == 'video' else 'images'} folder not found: {folder}")
    rels = scan_media(folder, media)
    if not rels:
        ext = VIDEO_EXTENSIONS if media == "video" else IMAGE_EXTENSIONS
        raise UserError(f"{folder}: no {media} files ({', '.join(ext[:5])}, ...) in the folder")
    ids = [item_id(check_relative(r, str(folder))) for r in rels]
    return pd.DataFrame({"id": pd.array(ids, dtype=object), "path": pd.array(rels, dtype=object),
                         "row": np.arange(1, len(rels) + 1), "mos_raw": np.nan, "mos": np.nan,
                         "split": "all", "group": "", "label_file": str(folder)})


def scan_videos(folder) -> list[str]:
    """Relative POSIX paths of the video files under a folder (hidden files and folders skipped), sorted."""
    return scan_media(folder, "video")


def scan_media(folder, media: str | tuple = "video") -> list[str]:
    """Relative POSIX paths of the video and/or image files (`media`: video, image or both as a tuple)
    under a folder (hidden files and folders skipped), sorted."""
    kinds = {media} if isinstance(media, str) else set(media)
    checks = [is_video_file] * ("video" in kinds) + [is_image_file] * ("image" in kinds)
    folder = Path(folder)
    out = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_root = Path(root).relative_to(folder)
        for f in files:
            if any(check(f) for check in checks):
                out.append((rel_root / f).as_posix())
    return sorted(out)


def read_labels(fmt: str, label_files, mos_scale: str | None = None) -> pd.DataFrame:
    """Read and concatenate label files of one format; ids must be unique over all of them."""
    if fmt not in FORMATS:
        raise UserError(f"unknown label format '{fmt}' (one of: {', '.join(FORMATS)})")
    if isinstance(label_files, (str, os.PathLike)):
        label_files = [label_files]
    label_files = list(label_files)
    if not label_files:
        raise UserError("no label file given")
    if fmt == "clive":  # one release = two .mat files read together
        parts = [read_clive(label_files, mos_scale)]
    else:
        parts = [read_label_file(fmt, f, mos_scale) for f in label_files]
    df = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    _check_unique(df, "id", "id")
    _check_unique(df, "path", "video path")
    extras = list(dict.fromkeys(c for p in parts for c in extra_columns(p)))
    for c in extras:  # a column only some of the files have
        df[c] = df[c].fillna("").astype(object)
    return df[COLUMNS + extras]


def _check_unique(df: pd.DataFrame, column: str, what: str) -> None:
    dup = df[column].duplicated(keep=False)
    if not dup.any():
        return
    value = df.loc[dup, column].iloc[0]
    rows = df.index[df[column] == value]
    first, second = df.loc[rows[0]], df.loc[rows[1]]
    other = "" if first["label_file"] == second["label_file"] else f" of {first['label_file']}"
    raise UserError(f"{second['label_file']}: row {second['row']}: duplicate {what} '{value}' "
                    f"(already at row {first['row']}{other})")
