"""What each job of the workflow asks a scheduler for, in one place: every rule belongs to a family
(`RULE_FAMILIES`), every family has its threads, memory, run time and GPUs (`FAMILIES`). What a config
changes (the device, `training.gpus`, `features.decode_workers`) is read from its resolved plan (`Settings`).

The rules read their `threads:` and `resources:` from here (pipeline/workflow.py `family_threads` /
`family_resources`), and `lmmvqa plan` prints the same table (`cluster_table`), so a cluster profile
needs no per-rule list that goes stale when a rule is added: profiles/slurm keeps only site settings
(the account, which partition has the GPUs). A job that asks for a GPU (`gpu` > 0) lands on a GPU
partition, every other job on a CPU partition (profiles/slurm/partitions.yaml).

On one machine Snakemake caps every job's threads at `--cores`; memory and run time only bound a
local run where `--resources mem_mb=...` is given.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.core.errors import UserError

if TYPE_CHECKING:
    from pipeline.core.settings import FeatureSettings, Settings

# stages whose jobs run on a GPU when the config asks for one (`device: cuda` or `auto`)
GPU_STAGES = ("extract", "train", "evaluate")


@dataclass(frozen=True)
class Family:
    """The resources of every job of a rule family. Memory is host memory (MB): `mem_mb` plus
    `mem_mb_per_thread` for each of the job's threads (decode workers, ffmpeg processes)."""

    gpu_stage: str | None  # the stage whose GPUs the job asks for (gpu_count), None: never a GPU
    threads: int
    mem_mb: int
    runtime: int  # minutes
    what: str
    mem_mb_per_thread: int = 0


FAMILIES = {
    # models + main process ~5 GB, each decode worker ~100-200 MB + 2 shared-memory frame slots
    "extract": Family("extract", threads=8, mem_mb=24000, mem_mb_per_thread=1000, runtime=240,
                      what="decode a shard of videos and run the frozen encoders"),
    # the quality adapter: decodes the synth variants and trains a small head on the encoder's output
    "adapt": Family("extract", threads=4, mem_mb=16000, runtime=240,
                    what="learn the quality adapter of the vision encoder"),
    # the LLM's weights are read into host memory before they move to the GPU (16 GB for an 8B model)
    "train": Family("train", threads=8, mem_mb=64000, runtime=1440,
                    what="train a model (each stage, fold and ensemble member)"),
    "evaluate": Family("evaluate", threads=4, mem_mb=32000, runtime=240,
                       what="score one test selector with a model"),
    "media": Family(None, threads=4, mem_mb=1000, mem_mb_per_thread=500, runtime=240,
                    what="render or encode videos, one process per thread (demo and synth data)"),
    "light": Family(None, threads=1, mem_mb=4000, runtime=120,
                    what="tables and small files (manifests, probes, prompts, statistics, report)"),
}

RULE_FAMILIES = {
    "extract": "extract",
    "adapt_encoder": "adapt",
    **{r: "train" for r in ("train_stage1", "train_stage1_fold", "train_stage1_all", "train", "train_fold",
                            "train_all", "train_member", "train_fold_member")},
    "evaluate": "evaluate",
    "evaluate_fold": "evaluate",
    "synth_variants": "media",
    **{r: "light" for r in ("manifest", "probe", "feature_stats", "prompts", "tokenizer", "aggregate", "report",
                            "synth_plan", "synth_segments", "synth_labels")},
}
# rules named per dataset (rules/data.smk, rules/synth.smk): `<prefix><dataset>`
PREFIX_FAMILIES = {"demo_data_": "media", "synth_references_": "media"}
# rules that run no job of their own
TARGET_RULES = ("all",)


def family_of(rule: str) -> str:
    """The family of a rule of the workflow; a rule without one is an error (it would fall to the
    scheduler's defaults)."""
    if rule in RULE_FAMILIES:
        return RULE_FAMILIES[rule]
    for prefix, family in PREFIX_FAMILIES.items():
        if rule.startswith(prefix):
            return family
    raise UserError(f"rule '{rule}' has no resource family: add it to RULE_FAMILIES in {__name__}")


def on_gpu(device: str) -> bool:
    """`cuda` or `auto` (auto runs on a GPU where the job has one, so the GPU stages ask for one)."""
    return device != "cpu"


def gpu_count(s: "Settings", stage: str | None) -> int:
    """GPUs a job asks for (the `gpu` resource: `--gpus=N` on SLURM, limited by `--resources gpu=N`
    on one box): one for extraction and evaluation, `training.gpus` for training (DDP through
    `lmmvqa launch`), none on CPU."""
    if not on_gpu(s.device) or stage not in GPU_STAGES:
        return 0
    return s.training.gpus if stage == "train" else 1


def threads(features: "FeatureSettings", family: str) -> int:
    """A family's threads; extraction's are its decode workers (`features.decode_workers` where set)."""
    if family == "extract" and features.decode_workers:
        return max(2, int(features.decode_workers))
    return FAMILIES[family].threads


def mem_mb(family: str, n_threads: int) -> int:
    f = FAMILIES[family]
    return f.mem_mb + f.mem_mb_per_thread * n_threads


def job_resources(s: "Settings", family: str, n_threads: int | None = None) -> dict:
    """{gpu, mem_mb, runtime} of a job of the family with `n_threads` threads (default: the family's)."""
    n = threads(s.features, family) if n_threads is None else n_threads
    return {"gpu": gpu_count(s, FAMILIES[family].gpu_stage), "mem_mb": mem_mb(family, n),
            "runtime": FAMILIES[family].runtime}


def partition_kind(s: "Settings", family: str) -> str:
    """'gpu' for a family whose jobs ask for a GPU under this config, else 'cpu'."""
    return "gpu" if gpu_count(s, FAMILIES[family].gpu_stage) else "cpu"


def cluster_table(s: "Settings") -> list[dict]:
    """Per family: its rules, partition kind, GPUs, threads, memory (MB) and run time (minutes) under
    this config, as the workflow's jobs ask for them."""
    rules = {f: [r for r, g in RULE_FAMILIES.items() if g == f] + [p + "<dataset>" for p, g in PREFIX_FAMILIES.items()
                                                                    if g == f] for f in FAMILIES}
    return [{"family": f, "rules": rules[f], "partition": partition_kind(s, f), "threads": threads(s.features, f),
             **job_resources(s, f), "what": FAMILIES[f].what} for f in FAMILIES]
