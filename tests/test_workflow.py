"""The Snakemake workflow end to end on a very small demo config, and what reruns when things change."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

BIN = Path(sys.executable).parent


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def planned_rules(workdir: Path) -> dict[str, int]:
    """rule -> job count of a dry run (empty when everything is up to date)."""
    out = snakemake(workdir, "-n", "--quiet", "rules").stdout
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("job", "total"):
            counts[parts[0]] = int(parts[1])
    return counts


MINI = {
    "datasets": {
        "demo": {
            "format": "generic",
            "labels": "resources/demo/labels.csv",
            "videos": "resources/demo/videos",
            "generate": {"n_videos": 10, "seed": 3},
            "split": {"scheme": "kfold", "k": 2, "seed": 0},
        }
    },
    "sampling": {"max_keyframes": 2, "max_seconds": 2},
    "features": {"shard_size": 4},
    "training": {"max_steps": 3, "batch_size": 4, "val_fraction": 0.2, "checkpoint_every": 2},
    "evaluation": {"bootstrap": 20},
    "experiments": {"demo": {"train": ["demo:train"], "test": ["demo:test"], "holdout_fold": 0}},
}


def write_config(workdir: Path, cfg: dict) -> None:
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_lint_is_clean():
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--cores", "1"], cwd=REPO,
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_bad_config_key_stops_with_its_name(tmp_path):
    bad = json.loads(json.dumps(MINI))
    bad["sampling"]["keyframe_fsp"] = 2
    write_config(tmp_path, bad)
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    assert "keyframe_fsp" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("workflow")
    write_config(work, MINI)
    snakemake(work)
    return work


def test_end_to_end_produces_report_and_metrics(demo_run):
    work = demo_run
    manifest = (work / "results/manifest/demo.csv").read_text().splitlines()
    assert len(manifest) == 1 + 10
    stores = sorted((work / "cache/features/demo").glob("*/shard-*.zarr"))
    assert [s.name for s in stores] == ["shard-00000.zarr", "shard-00001.zarr", "shard-00002.zarr"]
    metrics = json.loads((work / "results/eval/demo/demo/metrics.json").read_text())
    assert metrics["n"] >= 3 and set(metrics["methods"]) == {"text", "prob"}
    html = (work / "results/report/index.html").read_text()
    assert "demo" in html and "<table" in html
    assert (work / "results/models/demo/lmmvqa.json").exists()
    assert planned_rules(work) == {}, "a second run must have nothing to do"


def test_changing_evaluation_reruns_only_evaluation(demo_run):
    work = demo_run
    cfg = json.loads(json.dumps(MINI))
    cfg["evaluation"]["bootstrap"] = 30
    write_config(work, cfg)
    try:
        assert set(planned_rules(work)) == {"evaluate", "report", "all"}
    finally:
        write_config(work, MINI)


def test_changing_keyframe_fps_reruns_extraction_not_manifest(demo_run):
    work = demo_run
    cfg = json.loads(json.dumps(MINI))
    cfg["sampling"]["keyframe_fps"] = 2.0
    write_config(work, cfg)
    try:
        plan = planned_rules(work)
        assert plan.get("extract") == 3
        assert "manifest" not in plan and "probe" not in plan and "prompts" not in plan
        assert not any(r.startswith("demo_data") for r in plan)
    finally:
        write_config(work, MINI)


def lmmvqa(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    return subprocess.run([str(BIN / "lmmvqa"), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def test_score_command_matches_evaluation_and_reports_bad_files(demo_run, tmp_path):
    """`lmmvqa score` on dataset videos gives the scores `evaluate` gave them from cached features;
    a broken file gets an error line, the others still score, and the exit code says so."""
    import pandas as pd

    work = demo_run
    preds = pd.read_csv(work / "results/eval/demo/demo/predictions.csv", dtype={"id": str})
    manifest = pd.read_csv(work / "results/manifest/demo.csv", dtype={"id": str})
    picked = preds["id"].tolist()[:2]
    videos = [work / "resources/demo/videos" / manifest.set_index("id").loc[v, "path"] for v in picked]
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    out = tmp_path / "scores.jsonl"
    proc = lmmvqa("score", *map(str, videos), str(broken), "--model", "results/models/demo", "--out", str(out),
                  cwd=work)
    assert proc.returncode == 1, proc.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 3
    assert lines[2]["video"] == str(broken) and "error" in lines[2]
    for vid, line in zip(picked, lines[:2]):
        row = preds.set_index("id").loc[vid]
        assert line["prob_score"] == pytest.approx(row["prob_score"], abs=0.05)
        assert 0 <= line["prob_score"] <= 100
        assert line["p_good"] + line["p_fair"] + line["p_poor"] == pytest.approx(1, abs=1e-3)
        assert line["level"] == (row["level"] if isinstance(row["level"], str) else None)
        assert line["seconds"] > 0


def test_score_command_on_real_clips(demo_run, real_clips):
    proc = lmmvqa("score", str(real_clips), "--model", "results/models/demo", cwd=demo_run)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 6
    assert all("error" not in line and 0 <= line["prob_score"] <= 100 for line in lines)
