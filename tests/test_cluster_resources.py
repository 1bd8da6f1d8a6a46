"""What every job of the workflow asks a cluster for: each rule's family (pipeline/core/resources.py) gives
its threads, memory, run time and GPUs, the SLURM profile's partitions file its partition, and
`lmmvqa plan` prints the same table. Checked on a dry run through profiles/slurm of a config with every
kind of rule (a two-stage folds-all experiment, ensembles, a quality adapter, synth and generated data),
with the real plugin's partition choice; tests/test_slurm.py checks the jobs of a real (fake-SLURM) run."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO

from pipeline.core import resolve, resources
from pipeline.core.errors import UserError

BIN = Path(sys.executable).parent
PROFILE = REPO / "profiles/slurm"
TINY_ADAPTER = {"datasets": ["syn"], "steps": 3, "dim": 4, "hidden": 8, "batch_videos": 4}
X264 = {"families": {"x264": {"levels": 1}}}

# Every kind of rule: per-fold, per-stage, every-fold and ensemble-member training and evaluation, the
# quality adapter, a synth dataset with references at hand, one whose references are rendered, and a
# generated dataset. `demo` has no videos folder: its manifest lists its rows without looking for files.
EVERY_RULE = {
    "datasets": {
        "demo": {"format": "generic", "labels": "data/labels.csv", "split": {"k": 2}},
        "gen": {"format": "generic", "labels": "resources/gen/labels.csv", "videos": "resources/gen/videos",
                "generate": {"n_videos": 2, "seed": 1}},
        "syn": {"format": "synth", "references": "refs", "synth": X264, "split": {"k": 2}},
        "syn2": {"format": "synth", "references": "resources/syn2/videos", "generate": {"n_videos": 2, "seed": 2},
                 "synth": X264},
    },
    "models": {"preset": "tiny", "vision": {"adapted": TINY_ADAPTER}},
    "features": {"shard_size": 4},
    "experiments": {
        "cv2": {"train": ["demo:train"], "test": ["demo:test"], "folds": "all", "stage1": {"max_steps": 2}},
        "two": {"train": ["demo:train"], "test": ["demo:test"], "stage1": {"max_steps": 2}},
        "ens": {"train": ["demo:train"], "test": ["demo:test"], "ensemble": 2},
        "cvens": {"train": ["demo:train"], "test": ["demo:test"], "folds": "all", "ensemble": 2},
    },
    "device": "auto",
}


def test_every_family_has_its_resources_and_an_unknown_rule_is_named():
    s = resolve.resolve({"datasets": {"d": {"format": "generic", "labels": "l.csv"}}, "device": "cuda",
                         "training": {"gpus": 2}})
    table = {f["family"]: f for f in resources.cluster_table(s)}
    assert set(table) == set(resources.FAMILIES)
    assert {f: (t["partition"], t["gpu"]) for f, t in table.items()} == {
        "extract": ("gpu", 1), "adapt": ("gpu", 1), "train": ("gpu", 2), "evaluate": ("gpu", 1),
        "media": ("cpu", 0), "light": ("cpu", 0)}
    assert table["extract"]["mem_mb"] == resources.FAMILIES["extract"].mem_mb + 8 * 1000
    assert resources.family_of("demo_data_x") == "media" and resources.family_of("train_fold_member") == "train"
    with pytest.raises(UserError, match="rule 'newrule' has no resource family"):
        resources.family_of("newrule")
    # on the CPU nothing asks for a GPU, so every job goes to a CPU partition
    cpu = resolve.resolve({"datasets": {"d": {"format": "generic", "labels": "l.csv"}}, "device": "cpu"})
    assert {t["partition"] for t in resources.cluster_table(cpu)} == {"cpu"}
    # extraction's threads are its decode workers where the config sets them
    workers = resolve.resolve({"datasets": {"d": {"format": "generic", "labels": "l.csv"}},
                               "features": {"decode_workers": 3}})
    assert resources.threads(workers.features, "extract") == 3


def _run(work: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                           str(work), "--configfile", str(work / "config.yaml"), *args],
                          capture_output=True, text=True, env=env, timeout=600, cwd=work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _dry_run_jobs(text: str) -> list[dict]:
    """Each job of a dry run's listing: its rule, threads and resources."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?(?:rule|checkpoint) \w+:\n)", text):
        head = re.match(r"(?:local)?(?:rule|checkpoint) (\w+):\n", block)
        if not head:
            continue
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        threads = re.search(r"^\s+threads: (\d+)$", block, re.M)
        pairs = dict(p.split("=", 1) for p in res.group(1).split(", ")) if res else {}
        jobs.append({"rule": head.group(1), "threads": int(threads.group(1)) if threads else 1, "resources": pairs})
    return jobs


class _Job:
    """What the plugin's partition choice reads of a job."""

    def __init__(self, name: str, threads: int, res: dict):
        self.name, self.threads, self.resources = name, threads, res


@pytest.fixture(scope="module")
def every_rule_run(tmp_path_factory):
    """EVERY_RULE with its `demo` manifest and `syn` plan built (so the dry run reaches the jobs behind those
    checkpoints), the rule list, a dry run through profiles/slurm, and `lmmvqa plan`'s table."""
    from pipeline.synth import ffmpeg

    try:
        ffmpeg.executable()
    except UserError as exc:  # pragma: no cover - the pinned dependency is missing
        pytest.skip(str(exc))
    from pipeline.ingest.demo.labels import clean_params, sample_params
    from pipeline.ingest.demo.video import render_video

    work = tmp_path_factory.mktemp("every-rule")
    (work / "data").mkdir()
    pd.DataFrame({"name": [f"v{i}.mp4" for i in range(8)], "mos": [10 + 10 * i for i in range(8)]}).to_csv(
        work / "data/labels.csv", index=False)
    for i, content in enumerate(("pan", "texture")):
        params = clean_params({**sample_params(5, i), "width": 96, "height": 64, "n_frames": 8,
                               "fps": 8, "content": content})
        (work / "refs").mkdir(exist_ok=True)
        render_video(params, work / "refs" / f"r{i}.mkv")
    (work / "config.yaml").write_text(yaml.safe_dump(EVERY_RULE))
    _run(work, "--cores", "2", "results/manifest/demo.csv", "results/synth/syn/plan.csv")
    rules = _run(work, "--list-rules").stdout.split()
    # a cluster run has no --cores: threads are not capped there (a dry run's default of 1 would cap them)
    dry = _run(work, "-n", "--workflow-profile", str(PROFILE), "--cores", "1000").stdout
    subprocess.run([str(BIN / "lmmvqa"), "plan", "--config", "config.yaml", "--json", "plan.json"], cwd=work,
                   check=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    plan = json.loads((work / "plan.json").read_text())
    return rules, _dry_run_jobs(dry), {f["family"]: f for f in plan["cluster"]}


@pytest.mark.slow
def test_every_rule_of_the_workflow_asks_for_its_familys_resources(every_rule_run):
    from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file

    rules, jobs, plan = every_rule_run
    # every rule of the workflow is in the dry run (so each is checked below) and has a family
    assert set(rules) - {"all"} == {j["rule"] for j in jobs} - {"all"}
    assert {"train_stage1", "train_stage1_fold", "train_stage1_all", "train_fold", "train_all", "train_member",
            "train_fold_member", "evaluate_fold", "aggregate", "adapt_encoder", "synth_segments", "synth_variants",
            "synth_labels", "synth_references_syn2", "demo_data_gen", "extract", "probe"} <= set(rules)
    asked, wrong = [], []
    for job in jobs:
        if job["rule"] == "all":
            continue
        family = plan[resources.family_of(job["rule"])]
        res = job["resources"]
        got = {"threads": job["threads"], "mem_mb": int(res.get("mem_mb", 0)), "runtime": int(res.get("runtime", 0)),
               "gpu": int(res.get("gpu", 0))}
        asked.append((job, got, family))
        if got != {k: family[k] for k in got}:
            wrong.append((job["rule"], got, family["family"]))
    assert len(asked) >= 30 and wrong == []
    # the partition: the plugin's own choice among the profile's partitions, for what the job asks
    partitions = read_partition_file(PROFILE / yaml.safe_load((PROFILE / "config.yaml").read_text())[
        "slurm-partition-config"])
    gpu_partitions = {p.name for p in partitions if p.limits.max_gpu > 0}
    cpu_partitions = {p.name for p in partitions} - gpu_partitions

    class Log:
        def info(self, *a): ...
        debug = warning = info

    for job, got, family in asked:
        asks = _Job(job["rule"], job["threads"], {**job["resources"], **got})
        partition = get_best_partition(partitions, asks, Log())
        assert partition in (gpu_partitions if family["partition"] == "gpu" else cpu_partitions), job["rule"]
    assert plan["train"]["gpu"] == 1 and plan["train"]["partition"] == "gpu"
    assert plan["light"]["partition"] == "cpu" and plan["media"]["threads"] == 4


def test_slurm_profile_sets_no_per_rule_resources():
    """Rule resources come from pipeline/core/resources.py; a per-rule list in the profile would go stale."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert "set-resources" not in profile and "set-threads" not in profile
    assert not {"mem_mb", "runtime"} & set(profile.get("default-resources") or {})
