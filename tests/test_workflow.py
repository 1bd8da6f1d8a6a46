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


def test_a_users_config_replaces_the_default(tmp_path):
    """--configfile replaces config.yaml (no demo dataset inherited), and a dataset without the
    optional `generate` section validates (Snakemake's own set_default crashed on it)."""
    (tmp_path / "videos").mkdir()
    (tmp_path / "labels.csv").write_text("name,mos\na.mp4,50\n")
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({"datasets": {"mine": {
        "format": "generic", "labels": "labels.csv", "videos": "videos"}}}))
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                           str(tmp_path), "--configfile", str(tmp_path / "mine.yaml"), "-n", "--quiet", "rules"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "manifest" in proc.stdout and "demo_data" not in proc.stdout


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


def test_two_stage_experiment_runs_stage1_then_stage2(demo_run):
    """`stage1:` makes one experiment two rules: train_stage1 -> results/models/<E>.stage1, then train
    (LoRA here) continuing from it; nothing else reruns."""
    work = demo_run
    cfg = json.loads(json.dumps(MINI))
    cfg["experiments"]["two"] = {"train": ["demo:train"], "test": ["demo:test"], "stage1": {"max_steps": 2},
                                 "training": {"train_llm": False, "lora": {"enabled": True, "r": 2, "alpha": 4}}}
    write_config(work, cfg)
    try:
        out = snakemake(work, "results/models/two", "-n", "--quiet", "rules").stdout
        counts = {p[0]: int(p[1]) for p in map(str.split, out.splitlines()) if len(p) == 2 and p[1].isdigit()}
        assert {k: v for k, v in counts.items() if k not in ("job", "total")} == {"train_stage1": 1, "train": 1}
        snakemake(work, "results/models/two")
        meta = json.loads((work / "results/models/two/lmmvqa.json").read_text())
        assert meta["init_from"]["path"] == "results/models/two.stage1" and meta["llm_weights"] == "llm+adapter"
        stage1 = json.loads((work / "results/models/two.stage1/lmmvqa.json").read_text())
        assert stage1["stage"] == 1 and stage1["lora"] is None and stage1["train_summary"]["steps"] == 2
        assert "Nothing to be done" in snakemake(work, "-n", "results/models/two").stdout
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


def _store_state(work: Path, dataset: str) -> dict[str, tuple[int, str]]:
    """shard store name -> (newest mtime_ns of its files, hash of all its bytes)."""
    import hashlib

    state = {}
    for store in sorted((work / "cache/features" / dataset).glob("*/shard-*.zarr")):
        files = sorted(f for f in store.rglob("*") if f.is_file())
        digest = hashlib.sha256(b"".join(f.relative_to(store).as_posix().encode() + f.read_bytes() for f in files))
        state[store.name] = (max(f.stat().st_mtime_ns for f in files), digest.hexdigest())
    return state


def test_additions_touch_only_their_shards(demo_run, tmp_path):
    """Appending videos rewrites only the shards they land in; a new dataset only adds its own."""
    import pandas as pd

    source = pd.read_csv(demo_run / "resources/demo/labels.csv").sort_values("name")
    src_dir = demo_run / "resources/demo/videos"

    def add_videos(dataset: str, rows: pd.DataFrame) -> None:
        folder = tmp_path / dataset / "videos"
        folder.mkdir(parents=True, exist_ok=True)
        for name in rows["name"]:
            shutil.copy(src_dir / name, folder / name)
        labels = tmp_path / dataset / "labels.csv"
        old = pd.read_csv(labels) if labels.exists() else None
        pd.concat([old, rows[["name", "mos"]]]).to_csv(labels, index=False)

    def config(datasets):
        cfg = {k: v for k, v in MINI.items() if k not in ("datasets", "experiments")}
        cfg["datasets"] = {d: {"format": "generic", "labels": f"{d}/labels.csv", "videos": f"{d}/videos",
                               "split": {"scheme": "kfold", "k": 2, "seed": 0}} for d in datasets}
        write_config(tmp_path, cfg)

    assert len(source) == 10  # the MINI demo set; shard size 4
    add_videos("extra", source.iloc[:6])
    config(["extra"])
    snakemake(tmp_path, "results/stats/extra.json")
    first = _store_state(tmp_path, "extra")
    assert list(first) == ["shard-00000.zarr", "shard-00001.zarr"]

    add_videos("extra", source.iloc[6:10])  # rows 6-7 land in shard 1, rows 8-9 open shard 2
    snakemake(tmp_path, "results/stats/extra.json")
    second = _store_state(tmp_path, "extra")
    assert list(second) == [*first, "shard-00002.zarr"]
    assert second["shard-00000.zarr"] == first["shard-00000.zarr"]
    assert second["shard-00001.zarr"] != first["shard-00001.zarr"]
    stats = json.loads((tmp_path / "results/stats/extra.json").read_text())
    assert stats["videos"] == 10 and stats["failures"] == 0

    # a video of shard 0 replaced in place by another clip under the same name: only shard 0 reruns
    replaced = tmp_path / "extra/videos" / source["name"].iloc[1]
    with open(replaced, "wb") as fh:
        fh.write((src_dir / source["name"].iloc[9]).read_bytes())
    snakemake(tmp_path, "results/stats/extra.json")
    third = _store_state(tmp_path, "extra")
    assert third["shard-00000.zarr"] != second["shard-00000.zarr"]
    assert {k: v for k, v in third.items() if k != "shard-00000.zarr"} == {
        k: v for k, v in second.items() if k != "shard-00000.zarr"}
    second = third

    add_videos("more", source.iloc[:3])
    config(["extra", "more"])
    snakemake(tmp_path, "results/stats/extra.json", "results/stats/more.json")
    assert _store_state(tmp_path, "extra") == second
    assert list(_store_state(tmp_path, "more")) == ["shard-00000.zarr"]


def test_changing_the_prompt_bank_reruns_prompts_to_evaluation_not_features(demo_run):
    from pipeline.prompts.shards import BANK_PATH

    work = demo_run
    bank = yaml.safe_load(BANK_PATH.read_text())
    bank["score"][0] = bank["score"][0].replace("What is the quality score", "What quality score has")
    (work / "bank.yaml").write_text(yaml.safe_dump(bank))
    cfg = json.loads(json.dumps(MINI))
    cfg["prompts"] = {"templates": "bank.yaml"}
    write_config(work, cfg)
    try:
        plan = planned_rules(work)
        assert set(plan) == {"prompts", "tokenizer", "train", "evaluate", "report", "all"}, plan
    finally:
        write_config(work, MINI)


def _small_dataset(work: Path, demo: Path, n: int) -> None:
    import pandas as pd

    rows = pd.read_csv(demo / "resources/demo/labels.csv").sort_values("name").iloc[:n]
    (work / "small/videos").mkdir(parents=True)
    for name in rows["name"]:
        shutil.copy(demo / "resources/demo/videos" / name, work / "small/videos" / name)
    rows[["name", "mos"]].to_csv(work / "small/labels.csv", index=False)
    cfg = {k: v for k, v in MINI.items() if k not in ("datasets", "experiments")}
    cfg["datasets"] = {"small": {"format": "generic", "labels": "small/labels.csv", "videos": "small/videos",
                                 "split": {"scheme": "kfold", "k": 2, "seed": 0}}}
    write_config(work, cfg)


def test_local_cluster_profile_and_the_lock(demo_run, tmp_path):
    """Jobs go through the cluster-generic executor (submit.sh backgrounds them); a second run on the
    same directory while the first holds the lock is refused and does no harm."""
    import time

    _small_dataset(tmp_path, demo_run, 6)
    (tmp_path / "profiles").symlink_to(REPO / "profiles")  # the profile's scripts are relative paths
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(tmp_path / "config.yaml"), "--workflow-profile", str(REPO / "profiles/local-cluster"),
           "results/stats/small.json"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 120
    while not list((tmp_path / ".snakemake/locks").glob("*")) and time.time() < deadline:
        time.sleep(0.2)
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out[-5000:]
    assert second.returncode != 0 and "lock" in (second.stdout + second.stderr).lower()
    jobs = list((tmp_path / ".snakemake/local-cluster").glob("*.rc"))
    assert len(jobs) >= 4 and all(j.read_text().strip() == "0" for j in jobs)  # manifest, probe, extract, stats
    stats = json.loads((tmp_path / "results/stats/small.json").read_text())
    assert stats["videos"] == 6 and stats["stores"] == 2


def test_killed_run_resumes_to_identical_results(demo_run, tmp_path):
    """kill -9 of the whole run during extraction, again during training (after its first checkpoint)
    and again during evaluation, each followed by `--unlock` and a plain rerun (the default profile has
    --rerun-incomplete): manifests, prompts, feature arrays and metrics equal the uninterrupted run."""
    import signal
    import time

    import numpy as np

    from pipeline.features.store_reader import DatasetFeatures

    write_config(tmp_path, MINI)
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(tmp_path / "config.yaml"), "--cores", "2"]
    signs = {  # files that appear once a stage's job is under way
        "extract": (tmp_path / "results/logs/extract", "*.log"),
        "train": (tmp_path / "cache/checkpoints/demo", "step-*"),
        "evaluate": (tmp_path / "results/logs/evaluate", "*.log"),
    }

    def started(stage, since):
        folder, pattern = signs[stage]
        return any(p.stat().st_mtime > since for p in folder.rglob(pattern)) if folder.is_dir() else False

    killed = []
    for stage in signs:
        since = time.time() - 0.01
        run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                               start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline and run.poll() is None and not started(stage, since):
            time.sleep(0.05)
        if run.poll() is None:
            time.sleep(0.5 if stage == "extract" else 0.0)
            os.killpg(run.pid, signal.SIGKILL)
            killed.append(stage)
        run.wait()
        if (tmp_path / "results/eval/demo/demo/metrics.json").exists():
            break
        refused = snakemake(tmp_path, check=False)  # kill -9 leaves Snakemake's lock behind
        assert refused.returncode != 0 and "--unlock" in refused.stdout + refused.stderr
        snakemake(tmp_path, "--unlock")
    assert killed[:1] == ["extract"], killed
    snakemake(tmp_path)
    for rel in ("results/manifest/demo.csv", "results/prompts/demo/fold0.jsonl", "results/prompts/demo/fold1.jsonl"):
        assert (tmp_path / rel).read_bytes() == (demo_run / rel).read_bytes(), rel
    stores = lambda w: sorted((w / "cache/features/demo").glob("*/shard-*.zarr"))  # noqa: E731
    assert [s.name for s in stores(tmp_path)] == [s.name for s in stores(demo_run)]
    a, b = DatasetFeatures(stores(tmp_path)), DatasetFeatures(stores(demo_run))
    assert a.ids == b.ids
    for vid in a.ids:
        np.testing.assert_array_equal(a.spatial(vid), b.spatial(vid))
        np.testing.assert_array_equal(a.motion(vid), b.motion(vid))
    m1 = json.loads((tmp_path / "results/eval/demo/demo/metrics.json").read_text())
    m2 = json.loads((demo_run / "results/eval/demo/demo/metrics.json").read_text())
    assert m1["methods"] == m2["methods"] and m1["level"] == m2["level"]


BAD_LABELS = {
    "text MOS": ("name,mos\na.mp4,50\nb.mp4,not-a-number\nc.mp4,40\n", ["row 2", "not-a-number"]),
    "empty MOS": ("name,mos\na.mp4,50\nb.mp4,\n", ["row 2", "empty"]),
    "missing column": ("name,score\na.mp4,50\n", ["missing label column 'mos'"]),
    "duplicate id": ("name,mos\na.mp4,50\na.mp4,40\n", ["row 2", "duplicate id 'a'"]),
    "empty file": ("", ["empty label file"]),
    "path escaping the videos folder": ("name,mos\n../a.mp4,50\n", ["row 1", "escapes the videos folder"]),
}


@pytest.mark.parametrize("case", list(BAD_LABELS))
def test_bad_labels_stop_the_workflow_naming_file_and_row(tmp_path, case):
    text, expected = BAD_LABELS[case]
    (tmp_path / "videos").mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        (tmp_path / "videos" / name).write_bytes(b"placeholder")
    (tmp_path / "labels.csv").write_text(text)
    write_config(tmp_path, {"datasets": {"bad": {"format": "generic", "labels": "labels.csv", "videos": "videos"}}})
    proc = snakemake(tmp_path, "results/manifest/bad.csv", check=False)
    assert proc.returncode != 0
    log = (tmp_path / "results/logs/manifest/bad.log").read_text()
    assert "labels.csv" in log and all(e in log for e in expected), log
    assert not (tmp_path / "results/manifest/bad.csv").exists()


def test_a_wrong_format_name_stops_before_any_job(tmp_path):
    write_config(tmp_path, {"datasets": {"bad": {"format": "konvidd", "labels": "labels.csv"}}})
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0 and "konvidd" in proc.stdout + proc.stderr


def test_every_fold_experiment_trains_one_model_per_fold_and_aggregates(demo_run, tmp_path):
    """`folds: all` on the 10-video demo (k=2): one train and one evaluate job per fold, per-fold
    metrics, and the aggregate (each fold, mean / std / median) in metrics.json, the experiment table
    and the report. Runs in a copy of the demo run, so features, prompts and tokenizer are reused."""
    import numpy as np
    import pandas as pd

    work = tmp_path / "w"
    shutil.copytree(demo_run, work, symlinks=True, ignore=shutil.ignore_patterns("locks", "results/eval"))
    cfg = json.loads(json.dumps(MINI))
    cfg["experiments"] = {"cv": {"train": ["demo:train"], "test": ["demo:test"], "folds": "all"}}
    write_config(work, cfg)
    plan = planned_rules(work)
    assert {r: plan.get(r) for r in ("train_fold", "evaluate_fold", "aggregate", "train", "evaluate", "extract")} == {
        "train_fold": 2, "evaluate_fold": 2, "aggregate": 1, "train": None, "evaluate": None, "extract": None}, plan
    snakemake(work)
    manifest = pd.read_csv(work / "results/manifest/demo.csv", dtype={"id": str})
    per_fold = []
    for f in (0, 1):
        model = work / f"results/models/cv/fold{f}"
        assert (model / "lmmvqa.json").exists()
        assert f"holdout fold {f} never used" in (model / "README.md").read_text()
        m = json.loads((work / f"results/eval/cv/fold{f}/demo/metrics.json").read_text())
        preds = pd.read_csv(work / f"results/eval/cv/fold{f}/demo/predictions.csv", dtype={"id": str})
        assert m["fold"] == f and sorted(preds["id"]) == sorted(manifest.loc[manifest["fold"] == f, "id"])
        per_fold.append(m)
    agg = json.loads((work / "results/eval/cv/demo/metrics.json").read_text())
    assert agg["folds"] == 2 and agg["n"] == 10 and [c["fold"] for c in agg["fold_metrics"]] == [0, 1]
    for method in ("prob", "text"):
        values = [m["methods"][method]["srcc"] for m in per_fold]
        a = agg["aggregate"][method]["srcc"]
        assert a["values"] == values
        ok = [v for v in values if v is not None]
        if ok:
            assert a["mean"] == pytest.approx(np.mean(ok)) and a["median"] == pytest.approx(np.median(ok))
            assert agg["methods"][method]["srcc"] == pytest.approx(np.mean(ok))
        if len(ok) == 2:
            assert a["std"] == pytest.approx(np.std(ok, ddof=1))
    assert agg["invalid"] == sum(m["invalid"] for m in per_fold)
    pooled = pd.read_csv(work / "results/eval/cv/demo/predictions.csv", dtype={"id": str})
    assert len(pooled) == 10 and sorted(set(pooled["fold"])) == [0, 1]
    table = pd.read_csv(work / "results/eval/cv/table.csv", dtype={"fold": str})
    assert table["fold"].tolist() == ["0", "1", "mean", "std", "median"]
    html = (work / "results/report/index.html").read_text()
    assert 'data-fold-experiment="cv"' in html and 'data-summary-exp="cv"' in html
    assert (work / "results/eval/summary.csv").exists()
    assert planned_rules(work) == {}, "a second run must have nothing to do"


def test_ensemble_members_are_jobs_and_evaluation_averages_them(demo_run, tmp_path):
    """`ensemble: 2`: the experiment's own model and `<E>.member1` (seed + 1) are two training jobs (per
    fold for `folds: all`), and the evaluation scores with both."""
    work = tmp_path / "w"
    shutil.copytree(demo_run, work, symlinks=True, ignore=shutil.ignore_patterns("locks", "results/eval"))
    cfg = json.loads(json.dumps(MINI))
    cfg["experiments"] = {"ens": {"train": ["demo:train"], "test": ["demo:test"], "ensemble": 2},
                          "cvens": {"train": ["demo:train"], "test": ["demo:test"], "folds": "all", "ensemble": 2}}
    write_config(work, cfg)
    plan = planned_rules(work)
    assert {r: plan.get(r) for r in ("train", "train_member", "train_fold", "train_fold_member", "evaluate",
                                     "evaluate_fold")} == {"train": 1, "train_member": 1, "train_fold": 2,
                                                           "train_fold_member": 2, "evaluate": 1, "evaluate_fold": 2}
    cfg["experiments"].pop("cvens")
    write_config(work, cfg)
    snakemake(work)
    own = json.loads((work / "results/models/ens/lmmvqa.json").read_text())
    member = json.loads((work / "results/models/ens.member1/lmmvqa.json").read_text())
    assert (own["training"]["seed"], member["training"]["seed"]) == (0, 1)
    metrics = json.loads((work / "results/eval/ens/demo/metrics.json").read_text())
    assert metrics["ensemble"] == 2
    assert planned_rules(work) == {}
