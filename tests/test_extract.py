"""Extraction of a shard: failures table, determinism, killed job + rerun, the real clips (tiny preset)."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline.cli import main as cli_main
from pipeline.config import validate
from pipeline.extract import CODE_VERSION, extract_shard
from pipeline.settings import feature_settings_hash
from pipeline.feature_store import FeatureStore, IncompleteStoreError

torch.set_num_threads(2)


def tiny_config(**sampling):
    return validate({"datasets": {"t": {"format": "generic", "labels": "labels.csv"}}, "models": {"preset": "tiny"},
                     "sampling": sampling, "features": {"batch_size": 8}})


@pytest.fixture
def shard_dir(tmp_path, make_video):
    """Shard 0: two good videos + a truncated, an empty and a text 'video'; shard 1: one video."""
    vids = tmp_path / "videos"
    make_video("videos/a.mp4", n_frames=50, fps=25)  # 2 s
    make_video("videos/b.webm", n_frames=20, fps=25, codec="libvpx-vp9")  # 0.8 s
    make_video("videos/c.mp4", n_frames=25, fps=25)
    good = make_video("videos/full.mp4", n_frames=50)
    (vids / "trunc.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (vids / "zero.mp4").write_bytes(b"")
    (vids / "text.mp4").write_text("not a video at all\n" * 20)
    rows = [("a", "a.mp4", 0), ("trunc", "trunc.mp4", 0), ("007", "zero.mp4", 0), ("txt", "text.mp4", 0),
            ("b", "b.webm", 0), ("c", "c.mp4", 1)]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows, columns=["id", "path", "shard"]).to_csv(manifest, index=False)
    return tmp_path, manifest, vids


def test_shard_with_failures_completes(shard_dir):
    root, manifest, vids = shard_dir
    cfg = tiny_config()
    summary = extract_shard(cfg, "t", manifest, vids, 0, root / "out" / "shard-00000.zarr", device="cpu", threads=2,
                            progress=False)
    assert summary["n_videos"] == 2 and summary["n_failed"] == 3
    store = FeatureStore(root / "out" / "shard-00000.zarr")
    assert store.ids == ["a", "b"]
    fails = store.failures.set_index("id")
    assert sorted(fails.index) == ["007", "trunc", "txt"]  # ids stay strings ("007")
    assert (fails["stage"] == "decode").all() and fails["error"].str.len().gt(5).all()
    assert "empty" in fails.loc["007", "error"]
    a = store.attrs
    assert a["vision"]["tokens"] == 197 and a["vision"]["width"] == 128 and a["motion"]["dim"] == 576
    assert a["code_version"] == CODE_VERSION and a["settings_hash"] == feature_settings_hash(cfg)
    assert a["sampling"]["keyframe_fps"] == 1.0 and a["sampling"]["key_size"] == 224
    assert {"load_s", "decode_s", "vision_s", "motion_s", "total_s", "videos_per_s"} <= set(a["timings"])
    assert store.spatial("a").shape == (2, 197, 128) and store.motion("a").shape == (2, 576)
    assert store.spatial("b").shape == (1, 197, 128) and store.motion("b").shape == (1, 576)  # 0.8 s
    meta = store.video_meta("b")
    assert meta["codec"] == "vp9" and meta["backend"] == "decord" and meta["decode_s"] > 0 and "vision_s" in meta
    assert np.isfinite(store.spatial("a")).all() and store.spatial("a").dtype == np.float16


def test_same_video_identical_across_runs(shard_dir):
    root, manifest, vids = shard_dir
    cfg = tiny_config()
    stores = []
    for run in range(2):
        out = root / f"run{run}" / "shard-00001.zarr"
        extract_shard(cfg, "t", manifest, vids, 1, out, device="cpu", threads=2, progress=False)
        stores.append(FeatureStore(out))
    np.testing.assert_array_equal(stores[0].spatial("c"), stores[1].spatial("c"))
    np.testing.assert_array_equal(stores[0].motion("c"), stores[1].motion("c"))


def test_killed_job_then_rerun(shard_dir):
    """SIGKILL while the shard is being written leaves only a temp folder the reader refuses; a rerun
    (through the CLI) removes it and writes a complete store."""
    root, manifest, vids = shard_dir
    cfg_path = root / "config.yaml"
    cfg_path.write_text(yaml.safe_dump({"datasets": {"t": {"format": "generic", "labels": "labels.csv"}},
                                        "models": {"preset": "tiny"}}))
    out = root / "out" / "shard-00000.zarr"
    args = ["extract", "--config", str(cfg_path), "--dataset", "t", "--manifest", str(manifest), "--videos", str(vids),
            "--shard", "0", "--out", str(out), "--threads", "1", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list(out.parent.glob("*.tmp-*")) and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    tmp = list(out.parent.glob("*.tmp-*"))
    assert tmp and not out.exists()
    with pytest.raises(IncompleteStoreError):
        FeatureStore(tmp[0])
    with pytest.raises(IncompleteStoreError):
        FeatureStore(out)
    assert cli_main(args) == 0
    assert not list(out.parent.glob("*.tmp-*"))
    assert FeatureStore(out).ids == ["a", "b"]


def test_real_clips_tiny(real_clips, tmp_path):
    clips = sorted(real_clips.glob("*.mp4"))
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"id": [c.stem for c in clips], "path": [c.name for c in clips], "shard": 0}).to_csv(manifest, index=False)
    out = tmp_path / "shard-00000.zarr"
    summary = extract_shard(tiny_config(), "real", manifest, real_clips, 0, out, device="cpu", threads=2, progress=False)
    store = FeatureStore(out)
    assert summary["n_failed"] == 0 and store.ids == [c.stem for c in clips]
    for vid in store.ids:
        meta = store.video_meta(vid)
        expect = min(16, max(1, math.ceil(meta["duration"] - 0.5)))  # key frames at the middle of each second
        assert len(store.spatial(vid)) == expect == len(store.motion(vid)), (vid, meta["duration"])
        assert 5.5 < meta["duration"] < 8.5 and expect in (6, 8)
        assert np.isfinite(store.spatial(vid)).all() and np.isfinite(store.motion(vid)).all()
    portrait = store.video_meta("lsvq_1724")
    assert (portrait["width"], portrait["height"]) == (406, 720)
