"""Gather a synth dataset's shards into a generic label file, a videos folder and a failures table.

`lmmvqa synth-labels --config C --dataset D --plan plan.csv [--plan-failures plan.failures.csv] --segments DIR...
--shards DIR... --labels labels.csv [--failures labels.failures.csv] --videos DIR` (the failures tables
default to the ones beside the plan and the label file)

labels.csv (`LABEL_COLUMNS`, in plan order) is what the manifest reads as a generic label file: `mos` is
the config's metric on 0-100 (pipeline/synth/fr_metrics.py `to_mos`), `group` and `source` come from the
plan (inherited from `reference_labels`, or the reference segment and file), `distortion` is the family,
`severity` its level (1 = weakest of `levels`), `params` the drawn parameters (JSON); `vmaf`, `psnr`,
`ssim` are every full-reference score; `width, height, fps, frames` describe the variant file. The videos
folder holds a hard link (a copy across file systems) to every scored variant. The failures table lists the
references that could not be probed or cut and the variants that could not be encoded or scored. All three
are written atomically, the label file last.
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import pandas as pd

from pipeline.cli_args import add_config_arg
from pipeline.core import atomic, paths, resolve
from pipeline.core.errors import FAILURE_COLUMNS
from pipeline.synth.fr_metrics import to_mos
from pipeline.synth.plan import read_plan, synth_dataset, synth_settings
from pipeline.synth.segments import read_segments
from pipeline.synth.variants import read_failures, read_scores

LABEL_COLUMNS = ["name", "mos", "group", "source", "distortion", "params", "vmaf", "psnr", "ssim", "width", "height",
                 "fps", "frames", "reference", "segment", "severity", "levels", "codec", "container"]


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def collect(plan: pd.DataFrame, plan_failures: pd.DataFrame, segment_dirs, shard_dirs, metric: str,
            videos: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(labels, failures); fills `videos` (a folder that appears whole) with the variants."""
    failures = [plan_failures]
    for folder in map(Path, segment_dirs):
        seg = read_segments(folder)
        bad = seg[seg["error"] != ""]
        path = plan.loc[plan["reference"] == folder.name, "path"]
        failures.append(pd.DataFrame({"id": folder.name, "path": path.iloc[0] if len(path) else "",
                                      "stage": "segment " + bad["segment"].astype(str), "error": bad["error"]}))
    scored, where = [], {}
    for folder in map(Path, shard_dirs):
        scores = read_scores(folder)
        scored.append(scores)
        where.update({name: folder for name in scores["name"]})
        failures.append(read_failures(folder))
    scores = pd.concat(scored, ignore_index=True) if scored else pd.DataFrame(columns=["name"])
    segment_size = ["width", "height", "frames"]  # the variant's own size and length replace the segment's
    labels = plan.drop(columns=segment_size).merge(scores, on="name", how="inner", validate="one_to_one")
    labels["mos"] = [to_mos(r, metric) for r in labels[["vmaf", "psnr", "ssim"]].to_dict("records")]
    labels = labels.rename(columns={"family": "distortion"})[LABEL_COLUMNS]
    with atomic.directory(videos) as tmp:
        for name in labels["name"]:
            _link(where[name] / name, tmp / name)
    failures = pd.concat([f for f in failures if len(f)], ignore_index=True) if any(len(f) for f in failures) \
        else pd.DataFrame(columns=FAILURE_COLUMNS)
    return labels, failures[FAILURE_COLUMNS]


def configure_parser(p: argparse.ArgumentParser) -> None:
    add_config_arg(p)
    p.add_argument("--dataset", required=True, help="a synth dataset of the config")
    p.add_argument("--plan", required=True, help="the dataset's plan (lmmvqa synth-plan)")
    p.add_argument("--plan-failures", default=None,
                   help="references the plan could not probe (default: the one beside --plan)")
    p.add_argument("--segments", nargs="*", default=[], help="every reference's segments folder")
    p.add_argument("--shards", nargs="*", default=[], help="every variant shard folder")
    p.add_argument("--labels", required=True, help="output: the generic label file (CSV)")
    p.add_argument("--failures", default=None,
                   help="output: failed references and variants (CSV; default: <labels>.failures.csv beside --labels)")
    p.add_argument("--videos", required=True, help="output: the videos folder")


def main(args) -> int:
    s = resolve.load(args.config)
    metric = synth_settings(synth_dataset(s.datasets, args.dataset))["metric"]
    plan_failures = pd.read_csv(args.plan_failures or paths.failures_table(args.plan), dtype=str, keep_default_na=False)
    labels, failures = collect(read_plan(args.plan), plan_failures, args.segments, args.shards, metric,
                               Path(args.videos))
    atomic.write_csv(failures, args.failures or paths.failures_table(args.labels))
    atomic.write_csv(labels, args.labels)
    print(f"synth-labels: {len(labels)} variants ({metric}: mos {labels['mos'].min() if len(labels) else 0:.1f}.."
          f"{labels['mos'].max() if len(labels) else 0:.1f}), {len(failures)} failures -> {args.labels}")
    return 0
