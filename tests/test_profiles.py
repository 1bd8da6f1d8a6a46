"""The shipped profiles and the paper configuration (config/paper-lsvq.yaml)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO

from pipeline.core import config as pipeline_config
from pipeline.core import resources
from pipeline.prompts.experiments import parse_selector
from pipeline.training.runs import check_experiments, experiment_training, init_model_dir

BIN = Path(sys.executable).parent
PAPER = REPO / "config" / "paper-lsvq.yaml"


def test_local_profiles_limit_gpu_jobs():
    for name in ("default", "gpu-box"):
        profile = yaml.safe_load((REPO / "profiles" / name / "config.yaml").read_text())
        resources = dict(r.split("=") for r in profile["resources"])
        assert int(resources["gpu"]) == 1, name


def test_paper_config_is_the_cross_dataset_protocol():
    cfg = pipeline_config.validate(yaml.safe_load(PAPER.read_text()), str(PAPER))
    assert cfg["models"]["preset"] == "paper" and cfg["device"] == "cuda"
    assert cfg["training"]["dtype"] == "bfloat16" and cfg["features"]["decode_workers"] == 8
    formats = {d: c["format"] for d, c in cfg["datasets"].items()}
    assert formats == {"lsvq": "lsvq", "konvid": "konvid", "live_vqc": "live_vqc", "youtube_ugc": "youtube_ugc"}
    assert [Path(p).name for p in [cfg["datasets"]["lsvq"]["labels"], *cfg["datasets"]["lsvq"]["extra_labels"]]] == [
        "LSVQ_whole_train.csv", "LSVQ_whole_test.csv", "LSVQ_whole_test_1080p.csv"]
    exp = cfg["experiments"]["lsvq_cross"]
    assert exp["train"] == ["lsvq:train"]
    assert sorted(parse_selector(s) for s in exp["test"]) == [
        ("konvid", "all"), ("live_vqc", "all"), ("lsvq", "test"), ("lsvq", "test_1080p"), ("youtube_ugc", "all")]
    # the two stages: projector with the LLM frozen, then LoRA from stage 1's projector
    stage1, stage2 = experiment_training(cfg, "lsvq_cross", 1), experiment_training(cfg, "lsvq_cross")
    assert not stage1["lora"]["enabled"] and stage2["lora"]["enabled"] and stage2["llm_lr"] > stage2["lr"]
    assert str(init_model_dir(cfg, "lsvq_cross")) == "results/models/lsvq_cross.stage1"
    # an extraction job's threads are its decode workers (pipeline/core/resources.py)
    assert resources.threads(cfg, "extract") == cfg["features"]["decode_workers"] == 8


def test_paper_intra_config_runs_every_fold_with_two_stages():
    intra = REPO / "config" / "paper-intra.yaml"
    cfg = pipeline_config.validate(yaml.safe_load(intra.read_text()), str(intra))
    check_experiments(cfg)
    exp = cfg["experiments"]["konvid_5fold"]
    assert exp["folds"] == "all" and exp["stage1"] is not None and cfg["datasets"]["konvid"]["split"]["k"] == 5
    assert str(init_model_dir(cfg, "konvid_5fold", None, 2)) == "results/models/konvid_5fold.stage1/fold2"


def test_paper_config_plans_on_the_official_label_files(tmp_path, shared_labels):
    """A dry run of the paper config with the gpu-box profile, from a folder laid out as the config's
    comments say (data/...), with the real label files (the LSVQ training list, absent from
    ../shared, stands in with the test list's rows)."""
    cfg = yaml.safe_load(PAPER.read_text())
    sources = {"KoNViD_1k_mos.csv": "KoNViD_1k_mos.csv", "LIVE-VQC_.csv": "LIVE-VQC_.csv",
               "youtube_ugc_whole.csv": "youtube_ugc_whole.csv", "LSVQ_whole_test.csv": "LSVQ_whole_test.csv",
               "LSVQ_whole_test_1080p.csv": "LSVQ_whole_test_1080p.csv", "LSVQ_whole_train.csv": "LSVQ_whole_test.csv"}
    for ds in cfg["datasets"].values():
        for label in [ds["labels"], *ds.get("extra_labels", [])]:
            (tmp_path / label).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(shared_labels / sources[Path(label).name], tmp_path / label)
        (tmp_path / ds["videos"]).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
                           "--directory", str(tmp_path), "--configfile", str(PAPER), "-n", "--quiet", "rules",
                           "--workflow-profile", str(REPO / "profiles/gpu-box")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    counts = {p[0]: int(p[1]) for p in (line.split() for line in proc.stdout.splitlines())
              if len(p) == 2 and p[1].isdigit()}
    # stage 1, then stage 2 from it; one evaluation per test selector (LSVQ's two test sets apart)
    assert counts["manifest"] == 4 and counts["train_stage1"] == 1 and counts["train"] == 1
    assert counts["evaluate"] == 5
