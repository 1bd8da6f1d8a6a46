"""The SLURM profile through the real `snakemake-executor-plugin-slurm`, against a fake SLURM on PATH
(tests/fake_slurm.py: sbatch / srun / sacct / squeue / scancel / sinfo / scontrol shims that record
their arguments and run the job)."""
from __future__ import annotations

import json
from pathlib import Path

import fake_slurm
import pytest
import yaml
from conftest import REPO

GPU_RULES = {"extract", "train", "evaluate"}  # of the rules the shared run submits (MINI: `device: auto`)


def slurm_profile() -> dict:
    return yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())


def test_profile_keeps_gpu_options_out_of_slurm_extra():
    """The plugin (>= 1.9) refuses --gres / --gpus in slurm_extra: GPUs come from the `gpu` resource."""
    import re

    from snakemake_executor_plugin_slurm.validation import get_forbidden_slurm_options

    profile = slurm_profile()
    for rule, res in (profile.get("set-resources") or {}).items():
        extra = str(res.get("slurm_extra", ""))
        for pattern, what in get_forbidden_slurm_options().items():
            assert not re.search(pattern, extra), f"{rule}: slurm_extra sets the {what}"
    assert "slurm_extra" not in (profile.get("default-resources") or {})


@pytest.fixture(scope="module")
def slurm_run(shared_run):
    """The session's small workflow run (conftest.py `shared_run`: `device: auto`, so the GPU stages ask
    for a GPU and run on the CPU here), submitted job by job through the slurm executor."""
    return shared_run.work, shared_run.state, shared_run.proc


def _submissions(state: Path) -> dict[str, list[list[str]]]:
    """rule -> sbatch argument lists (the rule is in the job comment `rule_<name>[_wildcards_...]`)."""
    by_rule: dict[str, list[list[str]]] = {}
    for argv in fake_slurm.calls(state, "sbatch"):
        comment = fake_slurm.option(argv, "--comment")
        rule = comment.removeprefix("rule_").split("_wildcards_")[0]
        by_rule.setdefault(rule, []).append(argv)
    return by_rule


@pytest.mark.slow
def test_slurm_run_completes_with_outputs(slurm_run):
    work, state, proc = slurm_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    metrics = json.loads((work / "results/eval/demo/demo/test/metrics.json").read_text())
    assert metrics["n"] >= 3 and set(metrics["methods"]) == {"text", "prob"}
    assert "<table" in (work / "results/report/index.html").read_text()
    stores = sorted(p.name for p in (work / "cache/features/demo").glob("*/shard-*.zarr"))
    assert stores == ["shard-00000.zarr", "shard-00001.zarr", "shard-00002.zarr"]
    # every job went through sbatch, and each ran its step through srun inside the job
    subs = _submissions(state)
    assert {r: len(v) for r, v in subs.items()} == {
        "demo_data_demo": 1, "manifest": 1, "prompts": 1, "tokenizer": 1, "extract": 3, "probe": 3,
        "feature_stats": 1, "train": 1, "evaluate": 1, "report": 1}
    jobs = [json.loads(p.read_text()) for p in (state / "jobs").glob("*.json")]
    assert len(jobs) == 14 and all(j["state"] == "COMPLETED" for j in jobs)
    assert len(fake_slurm.calls(state, "srun")) == 14
    assert fake_slurm.calls(state, "sacct"), "job states were queried with sacct"


def test_every_job_asks_for_its_rule_familys_resources(slurm_run):
    """Partition, memory, time, threads and GPUs of every submitted job are its rule family's
    (pipeline/core/resources.py), as `lmmvqa plan` prints them; the partition is the profile's
    partitions.yaml one with GPUs for a GPU job, the one without for the others."""
    from pipeline.core import resolve, resources
    from workflow_run import MINI

    work, state, proc = slurm_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = {f["family"]: f for f in resources.cluster_table(resolve.resolve(json.loads(json.dumps(MINI))))}
    # partitions.yaml: the one with GPUs takes the GPU jobs, the one without the others
    listed = yaml.safe_load((REPO / "profiles/slurm" / slurm_profile()["slurm-partition-config"]).read_text())
    partition = {("gpu" if (limits or {}).get("max_gpu", 0) > 0 else "cpu"): name
                 for name, limits in listed["partitions"].items()}
    subs = _submissions(state)
    for rule, argvs in subs.items():
        family = table[resources.family_of(rule)]
        assert (family["partition"] == "gpu") == (rule in GPU_RULES), rule
        for argv in argvs:
            gpus = fake_slurm.option(argv, "--gpus")
            assert fake_slurm.option(argv, "--gres") is None, (rule, argv)
            assert not any("gres" in a for a in argv), (rule, argv)
            assert gpus == (str(family["gpu"]) if family["gpu"] else None), (rule, argv)
            assert fake_slurm.option(argv, "-p") == partition[family["partition"]], (rule, argv)
            assert fake_slurm.option(argv, "--mem") == str(family["mem_mb"]), (rule, argv)
            assert fake_slurm.option(argv, "-t") == str(family["runtime"]), (rule, argv)
            assert fake_slurm.option(argv, "--cpus-per-task") == str(family["threads"]), (rule, argv)
            assert fake_slurm.option(argv, "-A") == fake_slurm.ACCOUNT
    # the job step inside each GPU job asks srun for the GPU too; CPU steps do not
    steps = fake_slurm.calls(state, "srun")
    assert sum("--gpus=1" in s for s in steps) == sum(len(subs[r]) for r in GPU_RULES)


def test_plugin_pin_is_the_tested_version():
    """pyproject.toml and environment.yml pin the plugin version these tests run against."""
    import re
    from importlib.metadata import version

    pins = [re.search(r"snakemake-executor-plugin-slurm==([0-9.*]+)", (REPO / f).read_text()).group(1)
            for f in ("pyproject.toml", "environment.yml")]
    assert pins[0] == pins[1]
    assert re.fullmatch(pins[0].replace(".", r"\.").replace("*", r"\d+"), version("snakemake-executor-plugin-slurm"))
