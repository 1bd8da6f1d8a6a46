"""Plan a synth dataset: which references, which segments of each, which variants of each segment.

`lmmvqa synth-plan --config C --dataset D --out plan.csv [--failures plan.failures.csv]` (default: beside --out)

Lists the references (every video file under `references`, or the files `reference_labels` names), probes
each (PyAV), places up to `segments_per_reference` segments of `segment_seconds` evenly over it, and gives
every segment one variant per level of every family of the ladder (pipeline/synth/distortions.py) with its
parameters and container drawn from a seed of (config seed, reference, segment, family, level). Writes one
row per variant (`PLAN_COLUMNS`), references in sorted order; a reference's variants fill its own shards
of `shard_size`, so a new reference adds only its own jobs. References that cannot be probed go to the
failures table (`id, path, stage, error`) and the plan goes on without them.

Groups and sources: `reference_labels` may give each reference a `group` and a `source`, which its
variants inherit (e.g. realset-dev's `hq` videos keep their segment group and source, so that
`exclude_shared: source` matches across datasets); otherwise source = the reference's file stem and group =
`<reference>-<segment>`.
"""
from __future__ import annotations

import argparse
import json
import re
from fractions import Fraction
from pathlib import Path

import pandas as pd

from pipeline.cli_args import add_config_arg
from pipeline.core import atomic, paths, resolve
from pipeline.core.config import stable_hash
from pipeline.core.errors import FAILURE_COLUMNS, UserError
from pipeline.core.settings import Dataset
from pipeline.ingest import labels as L
from pipeline.ingest.manifest import fingerprint
from pipeline.ingest.probe import ProbeError, probe_video
from pipeline.synth import distortions as D

PLAN_COLUMNS = ["name", "reference", "path", "fingerprint", "ref_width", "ref_height", "segment",
                "start_frame", "frames", "width", "height",
                "rate", "family", "severity", "levels", "params", "seed", "codec", "container", "shard", "group",
                "source"]
SAFE = re.compile(r"[^A-Za-z0-9_-]+")


def synth_dataset(datasets: dict, name: str) -> Dataset:
    """The synth dataset `name` of the resolved datasets (name -> `Dataset`); UserError when the config
    has no synth dataset of that name."""
    ds = datasets.get(name)
    if ds is None or ds.format != "synth":
        raise UserError(f"dataset '{name}' is not a synth dataset of the config")
    return ds


def synth_settings(ds: Dataset) -> dict:
    """The synth block of a synth dataset (UserError when the dataset is not one)."""
    if ds.format != "synth":
        raise UserError(f"dataset '{ds.name}' is not a synth dataset of the config")
    return ds.synth


def reference_keys(names: list[str]) -> dict[str, str]:
    """name -> a key usable in file names and job wildcards: the path without its extension, other
    characters than letters, digits, _ and - replaced by _; clashes get the extension, then a hash."""
    def base(name: str) -> str:
        stem = name.rsplit(".", 1)[0] if "." in Path(name).name else name
        return SAFE.sub("_", stem).strip("_-") or "ref"

    keys = {n: base(n) for n in names}
    for attempt in (lambda n: SAFE.sub("_", n).strip("_-"), lambda n: f"{base(n)}-{stable_hash(n, 6)}"):
        seen: dict[str, int] = {}
        for k in keys.values():
            seen[k] = seen.get(k, 0) + 1
        keys = {n: (attempt(n) if seen[k] > 1 else k) for n, k in keys.items()}
    keys = {n: (k if k[0].isalnum() else f"r{k}") for n, k in keys.items()}
    if len(set(keys.values())) != len(keys):
        raise UserError("references: two file names map to the same reference key; rename one")
    return keys


def list_references(references, reference_labels=None) -> pd.DataFrame:
    """`name` (relative to the folder), `group`, `source` ('' when not given) of every reference."""
    folder = Path(references)
    if reference_labels is None:
        if not folder.is_dir():
            raise UserError(f"references folder not found: {folder}")
        names = L.scan_videos(folder)
        if not names:
            raise UserError(f"{folder}: no video files in the references folder")
        return pd.DataFrame({"name": names, "group": "", "source": ""})
    path = Path(reference_labels)
    if not path.is_file():
        raise UserError(f"reference_labels file not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable CSV file: {' '.join(str(exc).split())}") from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    if "name" not in df.columns:
        raise UserError(f"{path}: missing column 'name' (columns: {', '.join(df.columns[:12])})")
    if len(df) == 0:
        raise UserError(f"{path}: no references listed")
    names = [L.check_relative(n.strip(), f"{path}: row {i + 1}") for i, n in enumerate(df["name"])]
    out = pd.DataFrame({"name": names,
                        "group": df["group"].str.strip() if "group" in df.columns else "",
                        "source": df["source"].str.strip() if "source" in df.columns else ""})
    dup = out["name"].duplicated()
    if dup.any():
        raise UserError(f"{path}: row {int(dup.to_numpy().argmax()) + 1}: reference '{out['name'][dup].iloc[0]}' listed twice")
    return out.sort_values("name", kind="stable").reset_index(drop=True)


def segment_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """A segment's size: the reference's (an odd side loses a pixel), or scaled down so that the long side
    is at most `long_side`, rounded to even sides (4:2:0 needs them)."""
    scale = min(1.0, long_side / max(width, height))
    if scale == 1.0:
        return max(2, width // 2 * 2), max(2, height // 2 * 2)
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def segment_starts(n_frames: int, seg_frames: int, count: int) -> list[int]:
    """First frames of up to `count` segments of `seg_frames` spread evenly over `n_frames` (one when short)."""
    count = max(1, min(count, n_frames // max(1, seg_frames)))
    if count == 1:
        return [(n_frames - seg_frames) // 2]
    return [round(k * (n_frames - seg_frames) / (count - 1)) for k in range(count)]


def frame_rate(fps: float) -> Fraction:
    """The reference's average frame rate as a fraction (30000/1001 stays 30000/1001)."""
    return Fraction(fps).limit_denominator(1001)


def plan(ds: Dataset) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(plan table, failures table) of a synth dataset."""
    st = synth_settings(ds)
    rungs = D.ladder(st["families"], f"datasets.{ds.name}.synth.families")
    for rung in rungs:  # every codec of the ladder must have a container
        D.container(rung.family.codec, st["containers"], 0)
    refs = list_references(ds.references, ds.reference_labels)
    keys = reference_keys(list(refs["name"]))
    rows, failures = [], []
    for ref in refs.itertuples(index=False):
        key = keys[ref.name]
        path = Path(ds.references) / ref.name
        try:
            info = probe_video(path)
            if not info["has_video"]:
                raise ProbeError("stream", "no video stream")
            if not info["fps"] or not info["n_frames"] or info["n_frames"] < 2:
                raise ProbeError("stream", "no frame rate or fewer than 2 frames")
        except ProbeError as exc:
            failures.append({"id": key, "path": ref.name, "stage": f"probe:{exc.stage}", "error": str(exc)})
            continue
        rate = frame_rate(info["fps"])
        seg_frames = min(int(info["n_frames"]), max(1, int(round(st["segment_seconds"] * float(rate)))))
        width, height = segment_size(int(info["width"]), int(info["height"]), st["long_side"])
        ref_print = fingerprint(path)[1]
        n = 0
        for s, start in enumerate(segment_starts(int(info["n_frames"]), seg_frames, st["segments_per_reference"])):
            for rung in rungs:
                for level in range(rung.levels):
                    seed = D.variant_seed(st["seed"], key, s, rung.family.name, level)
                    params = D.draw(rung, level, seed)
                    container = D.container(rung.family.codec, st["containers"], seed)
                    rows.append({
                        "name": f"{key}-s{s}-{rung.family.name}-{level + 1}.{container}",
                        "reference": key, "path": ref.name, "fingerprint": ref_print,
                        "ref_width": info["width"], "ref_height": info["height"], "segment": s,
                        "start_frame": start, "frames": seg_frames, "width": width, "height": height,
                        "rate": f"{rate.numerator}/{rate.denominator}", "family": rung.family.name,
                        "severity": level + 1, "levels": rung.levels,
                        "params": json.dumps(params, sort_keys=True, separators=(",", ":")), "seed": str(seed),
                        "codec": rung.family.codec, "container": container, "shard": n // st["shard_size"],
                        "group": ref.group or f"{key}-{s}", "source": ref.source or key,
                    })
                    n += 1
    return pd.DataFrame(rows, columns=PLAN_COLUMNS), pd.DataFrame(failures, columns=FAILURE_COLUMNS)


def read_plan(path) -> pd.DataFrame:
    """A plan table as written (strings kept as strings, `seed` a Python int)."""
    df = pd.read_csv(path, dtype={"name": str, "reference": str, "path": str, "fingerprint": str, "rate": str,
                                  "params": str, "seed": str, "group": str, "source": str},
                     keep_default_na=False)
    df["seed"] = df["seed"].map(int).astype(object)
    return df


SEGMENT_KEYS = ["path", "fingerprint", "ref_width", "ref_height", "segment", "start_frame", "frames", "width",
                "height", "rate"]


def job_digests(table: pd.DataFrame) -> tuple[dict[str, str], dict[tuple[str, int], str]]:
    """Hashes of what each segments job (per reference) and each variants job (per reference and shard)
    is made of: their rerun triggers, so that a rewritten plan reruns only the jobs whose rows changed."""
    segments = {ref: stable_hash(g[SEGMENT_KEYS].drop_duplicates().astype(str).values.tolist(), 16)
                for ref, g in table.groupby("reference", sort=True)}
    shards = {(ref, int(shard)): stable_hash(g.astype(str).values.tolist(), 16)
              for (ref, shard), g in table.groupby(["reference", "shard"], sort=True)}
    return segments, shards


def segment_of(row) -> D.Segment:
    return D.Segment(int(row["width"]), int(row["height"]), Fraction(row["rate"]), int(row["frames"]))


def configure_parser(p: argparse.ArgumentParser) -> None:
    add_config_arg(p)
    p.add_argument("--dataset", required=True, help="a synth dataset of the config")
    p.add_argument("--out", required=True, help="plan table (CSV)")
    p.add_argument("--failures", default=None,
                   help="references that could not be probed (CSV; default: <out>.failures.csv beside --out)")


def main(args) -> int:
    s = resolve.load(args.config)
    table, failures = plan(synth_dataset(s.datasets, args.dataset))
    atomic.write_csv(failures, args.failures or paths.failures_table(args.out))
    atomic.write_csv(table, args.out)
    print(f"synth-plan: {table['reference'].nunique() if len(table) else 0} references, {len(table)} variants, "
          f"{len(failures)} failed -> {args.out}")
    return 0
