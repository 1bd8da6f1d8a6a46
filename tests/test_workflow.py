"""The Snakemake workflow end to end on a very small demo config (tests/workflow_run.py `MINI`, run once
per session), and what reruns when things change."""
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
from workflow_run import BIN, MINI, planned_rules, snakemake, write_config


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


def test_two_configs_naming_one_experiment_stop_at_parse_time(tmp_path):
    """A second config file whose experiment name already holds the first one's results stops before
    any job, naming both files; the first file, edited (an evaluation key), still plans its run."""
    (tmp_path / "videos").mkdir()
    (tmp_path / "labels.csv").write_text("name,mos\na.mp4,50\n")
    mine = {"datasets": {"mine": {"format": "generic", "labels": "labels.csv", "videos": "videos"}},
            "experiments": {"loso": {"train": ["mine:train"], "test": ["mine:test"]}}}
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")

    def dry_run(name: str, cfg: dict) -> subprocess.CompletedProcess:
        (tmp_path / name).write_text(yaml.safe_dump(cfg))
        return subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                               str(tmp_path), "--configfile", str(tmp_path / name), "-n", "--quiet", "rules"],
                              capture_output=True, text=True, env=env, timeout=300)

    first = dry_run("plain.yaml", mine)
    assert first.returncode == 0, first.stdout + first.stderr
    (tmp_path / "results/models/loso").mkdir(parents=True)  # what plain.yaml's run leaves: its model
    second = dry_run("quality.yaml", mine)
    assert second.returncode != 0
    said = second.stdout + second.stderr
    assert ("experiment 'loso' already holds the results of config plain.yaml" in said
            and "this run's config quality.yaml names the same experiment" in said), said
    edited = dry_run("plain.yaml", {**mine, "evaluation": {"bootstrap": 10}})
    assert edited.returncode == 0, edited.stdout + edited.stderr
    renamed = dry_run("quality.yaml", {**mine, "experiments": {"loso-quality": mine["experiments"]["loso"]}})
    assert renamed.returncode == 0, renamed.stdout + renamed.stderr


@pytest.fixture(scope="module")
def demo_run(shared_run):
    """The session's run of MINI (conftest.py `shared_run`, every job through the SLURM profile); the
    tests here read its outputs and run Snakemake on it locally (the default profile)."""
    proc = shared_run.proc
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return shared_run.work


@pytest.fixture
def demo_copy(demo_run, tmp_path):
    """A copy of the session's run for a test that edits its config or adds outputs: the run itself is
    read by tests that may be running at the same time on other pytest-xdist workers."""
    work = tmp_path / "w"
    shutil.copytree(demo_run, work, symlinks=True, ignore=shutil.ignore_patterns("locks"))
    return work


def test_end_to_end_produces_report_and_metrics(demo_run):
    work = demo_run
    manifest = (work / "results/manifest/demo.csv").read_text().splitlines()
    assert len(manifest) == 1 + 10
    stores = sorted((work / "cache/features/demo").glob("*/shard-*.zarr"))
    assert [s.name for s in stores] == ["shard-00000.zarr", "shard-00001.zarr", "shard-00002.zarr"]
    metrics = json.loads((work / "results/eval/demo/demo/test/metrics.json").read_text())
    assert metrics["n"] >= 3 and set(metrics["methods"]) == {"text", "prob"}
    html = (work / "results/report/index.html").read_text()
    assert "demo" in html and "<table" in html
    assert (work / "results/models/demo/lmmvqa.json").exists()
    assert planned_rules(work) == {}, "a second run must have nothing to do"


MOBILENET = ("MobileNetV2 (mean and std of every channel of blocks 1, 3, 6, 13, 17: whole frame + 3 x 3 cells): "
             "ImageNet-1k (torchvision MobileNet_V2_Weights.IMAGENET1K_V1) weights, file ")
MOBILENET_SHA = "sha256 b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
TEMPORAL = "temporal statistics (frame-difference statistics of each one-second chunk): no weights (parameter-free, computed)"
SCRATCH = "Llama-architecture LLM (width 192, 2 layers): trained from scratch here (random init from the preset's config (seed 0))"


def test_report_and_model_card_say_what_the_default_preset_loaded(demo_run):
    """The default (`offline`) preset's roles, in the report's Models table and the model card: ImageNet
    MobileNetV2 with its weight file and sha256, parameter-free temporal statistics, an LLM trained from
    scratch; the store attributes and lmmvqa.json hold the records they are written from."""
    import html as html_lib

    work = demo_run
    page = html_lib.unescape((work / "results/report/index.html").read_text())
    card = (work / "results/models/demo/README.md").read_text()
    for text in (page, card):
        assert MOBILENET in text and MOBILENET_SHA in text and "mobilenet_v2-b0353104.pth" in text
        assert TEMPORAL in text and SCRATCH in text
        assert "random init (offline preset)" not in text
    assert "CLIP" not in card and "SlowFast" not in card
    assert "- preset `offline`" in card and "(holdout fold 0 never used: demo)" in card
    meta = json.loads((work / "results/models/demo/lmmvqa.json").read_text())
    assert meta["provenance"]["vision"]["weights"]["sha256"] == MOBILENET_SHA.split()[1]
    assert meta["provenance"]["motion"]["weights"] == {"kind": "none"}
    assert meta["provenance"]["llm"]["trained"] == "all" and meta["provenance"]["llm"]["weights"]["kind"] == "random_init"
    store = next((work / "cache/features/demo").glob("*/shard-00000.zarr"))
    attrs = json.loads((store / "zarr.json").read_text())["attributes"]
    assert attrs["vision"]["arch"] == "mobilenet_v2" and attrs["vision"]["weights"] == meta["provenance"]["vision"]["weights"]
    assert attrs["motion"]["arch"] == "temporal_stats"


def test_changing_evaluation_reruns_only_evaluation(demo_copy):
    work = demo_copy
    cfg = json.loads(json.dumps(MINI))
    cfg["evaluation"]["bootstrap"] = 30
    write_config(work, cfg)
    assert set(planned_rules(work)) == {"evaluate", "report", "all"}


@pytest.mark.slow
def test_two_stage_experiment_runs_stage1_then_stage2(demo_copy):
    """`stage1:` makes one experiment two rules: train_stage1 -> results/models/<E>.stage1, then train
    (LoRA here) continuing from it; nothing else reruns."""
    work = demo_copy
    cfg = json.loads(json.dumps(MINI))
    cfg["experiments"]["two"] = {"train": ["demo:train"], "test": ["demo:test"], "stage1": {"max_steps": 2},
                                 "training": {"train_llm": False, "lora": {"enabled": True, "r": 2, "alpha": 4}}}
    write_config(work, cfg)
    out = snakemake(work, "results/models/two", "-n", "--quiet", "rules").stdout
    counts = {p[0]: int(p[1]) for p in map(str.split, out.splitlines()) if len(p) == 2 and p[1].isdigit()}
    assert {k: v for k, v in counts.items() if k not in ("job", "total")} == {"train_stage1": 1, "train": 1}
    snakemake(work, "results/models/two")
    meta = json.loads((work / "results/models/two/lmmvqa.json").read_text())
    assert meta["init_from"]["path"] == "results/models/two.stage1" and meta["llm_weights"] == "llm+adapter"
    stage1 = json.loads((work / "results/models/two.stage1/lmmvqa.json").read_text())
    assert stage1["stage"] == 1 and stage1["lora"] is None and stage1["train_summary"]["steps"] == 2
    assert "Nothing to be done" in snakemake(work, "-n", "results/models/two").stdout


def test_changing_keyframe_fps_reruns_extraction_not_manifest(demo_copy):
    work = demo_copy
    cfg = json.loads(json.dumps(MINI))
    cfg["sampling"]["keyframe_fps"] = 2.0
    write_config(work, cfg)
    plan = planned_rules(work)
    assert plan.get("extract") == 3
    assert "manifest" not in plan and "probe" not in plan and "prompts" not in plan
    assert not any(r.startswith("demo_data") for r in plan)
    # a store path of another feature hash (the old settings', a mistyped one) has no rule: extraction
    # under this config would write its features into a folder named for other settings
    from pipeline.core import resolve
    from pipeline.core.config import load_config

    new = resolve.of(load_config(str(work / "config.yaml"))).features.hash
    old = resolve.of(load_config(str(work / "config.yaml"), {"sampling": {"keyframe_fps": 1.0}})).features.hash
    assert new != old
    refused = snakemake(work, "-n", f"cache/features/demo/{old}/shard-00000.zarr", check=False)
    assert refused.returncode != 0 and "MissingRuleException" in refused.stdout + refused.stderr
    assert snakemake(work, "-n", f"cache/features/demo/{new}/shard-00000.zarr").returncode == 0


def lmmvqa(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    return subprocess.run([str(BIN / "lmmvqa"), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def test_score_command_matches_evaluation_and_reports_bad_files(demo_run, tmp_path):
    """`lmmvqa score` on dataset videos gives the scores `evaluate` gave them from cached features;
    a broken file gets an error line, the others still score, and the exit code says so."""
    import pandas as pd

    work = demo_run
    preds = pd.read_csv(work / "results/eval/demo/demo/test/predictions.csv", dtype={"id": str})
    manifest = pd.read_csv(work / "results/manifest/demo.csv", dtype={"id": str})
    picked = preds["id"].tolist()[:2]
    videos = [work / "resources/demo/videos" / manifest.set_index("id").loc[v, "path"] for v in picked]
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    out = tmp_path / "scores.jsonl"
    proc = lmmvqa("score", *map(str, videos), str(broken), "--model", "results/models/demo", "--out", str(out),
                  cwd=work)
    assert proc.returncode == 1, proc.stderr
    assert "lmmvqa score: model results/models/demo (preset offline, experiment demo)" in proc.stderr
    assert f"  vision: {MOBILENET}" in proc.stderr and f"  motion: {TEMPORAL}" in proc.stderr
    assert f"  llm: {SCRATCH}" in proc.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 3
    assert lines[2]["video"] == str(broken) and "error" in lines[2]
    for vid, line in zip(picked, lines[:2]):
        row = preds.set_index("id").loc[vid]
        # same features (rounded as stored), same questions (templates drawn per video id): same score
        assert line["prob_score"] == pytest.approx(row["prob_score"], abs=1e-3)
        assert 0 <= line["prob_score"] <= 100
        assert line["p_good"] + line["p_fair"] + line["p_poor"] == pytest.approx(1, abs=1e-3)
        assert line["level"] == (row["level"] if isinstance(row["level"], str) else None)
        assert line["seconds"] > 0


def test_score_without_a_model_uses_the_configs_experiment(demo_run):
    """No --model: the model of the working directory's config.yaml's first experiment, and what it is
    worth (its held-out figures) on stderr."""
    import pandas as pd

    manifest = pd.read_csv(demo_run / "results/manifest/demo.csv", dtype={"id": str})
    video = demo_run / "resources/demo/videos" / manifest["path"].iloc[0]
    proc = lmmvqa("score", str(video), cwd=demo_run)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((demo_run / "results/eval/demo/demo/test/metrics.json").read_text())
    srcc = metrics["methods"]["prob"]["srcc"]
    worth = "n/a" if srcc is None else f"{srcc:.3f}"
    assert f"model results/models/demo (experiment 'demo'" in proc.stderr
    assert f"demo:test: prob SRCC {worth} (n={metrics['n']})" in proc.stderr
    assert 0 <= json.loads(proc.stdout)["prob_score"] <= 100


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


@pytest.mark.slow
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


def test_changing_the_prompt_bank_reruns_prompts_to_evaluation_not_features(demo_copy):
    from pipeline.prompts.shards import BANK_PATH

    work = demo_copy
    bank = yaml.safe_load(BANK_PATH.read_text())
    bank["score"][0] = bank["score"][0].replace("What is the quality score", "What quality score has")
    (work / "bank.yaml").write_text(yaml.safe_dump(bank))
    cfg = json.loads(json.dumps(MINI))
    cfg["prompts"] = {"templates": "bank.yaml"}
    write_config(work, cfg)
    plan = planned_rules(work)
    assert set(plan) == {"prompts", "tokenizer", "train", "evaluate", "report", "all"}, plan


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_killed_run_resumes_to_identical_results(request, tmp_path):
    """kill -9 of the whole run during extraction, again during training (after its first checkpoint)
    and again during evaluation, each followed by `--unlock` and a plain rerun (the default profile has
    --rerun-incomplete): manifests, prompts, feature arrays and metrics equal the uninterrupted run."""
    import signal
    import time

    import numpy as np

    from pipeline.features.stores.store_reader import DatasetFeatures

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
        if (tmp_path / "results/eval/demo/demo/test/metrics.json").exists():
            break
        refused = snakemake(tmp_path, check=False)  # kill -9 leaves Snakemake's lock behind
        assert refused.returncode != 0 and "--unlock" in refused.stdout + refused.stderr
        snakemake(tmp_path, "--unlock")
    assert killed[:1] == ["extract"], killed
    snakemake(tmp_path)
    demo_run = request.getfixturevalue("demo_run")  # asked for only now, so this test starts without waiting for it
    for rel in ("results/manifest/demo.csv", "results/prompts/demo/fold0.jsonl", "results/prompts/demo/fold1.jsonl"):
        assert (tmp_path / rel).read_bytes() == (demo_run / rel).read_bytes(), rel
    stores = lambda w: sorted((w / "cache/features/demo").glob("*/shard-*.zarr"))  # noqa: E731
    assert [s.name for s in stores(tmp_path)] == [s.name for s in stores(demo_run)]
    a, b = DatasetFeatures(stores(tmp_path)), DatasetFeatures(stores(demo_run))
    assert a.ids == b.ids
    for vid in a.ids:
        np.testing.assert_array_equal(a.spatial(vid), b.spatial(vid))
        np.testing.assert_array_equal(a.motion(vid), b.motion(vid))
    m1 = json.loads((tmp_path / "results/eval/demo/demo/test/metrics.json").read_text())
    m2 = json.loads((demo_run / "results/eval/demo/demo/test/metrics.json").read_text())
    assert m1["methods"] == m2["methods"] and m1["level"] == m2["level"]


BAD_LABELS = {
    "text MOS": ("name,mos\na.mp4,50\nb.mp4,not-a-number\nc.mp4,40\n", ["row 2", "not-a-number"]),
    "empty MOS": ("name,mos\na.mp4,50\nb.mp4,\n", ["row 2", "empty"]),
    "missing column": ("name,score\na.mp4,50\n", ["missing label column 'mos'"]),
    "duplicate id": ("name,mos\na.mp4,50\na.mp4,40\n", ["row 2", "duplicate id 'a'"]),
    "empty file": ("", ["empty label file"]),
    "path escaping the videos folder": ("name,mos\n../a.mp4,50\n", ["row 1", "escapes the videos folder"]),
}


@pytest.fixture(scope="module")
def bad_labels_run(tmp_path_factory):
    """Every bad label file as a dataset of its own, all manifests asked for in one Snakemake run
    (--keep-going: each manifest job fails on its own)."""
    work = tmp_path_factory.mktemp("bad-labels")
    (work / "videos").mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        (work / "videos" / name).write_bytes(b"placeholder")
    datasets = {}
    for i, (text, _) in enumerate(BAD_LABELS.values()):
        (work / f"labels{i}.csv").write_text(text)
        datasets[f"bad{i}"] = {"format": "generic", "labels": f"labels{i}.csv", "videos": "videos"}
    write_config(work, {"datasets": datasets})
    proc = snakemake(work, "--keep-going", *[f"results/manifest/{d}.csv" for d in datasets], check=False)
    return work, proc


@pytest.mark.parametrize("case", list(BAD_LABELS))
def test_bad_labels_stop_the_workflow_naming_file_and_row(bad_labels_run, case):
    work, proc = bad_labels_run
    i = list(BAD_LABELS).index(case)
    _, expected = BAD_LABELS[case]
    assert proc.returncode != 0
    log = (work / f"results/logs/manifest/bad{i}.log").read_text()
    assert f"labels{i}.csv" in log and all(e in log for e in expected), log
    assert not (work / f"results/manifest/bad{i}.csv").exists()


def test_a_wrong_format_name_stops_before_any_job(tmp_path):
    write_config(tmp_path, {"datasets": {"bad": {"format": "konvidd", "labels": "labels.csv"}}})
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0 and "konvidd" in proc.stdout + proc.stderr


@pytest.mark.parametrize("key", ["labels", "videos"])
def test_absent_development_data_stops_with_one_line_naming_the_folder(tmp_path, key):
    """A config reading `../shared` (the development data beside the repository) in a clone without that
    folder: the dry run stops before any job with one line (no traceback) naming the dataset, the key,
    the path and what `../shared` is; `lmmvqa manifest` by hand on the same files says the same."""
    work = tmp_path / "clone"
    (work / "mine" / "videos").mkdir(parents=True)
    (work / "mine" / "labels.csv").write_text("name,mos\na.mp4,50\n")
    assert not (tmp_path / "shared").exists()
    absent = "../shared/datasets/realset-dev/" + ("labels.csv" if key == "labels" else "videos")
    ds = {"format": "generic", "labels": "mine/labels.csv", "videos": "mine/videos", key: absent}
    write_config(work, {"datasets": {"realset-dev": ds},
                        "experiments": {"e": {"train": ["realset-dev:train"], "test": ["realset-dev:test"]}}})
    proc = snakemake(work, "-n", check=False)
    said = proc.stdout + proc.stderr
    expected = (f"{key} not found: {absent}; ../shared is the development data folder kept beside the repository, "
                "absent in a user's clone: point the dataset at files of your own, see docs/development-data.md")
    assert proc.returncode == 1 and [line for line in said.splitlines() if absent in line] == [
        f"Error: dataset 'realset-dev': {expected}"], said
    assert "Traceback" not in said and 'File "' not in said and "Missing input files" not in said
    assert not (work / "results" / "manifest").exists()
    by_hand = lmmvqa("manifest", "--format", "generic", "--labels", ds["labels"], "--videos", ds["videos"],
                     "--out", "m.csv", cwd=work)
    assert by_hand.returncode != 0 and by_hand.stderr.strip() == f"lmmvqa manifest: error: {expected}"


@pytest.mark.slow
def test_every_fold_experiment_trains_one_model_per_fold_and_aggregates(demo_copy):
    """`folds: all` on the 10-video demo (k=2): one train and one evaluate job per fold, per-fold
    metrics, and the aggregate (each fold, mean / std / median) in metrics.json, the experiment table
    and the report. Runs in a copy of the session's run, so features, prompts and tokenizer are reused."""
    import numpy as np
    import pandas as pd

    work = demo_copy
    cfg = json.loads(json.dumps(MINI))
    cfg["experiments"] = {"cv": {"train": ["demo:train"], "test": ["demo:test"], "folds": "all"}}
    write_config(work, cfg)
    plan = planned_rules(work)
    rules = ("train_fold", "train_all", "evaluate_fold", "aggregate", "train", "evaluate", "extract")
    assert {r: plan.get(r) for r in rules} == {"train_fold": 2, "train_all": 1, "evaluate_fold": 2, "aggregate": 1,
                                               "train": None, "evaluate": None, "extract": None}, plan
    snakemake(work)
    manifest = pd.read_csv(work / "results/manifest/demo.csv", dtype={"id": str})
    per_fold = []
    for f in (0, 1):
        model = work / f"results/models/cv/fold{f}"
        assert (model / "lmmvqa.json").exists()
        assert f"holdout fold {f} never used" in (model / "README.md").read_text()
        m = json.loads((work / f"results/eval/cv/fold{f}/demo/test/metrics.json").read_text())
        preds = pd.read_csv(work / f"results/eval/cv/fold{f}/demo/test/predictions.csv", dtype={"id": str})
        assert m["fold"] == f and sorted(preds["id"]) == sorted(manifest.loc[manifest["fold"] == f, "id"])
        per_fold.append(m)
    agg = json.loads((work / "results/eval/cv/demo/test/metrics.json").read_text())
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
    pooled = pd.read_csv(work / "results/eval/cv/demo/test/predictions.csv", dtype={"id": str})
    assert len(pooled) == 10 and sorted(set(pooled["fold"])) == [0, 1]
    # the model to ship: trained on every fold (all 10 videos, nothing held out), and said so
    shipped = json.loads((work / "results/models/cv/all/lmmvqa.json").read_text())
    assert shipped["train_summary"]["n_train_videos"] + shipped["validation"]["n_videos"] == 10
    assert "every fold: nothing held out" in (work / "results/models/cv/all/README.md").read_text()
    table = pd.read_csv(work / "results/eval/cv/table.csv", dtype={"fold": str})
    assert table["fold"].tolist() == ["0", "1", "mean", "std", "median"]
    html = (work / "results/report/index.html").read_text()
    assert 'data-fold-experiment="cv"' in html and 'data-summary-exp="cv"' in html
    assert 'data-shipped="cv"><code>results/models/cv/all</code>' in html
    assert (work / "results/eval/summary.csv").exists()
    assert planned_rules(work) == {}, "a second run must have nothing to do"
    # with a stage 1: one per fold and one on every fold, each stage 2 after its own stage 1
    cfg["experiments"]["cv"]["stage1"] = {"max_steps": 1}
    write_config(work, cfg)
    plan = planned_rules(work)
    assert {r: plan.get(r) for r in ("train_stage1_fold", "train_stage1_all", "train_fold", "train_all")} == {
        "train_stage1_fold": 2, "train_stage1_all": 1, "train_fold": 2, "train_all": 1}, plan


@pytest.mark.slow
def test_two_test_sets_of_one_dataset_are_evaluated_and_reported_apart(demo_run, tmp_path):
    """A dataset with official splits (as LSVQ's test and test_1080p): an experiment testing on two of
    them gets two metrics files and two report rows / sections, each over its own videos only, with
    numbers equal to a recomputation from its predictions with scipy (not the package's metrics)."""
    import re

    import numpy as np
    import pandas as pd
    from scipy import stats

    labels = pd.read_csv(demo_run / "resources/demo/labels.csv").sort_values("name").iloc[:10]
    labels["split"] = ["train"] * 4 + ["test"] * 3 + ["test_b"] * 3
    (tmp_path / "videos").symlink_to(demo_run / "resources/demo/videos")
    labels[["name", "mos", "split"]].to_csv(tmp_path / "labels.csv", index=False)
    cfg = {k: v for k, v in MINI.items() if k not in ("datasets", "experiments")}
    cfg["features"] = {"shard_size": 10}
    cfg["datasets"] = {"d": {"format": "generic", "labels": "labels.csv", "videos": "videos",
                             "split": {"scheme": "official"}}}
    cfg["experiments"] = {"two": {"train": ["d:train"], "test": ["d:test", "d:test_b"]}}
    write_config(tmp_path, cfg)
    snakemake(tmp_path)
    html = (tmp_path / "results/report/index.html").read_text()
    table = pd.read_csv(tmp_path / "results/eval/two/table.csv")
    assert table["test"].tolist() == ["d:test", "d:test_b"] and table["dataset"].tolist() == ["d", "d"]
    for split in ("test", "test_b"):
        m = json.loads((tmp_path / f"results/eval/two/d/{split}/metrics.json").read_text())
        preds = pd.read_csv(tmp_path / f"results/eval/two/d/{split}/predictions.csv", dtype={"id": str})
        mine = labels[labels["split"] == split]
        assert m["test"] == f"d:{split}" and m["n"] == 3
        assert sorted(preds["id"]) == sorted(mine["name"].str.rsplit(".", n=1).str[0])
        mos, prob = preds["mos"].to_numpy(float), preds["prob_score"].to_numpy(float)
        assert np.allclose(np.sort(mos), np.sort(mine["mos"].to_numpy(float)))
        want = {"srcc": stats.spearmanr(prob, mos).statistic, "krcc": stats.kendalltau(prob, mos).statistic,
                "plcc_raw": stats.pearsonr(prob, mos).statistic}
        row = table[table["test"] == f"d:{split}"].iloc[0]
        section = html[html.index(f'<tr data-test="d:{split}">'):]
        for key, value in want.items():
            assert m["methods"]["prob"][key] == pytest.approx(value, abs=1e-9), key
            assert row[f"prob_{key}"] == pytest.approx(value, abs=1e-5), key
            cell = re.search(rf'data-key="prob\.{key}" data-value="([^"]*)"', section).group(1)
            assert float(cell) == pytest.approx(value, abs=1e-9), key
        level_acc = float(np.mean(preds["level"].astype(str).to_numpy() == preds["level_true"].astype(str).to_numpy()))
        assert m["level"]["accuracy"] == pytest.approx(level_acc) and row["videos"] == 3
        assert f"two &rarr; d:{split}</h3>" in html


@pytest.mark.slow
def test_ensemble_members_are_jobs_and_evaluation_averages_them(demo_copy):
    """`ensemble: 2`: the experiment's own model and `<E>.member1` (seed + 1) are two training jobs (per
    fold for `folds: all`), and the evaluation scores with both."""
    work = demo_copy
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
    metrics = json.loads((work / "results/eval/ens/demo/test/metrics.json").read_text())
    assert metrics["ensemble"] == 2
    assert planned_rules(work) == {}


@pytest.mark.slow
def test_a_folder_of_unrated_videos_is_scored_without_metrics(demo_copy):
    """A `folder` dataset (videos without labels) in an experiment's `test:` beside the rated one: its
    videos get predictions, its metrics.json says unrated (no metrics), the report lists it without
    metric rows; nothing is retrained and the rated test set's results stay as they were."""
    import pandas as pd

    work = demo_copy
    videos = sorted((work / "resources/demo/videos").glob("*.mp4"))[:3]
    (work / "new/sub").mkdir(parents=True)
    for i, v in enumerate(videos):  # recursively: one of them in a subfolder
        shutil.copy(v, work / ("new/sub" if i == 0 else "new") / v.name)
    rated = {p: (work / p).read_bytes() for p in ("results/eval/demo/demo/test/metrics.json",
                                                   "results/eval/demo/demo/test/predictions.csv")}
    cfg = json.loads(json.dumps(MINI))
    cfg["datasets"]["new"] = {"format": "folder", "labels": "new"}
    cfg["experiments"]["demo"]["test"].append("new:all")
    write_config(work, cfg)
    plan = planned_rules(work)
    assert not {"train", "tokenizer", "demo_data_demo"} & set(plan) and plan.get("evaluate") == 1, plan
    snakemake(work)
    preds = pd.read_csv(work / "results/eval/demo/new/all/predictions.csv", dtype={"id": str})
    assert sorted(preds["id"]) == sorted([f"sub/{videos[0].stem}", *(v.stem for v in videos[1:])])
    assert preds["mos"].isna().all() and preds["prob_score"].between(0, 100).all()
    metrics = json.loads((work / "results/eval/demo/new/all/metrics.json").read_text())
    assert metrics["unrated"] is True and metrics["n"] == 3 and "methods" not in metrics
    for path, content in rated.items():
        assert (work / path).read_bytes() == content, path
    summary = pd.read_csv(work / "results/eval/summary.csv")
    assert summary["test"].tolist() == ["demo:test"] and summary["config"].tolist() == ["config.yaml"]
    assert pd.read_csv(work / "results/eval/demo/table.csv")["test"].tolist() == ["demo:test"]
    html = (work / "results/report/index.html").read_text()
    assert 'data-unrated="new:all"' in html and "3 scored, no metrics" in html
    assert planned_rules(work) == {}
