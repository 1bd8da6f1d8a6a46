"""Shared test fixtures: small generated videos and the read-only shared data folder."""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
LABELS_DIR = SHARED / "datasets" / "labels"
REAL_CLIPS = SHARED / "datasets" / "real-clips"

# one intra-op thread per process: the suite runs one pytest-xdist worker per core and the workflow tests
# start Snakemake jobs beside them, so more threads would only contend for the same cores (stages that
# set their own thread count, like training, still do)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# the tests never touch the network, as the workflow's jobs don't: a name that is not a local folder fails at
# once instead of being looked up on the hub (offline, huggingface_hub retries a lookup for about 45 s)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_video(path, n_frames=30, size=(96, 64), fps=25, codec="libx264", seed=0, pix_fmt="yuv420p",
                options=None) -> Path:
    """A small moving-gradient video with PyAV (size = (width, height))."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    base = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))[:h, :w]
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        if options:
            stream.options = dict(options)
        for i in range(n_frames):
            img = np.roll(base, shift=2 * i, axis=1)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_audio_only(path) -> Path:
    """A small file with an audio stream and no video stream."""
    path = Path(path)
    with av.open(str(path), "w") as out:
        s = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for i in range(10):
            frame.pts = i * 1024
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


@pytest.fixture
def make_video(tmp_path):
    def _make(name="v.mp4", **kw):
        return write_video(tmp_path / name, **kw)

    return _make


@pytest.fixture
def shared_labels():
    if not LABELS_DIR.is_dir():
        pytest.skip(f"shared label files not found at {LABELS_DIR} (the ../shared folder is absent)")
    return LABELS_DIR


@pytest.fixture
def real_clips():
    if not REAL_CLIPS.is_dir():
        pytest.skip(f"real clips not found at {REAL_CLIPS} (the ../shared folder is absent)")
    return REAL_CLIPS


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory, worker_id):
    """The small workflow config (tests/workflow_run.py `MINI`) run once per session through the SLURM
    profile against a fake SLURM: tests/test_slurm.py checks what was submitted, tests/test_workflow.py
    reads what it produced. Once per session also under pytest-xdist: the first worker that needs it
    runs it under a file lock in the folder the workers share, the others wait for it and read it. So
    no test may change it: a test that edits its config or adds outputs works on a copy
    (`demo_copy` in tests/test_workflow.py)."""
    from filelock import FileLock
    from workflow_run import SlurmRun, run_through_slurm

    if worker_id == "master":  # not distributed
        return run_through_slurm(tmp_path_factory.mktemp("workflow"), tmp_path_factory.mktemp("fake-slurm"))
    root = tmp_path_factory.getbasetemp().parent  # this session's, shared by its workers
    record = root / "shared-run.json"
    with FileLock(str(root / "shared-run.lock")):
        if not record.exists():
            (root / "workflow").mkdir(exist_ok=True)
            run_through_slurm(root / "workflow", root / "fake-slurm").save(record)
    return SlurmRun.load(record)


# Tests that run Snakemake or the whole pipeline take most of the suite's time. Started first, and the
# one that makes the session's shared run before the others, they keep pytest-xdist's workers busy to
# the end instead of leaving one worker waiting on the shared run or on the last long test.
def pytest_collection_modifyitems(config, items):
    def rank(item):
        if item.get_closest_marker("slow") is None:
            return 3
        if "shared_run" not in item.fixturenames:
            return 1
        return 0 if item.module.__name__ == "test_slurm" else 2

    items.sort(key=rank)  # stable: the file order within each rank


# The files whose tests run Snakemake on the shared run go to the workers one test at a time; every
# other file goes whole to one worker, so that its module-scoped fixtures (a trained model, tokenizers)
# are built once, not once per worker.
ONE_BY_ONE = ("tests/test_slurm.py", "tests/test_workflow.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class FilesAndWorkflowTests(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return nodeid if path in ONE_BY_ONE else path

    return FilesAndWorkflowTests(config, log)


def store_bytes(path):
    """Everything a feature store holds, as comparable values: ids, spatial and motion bytes, failures and
    key-frame counts (stores made with other decode worker counts must be equal)."""
    from pipeline.features.stores.store_reader import FeatureStore

    store = FeatureStore(path)
    return (store.ids, [store.spatial(v).tobytes() for v in store.ids], [store.motion(v).tobytes() for v in store.ids],
            store.failures[["id", "path", "stage", "error"]].values.tolist(),
            [store.video_meta(v)["n_keyframes"] for v in store.ids])


def write_synth_variants(root, prefix="v"):
    """A tiny synth dataset `syn` as the synth stage leaves it under `root` (six videos of rising CRF in
    cache/synth/syn/videos, their full-reference labels in results/synth/syn/labels.csv): training data
    for the quality adapter."""
    root = Path(root)
    names = [f"{prefix}{i}.mp4" for i in range(6)]
    for i, name in enumerate(names):
        write_video(root / "cache/synth/syn/videos" / name, n_frames=25, size=(64, 48), seed=i,
                    options={"crf": str(10 + 8 * i)})
    (root / "results/synth/syn").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"name": names, "mos": [95, 85, 70, 55, 40, 20]}).to_csv(root / "results/synth/syn/labels.csv",
                                                                          index=False)
