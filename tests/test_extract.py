"""Extraction of a shard: failures table, determinism, decode worker processes (same store whatever
their number), killed job + rerun (no decoder left running), the real clips (tiny preset)."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline.cli import main as cli_main
from pipeline.core import resolve
from pipeline.core.config import validate
from pipeline.features import extractor
from pipeline.features.decoding import decode_pool, staging
from pipeline.features.decoding.decode import VideoSampler
from pipeline.features.decoding.decode_pool import DecodePool, decode_worker_count
from pipeline.features.extract import CODE_VERSION, extract_shard
from pipeline.features.extractor import Extractor
from conftest import store_bytes
from pipeline.features.stores.store_reader import FeatureStore, IncompleteStoreError

torch.set_num_threads(2)


def tiny_config(**sampling):
    return validate({"datasets": {"t": {"format": "generic", "labels": "labels.csv"}}, "models": {"preset": "tiny"},
                     "sampling": sampling, "features": {"batch_size": 8}})


def tiny_features(**sampling):
    """The resolved feature settings of `tiny_config`."""
    return resolve.of(tiny_config(**sampling)).features


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
    """Two decode worker processes: the corrupt videos land in the failures table with the decoder's
    message (caught in the worker), the good ones complete."""
    root, manifest, vids = shard_dir
    features = tiny_features()
    summary = extract_shard(features, "t", manifest, vids, 0, root / "out" / "shard-00000.zarr", device="cpu", threads=2,
                            progress=False, decode_workers=2)
    assert summary["n_videos"] == 2 and summary["n_failed"] == 3 and summary["decode_workers"] == 2
    store = FeatureStore(root / "out" / "shard-00000.zarr")
    assert store.ids == ["a", "b"]
    fails = store.failures.set_index("id")
    assert sorted(fails.index) == ["007", "trunc", "txt"]  # ids stay strings ("007")
    assert (fails["stage"] == "decode").all() and fails["error"].str.len().gt(5).all()
    assert "empty" in fails.loc["007", "error"]
    assert fails.loc["trunc", "error"].startswith("DecodeError: ") and "trunc.mp4" in fails.loc["trunc", "error"]
    assert fails.loc["txt", "path"] == "text.mp4"
    a = store.attrs
    assert a["vision"]["tokens"] == 197 and a["vision"]["width"] == 128 and a["motion"]["dim"] == 576
    assert a["code_version"] == CODE_VERSION and a["settings_hash"] == features.hash
    assert a["sampling"]["keyframe_fps"] == 1.0 and a["sampling"]["key_size"] == 224
    assert {"load_s", "decode_s", "vision_s", "motion_s", "total_s", "videos_per_s"} <= set(a["timings"])
    assert a["timings"]["decode_workers"] == 2 and a["timings"]["decode_cpu_s"] > 0
    assert store.spatial("a").shape == (2, 197, 128) and store.motion("a").shape == (2, 576)
    assert store.spatial("b").shape == (1, 197, 128) and store.motion("b").shape == (1, 576)  # 0.8 s
    meta = store.video_meta("b")
    assert meta["codec"] == "vp9" and meta["backend"] == "decord" and meta["decode_s"] > 0 and "vision_s" in meta
    assert np.isfinite(store.spatial("a")).all() and store.spatial("a").dtype == np.float16


def test_same_video_identical_across_runs(shard_dir):
    root, manifest, vids = shard_dir
    features = tiny_features()
    stores = []
    for run in range(2):
        out = root / f"run{run}" / "shard-00001.zarr"
        extract_shard(features, "t", manifest, vids, 1, out, device="cpu", threads=2, progress=False)
        stores.append(FeatureStore(out))
    np.testing.assert_array_equal(stores[0].spatial("c"), stores[1].spatial("c"))
    np.testing.assert_array_equal(stores[0].motion("c"), stores[1].motion("c"))


@pytest.fixture
def order_dir(tmp_path, make_video):
    """A slow (long, larger) video first, then fast ones and a corrupt one: workers finish out of order."""
    vids = tmp_path / "videos"
    make_video("videos/long.mp4", n_frames=150, size=(320, 240), fps=25)  # 6 s
    for i in range(4):
        make_video(f"videos/s{i}.mp4", n_frames=25 + 10 * i, fps=25, seed=i)
    (vids / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200)
    rows = [("long", "long.mp4"), ("s0", "s0.mp4"), ("bad", "bad.mp4"), ("s1", "s1.mp4"), ("s2", "s2.mp4"),
            ("s3", "s3.mp4")]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame([(i, p, 0) for i, p in rows], columns=["id", "path", "shard"]).to_csv(manifest, index=False)
    return tmp_path, manifest, vids


def test_store_identical_whatever_the_decode_workers(order_dir, monkeypatch):
    """0 (in-process thread), 1 and 2 worker processes, and 2 workers without shared memory (frames
    through the pipe): the same videos in the same order, byte-identical features, same failures."""
    root, manifest, vids = order_dir
    features = tiny_features()
    stores = {}
    for workers in (2, 1, 0):
        out = root / f"w{workers}" / "shard-00000.zarr"
        s = extract_shard(features, "t", manifest, vids, 0, out, device="cpu", threads=2, progress=False,
                          decode_workers=workers)
        assert s["decode_workers"] == workers and s["n_videos"] == 5 and s["n_failed"] == 1
        stores[workers] = store_bytes(out)
    monkeypatch.setattr(decode_pool, "_reserve_shm", lambda nbytes: None)
    out = root / "pipe" / "shard-00000.zarr"
    extract_shard(features, "t", manifest, vids, 0, out, device="cpu", threads=2, progress=False, decode_workers=2)
    stores["pipe"] = store_bytes(out)
    assert stores[2][0] == ["long", "s0", "s1", "s2", "s3"]
    assert stores[2][4] == [6, 1, 1, 2, 2]  # the 6 s video really is first
    for key in (1, 0, "pipe"):
        assert stores[key] == stores[2], key


def test_decode_pool_uses_processes_and_keeps_order(order_dir):
    root, manifest, vids = order_dir
    ex = Extractor(tiny_features(), "cpu", 2)
    paths = [str(vids / p) for p in ("long.mp4", "s0.mp4", "bad.mp4", "s1.mp4")]
    with DecodePool(2) as pool:
        pool.start(ex.sampler)
        assert pool.in_flight == 4 and pool.shm is not None
        handles = [pool.submit(p) for p in paths]
        got = [pool.result(h) for h in handles]
        pids = pool.worker_pids()
        assert sorted(pool.free) == [0, 1, 2, 3]
        held = pool.submit(paths[0])  # hold=True: views on the slot, which stays taken until release
        d, _, _ = pool.result(held, hold=True)
        assert not d.keyframes.flags.owndata and held.slot is not None and len(pool.free) == 3
        np.testing.assert_array_equal(d.chunks, got[0][0].chunks)
        pool.release(held)
        assert held.slot is None and len(pool.free) == 4
        del d  # no view may outlive the shared memory
    assert len(pids) == 2 and os.getpid() not in pids
    direct = ex.decode(paths[0])
    np.testing.assert_array_equal(got[0][0].keyframes, direct.keyframes)
    np.testing.assert_array_equal(got[0][0].chunks, direct.chunks)
    assert [len(d.keyframes) if d is not None else None for d, _, _ in got] == [6, 1, None, 1]
    assert got[2][1].startswith("DecodeError: ") and got[0][1] is None
    assert got[0][0].meta["decoder_threads"] == 1  # threads 2 shared by 2 workers


def _fake_decode(self, path):
    """Stands in for VideoSampler.decode in forked workers: a video named *crash* kills its process the
    way a segfaulting decoder does; the others decode to frames filled with their number."""
    from pipeline.features.decoding.sampling import DecodedVideo

    name = Path(path).stem
    if "crash" in name:
        os._exit(139)
    n = int(name[1:])
    return DecodedVideo(np.full((1, 4, 4, 3), n, np.uint8), np.full((1, 4, 2, 2, 3), n, np.uint8), {"n": n})


def test_a_crashing_decoder_fails_only_its_video(monkeypatch):
    """A worker that dies loses the videos in flight: they are decoded again one at a time, the one
    that kills its worker again becomes a failure, the others come back in order, and the pool goes
    on. (Fork start method so the workers inherit the stand-in decoder.)"""
    monkeypatch.setattr(VideoSampler, "decode", _fake_decode)
    sampler = VideoSampler(keyframe_fps=1.0, max_keyframes=2, max_seconds=2, chunk_frames=4, key_size=4, chunk_size=2,
                           threads=2)
    names = ["v0", "v1", "crash", "v3", "v4", "crash2", "v6", "v7"]
    got = []
    with DecodePool(2, start_method="fork") as pool:
        pool.start(sampler)
        queue = [pool.submit(f"/nowhere/{n}.mp4") for n in names[: pool.in_flight]]
        nxt = len(queue)
        while queue:
            decoded, error, _ = pool.result(queue.pop(0))
            got.append(int(decoded.keyframes[0, 0, 0, 0]) if decoded is not None else error)
            if nxt < len(names):
                queue.append(pool.submit(f"/nowhere/{names[nxt]}.mp4"))
                nxt += 1
        assert pool.crashes == 2 and sorted(pool.free) == list(range(pool.in_flight))
    died = "DecodeError: the decoder process died while decoding this video (a crash in the decoder, e.g. a segfault)"
    assert got == [0, 1, died, 3, 4, died, 6, 7]


@pytest.mark.skipif(not decode_pool.SHM_DIR.is_dir(), reason="no /dev/shm")
def test_stale_shared_memory_of_dead_extractions_is_removed():
    """A block left by a process group killed with -9 (tracker included) is unlinked by the next pool;
    those of live processes stay."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = decode_pool.SHM_DIR / f"{decode_pool.SHM_PREFIX}{dead.pid}-{uuid.uuid4().hex[:8]}"
    live = decode_pool.SHM_DIR / f"{decode_pool.SHM_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    stale.write_bytes(b"x" * 64)
    live.write_bytes(b"x" * 64)
    try:
        sampler = VideoSampler(keyframe_fps=1.0, max_keyframes=1, max_seconds=1, chunk_frames=4, key_size=4,
                               chunk_size=2, threads=1)
        with DecodePool(1) as pool:
            pool.start(sampler)
            name = pool.shm.name
            assert name.startswith(f"{decode_pool.SHM_PREFIX}{os.getpid()}-") and (decode_pool.SHM_DIR / name).exists()
        assert not stale.exists() and live.exists()
        assert not (decode_pool.SHM_DIR / name).exists()  # this pool's block is gone after close
    finally:
        for f in (stale, live):
            f.unlink(missing_ok=True)


def test_decode_worker_count():
    cfg = tiny_config()
    s = resolve.resolve(cfg)
    assert s.features.decode_workers is None and s.threads == 0
    assert decode_worker_count(s.features, threads=3) == 3
    assert decode_worker_count(s.features, threads=3, decode_workers=0) == 0
    five = resolve.resolve({**cfg, "threads": 5})
    assert decode_worker_count(five.features, five.threads) == 5  # the config's threads, as extract passes them
    assert decode_worker_count(resolve.resolve({**cfg, "features": {"decode_workers": 4}}).features, threads=3) == 4
    assert decode_worker_count(s.features, s.threads) == decode_pool.available_cpus()
    with pytest.raises(Exception, match="decode_workers"):
        validate({**cfg, "features": {"decode_workers": -1}})


def test_host_buffers_pinned_only_for_cuda(monkeypatch):
    """The staging buffer of a batch is requested page-locked exactly when the device is CUDA, and
    Extractor.encode passes its own device through (the same function runs on CPU and GPU)."""
    real_empty = torch.empty
    asked = []

    def fake_empty(*shape, dtype=None, pin_memory=False):
        asked.append(pin_memory)
        return real_empty(*shape, dtype=dtype)  # no CUDA driver here: record, do not pin

    monkeypatch.setattr(torch, "empty", fake_empty)
    a = staging.host_buffer((2, 3), "cuda:1")
    b = staging.host_buffer((2, 3), torch.device("cpu"))
    assert asked == [True, False] and a.dtype == np.uint8 and b.shape == (2, 3)
    x = [np.full((2, 4), 7, np.uint8), np.arange(4, dtype=np.uint8)[None]]
    np.testing.assert_array_equal(staging.stack_host(x, "cuda"), np.concatenate(x))
    assert asked[-1] is True

    devices = []
    monkeypatch.setattr(extractor, "stack_host", lambda arrays, device: devices.append(device) or np.concatenate(arrays))
    ex = Extractor.__new__(Extractor)  # no models: the encoders are stubbed
    ex.device = torch.device("cuda", 0)
    ex.vision = ex.motion = None
    ex.sampling, ex.batch_size = {"slow_stride": 4}, 8
    from pipeline.features.encoding import encoders
    monkeypatch.setattr(encoders, "encode_keyframes", lambda m, kf, dev, bs: np.zeros((len(kf), 2, 3), np.float32))
    monkeypatch.setattr(encoders, "encode_chunks", lambda m, ch, st, dev, bs, frame_ids=None: np.zeros((len(ch), 5), np.float32))
    from pipeline.features.decoding.sampling import DecodedVideo
    d = DecodedVideo(np.zeros((2, 4, 4, 3), np.uint8), np.zeros((1, 4, 4, 4, 3), np.uint8))
    outs, _, _ = ex.encode([d, d])
    assert devices == [torch.device("cuda", 0)] * 2 and [o[0].shape for o in outs] == [(2, 2, 3)] * 2



def test_batch_stage_feeds_the_encoders_what_encode_would(monkeypatch):
    """BatchStage copies each video once into reused host buffers (pinned for CUDA) and hands the
    encoders the same arrays, batches and per-video split as Extractor.encode; a video larger than
    the buffers foresee grows them; the buffers are reused for the next batch."""
    from pipeline.features.encoding import encoders
    from pipeline.features.decoding.sampling import DecodedVideo

    fed = []

    def kf_enc(m, kf, dev, bs):
        fed.append(("kf", np.array(kf)))
        return kf.reshape(len(kf), -1)[:, :3].astype(np.float32)

    def ch_enc(m, ch, st, dev, bs, frame_ids=None):
        fed.append(("ch", np.array(ch), None if frame_ids is None else np.array(frame_ids)))
        return ch.reshape(len(ch), -1)[:, :2].astype(np.float32)

    monkeypatch.setattr(encoders, "encode_keyframes", kf_enc)
    monkeypatch.setattr(encoders, "encode_chunks", ch_enc)
    pinned = []
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, dtype=None, pin_memory=False: pinned.append(pin_memory)
                        or real_empty(*a, dtype=dtype))
    ex = Extractor.__new__(Extractor)  # no models: the encoders are stubbed
    ex.device = torch.device("cuda", 0)
    ex.vision = ex.motion = None
    ex.sampling, ex.batch_size = {"slow_stride": 4, "max_keyframes": 2, "max_seconds": 2}, 3
    rng = np.random.default_rng(0)

    def video(k, c):
        return DecodedVideo(rng.integers(0, 256, (k, 4, 4, 3), dtype=np.uint8),
                            rng.integers(0, 256, (c, 2, 4, 4, 3), dtype=np.uint8), {"k": k},
                            rng.integers(0, 99, (c, 2)))

    batches = [[video(1, 2), video(2, 1)], [video(5, 1), video(1, 1)]]  # 5 key frames: more than foreseen
    stage = staging.BatchStage(ex)
    got = []
    for batch in batches:
        for i, d in enumerate(batch):
            stage.add(f"v{i}", d)
        got.append(stage.encode(ex)[0])
    staged, fed[:] = fed[:], []
    want = [ex.encode(batch)[0] for batch in batches]
    assert all(pinned) and len(pinned) >= 2
    for a, b in zip(staged, fed):
        assert a[0] == b[0] and all(np.array_equal(x, y) for x, y in zip(a[1:], b[1:]))
    for g, w, batch in zip(got, want, batches):
        assert [(vid, meta) for vid, meta, _, _ in g] == [(f"v{i}", d.meta) for i, d in enumerate(batch)]
        for (_, _, sp, mo), (wsp, wmo) in zip(g, w):
            np.testing.assert_array_equal(sp, wsp)
            np.testing.assert_array_equal(mo, wmo)
    assert stage.n_kf == stage.n_ch == 0 and not stage.videos

def _processes_with(marker: str) -> list[int]:
    pids = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in env.read_bytes():
                pids.append(int(env.parent.name))
        except OSError:
            continue
    return pids


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
    marker = f"LMMVQA_TEST_{uuid.uuid4().hex}"
    env = dict(os.environ, OMP_NUM_THREADS="1", LMMVQA_TEST_MARK=marker)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args, "--decode-workers", "2"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list(out.parent.glob("*.tmp-*")) and proc.poll() is None:
        time.sleep(0.05)
    helpers = [p for p in _processes_with(marker) if p != proc.pid]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    tmp = list(out.parent.glob("*.tmp-*"))
    assert tmp and not out.exists()
    assert len(helpers) >= 3  # the fork server, 2 decode workers (and the resource tracker)
    deadline = time.time() + 30  # the workers notice their parent is gone (0.5 s watchdog), then exit
    while time.time() < deadline and _processes_with(marker):
        time.sleep(0.2)
    assert _processes_with(marker) == []  # no decoder left running after kill -9
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
    summary = extract_shard(tiny_features(), "real", manifest, real_clips, 0, out, device="cpu", threads=2, progress=False)
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


def test_offline_store_identical_whatever_the_decode_workers(order_dir):
    """The temporal-statistics motion role needs each chunk's source frame ids: they must come back
    from worker processes through shared memory too (else resampling repeats look like stutter)."""
    root, manifest, vids = order_dir
    cfg = tiny_config()
    cfg["models"]["preset"] = "offline"
    cfg["sampling"]["keyframe_mode"] = "fragments"
    stores = {}
    for workers in (2, 0):
        out = root / f"off{workers}" / "shard-00000.zarr"
        extract_shard(resolve.of(cfg).features, "t", manifest, vids, 0, out, device="cpu", threads=2, progress=False,
                      decode_workers=workers)
        stores[workers] = store_bytes(out)
    assert stores[2] == stores[0]
    motion = FeatureStore(root / "off2" / "shard-00000.zarr").motion("s1")
    assert motion[0, 0] == 0.0  # frozen fraction: 25 fps resampled to the chunk has no frozen pairs
