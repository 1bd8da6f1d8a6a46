"""A video whose decode never ends must not stall a run: the decode deadline (sampling.decode_deadline).

* A decoder backend that never returns (installed for the test, inherited by the decode workers
  through the fork start method), in a shard between good videos: `lmmvqa extract` kills it at the
  deadline, decodes the video with the fallback backend, or lists it as "timed out" with each
  backend when that hangs too; the other videos get their features.
* `lmmvqa score` on such a video: an error line for it, the others scored, exit code 1.
* `lmmvqa probe` on a file whose probe hangs: a failure row "timed out", the others probed.
* Damaged streams made with ffmpeg (the `noise` bitstream filter on H.264 / HEVC / VP9 at several
  amounts, truncated files, broken mp4 index boxes): each is decoded or listed, within its deadline.

Every test has a hard limit (SIGALRM) so that a hang fails the test instead of stalling the suite.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import torch

from pipeline.cli import main as cli_main
from pipeline.core import deadline, resolve
from pipeline.core.config import validate
from pipeline.core.deadline import DecodeDeadline
from pipeline.features.decoding import decode
from pipeline.features.extract import extract_shard
from pipeline.features.stores.store_reader import FeatureStore

torch.set_num_threads(2)

DEADLINE_S = 2.0  # the tests' base_s: tiny videos decode in well under a second


@contextmanager
def hard_limit(seconds: int):
    """Fail (instead of hanging forever) when the block takes longer than `seconds`."""
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: a decode was not stopped at its deadline")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _never_returns(path, p, threads):
    """A decoder stuck in a loop, as decord's get_batch on some damaged streams (100 % CPU, no return)."""
    while True:
        time.sleep(0.05)


@pytest.fixture
def hanging_backends(monkeypatch):
    """decord never returns on videos named hang*; PyAV neither on hangboth*; the others decode.
    The decode workers fork from this process, so they inherit the stand-ins."""
    real = dict(decode.DECODERS)

    def backend(name, marker):
        def run(path, p, threads):
            if Path(path).stem.startswith(marker):
                _never_returns(path, p, threads)
            return real[name](path, p, threads)
        return run

    monkeypatch.setitem(decode.DECODERS, "decord", backend("decord", "hang"))
    monkeypatch.setitem(decode.DECODERS, "pyav", backend("pyav", "hangboth"))
    monkeypatch.setattr(deadline, "START_METHOD", "fork")


def tiny_config(**deadline_keys):
    return validate({"datasets": {"t": {"format": "generic", "labels": "labels.csv"}}, "models": {"preset": "tiny"},
                     "sampling": {"decode_deadline": {"base_s": DEADLINE_S, "per_gigapixel_s": 0, **deadline_keys}},
                     "features": {"batch_size": 8}})


def _manifest(tmp_path, names) -> Path:
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"id": [Path(n).stem for n in names], "path": names, "shard": 0}).to_csv(manifest, index=False)
    return manifest


def test_deadline_scales_with_duration_and_size():
    d = DecodeDeadline(base_s=60, per_gigapixel_s=50, max_s=7200)
    assert d.seconds() == 60  # header not read yet
    assert d.seconds(duration=10, fps=30, width=1920, height=1080) == pytest.approx(60 + 50 * 0.62208)
    assert d.seconds(duration=600, fps=60, width=3840, height=2160) == 7200  # capped
    assert d.seconds(duration=10, fps=None, width=1920, height=1080) == d.seconds(10, 30, 1920, 1080)
    cfg = validate({"datasets": {"t": {"format": "generic", "labels": "l.csv"}}})
    assert cfg["sampling"]["decode_deadline"] == {"base_s": 60, "per_gigapixel_s": 50, "max_s": 7200}
    assert DecodeDeadline.from_settings(resolve.resolve(cfg).features.sampling.decode_deadline) == d
    older = resolve.extraction_settings({"models": {"preset": "tiny"}, "sampling": {}})  # a model folder trained
    assert DecodeDeadline.from_settings(older.sampling.decode_deadline) == d  # before the key existed
    with pytest.raises(Exception, match="base_s"):
        validate({**cfg, "sampling": {"decode_deadline": {"base_s": 0}}})


def test_a_hanging_decoder_is_killed_and_the_shard_finishes(tmp_path, make_video, hanging_backends):
    """Good videos around two that hang: hang1 (decord hangs) is decoded by the fallback, PyAV;
    hangboth (both hang) is in the failures table with each backend and "timed out"; neither is
    given to a backend that timed out on it again, and the shard finishes in a few deadlines."""
    names = ["a.mp4", "hang1.mp4", "b.mp4", "hangboth.mp4", "c.mp4", "d.mp4"]
    for i, name in enumerate(names):
        make_video(f"videos/{name}", n_frames=20 + 5 * i, size=(64, 48), fps=10, seed=i)
    manifest = _manifest(tmp_path, names)
    out = tmp_path / "shard-00000.zarr"
    t0 = time.perf_counter()
    with hard_limit(120):
        summary = extract_shard(resolve.of(tiny_config()).features, "t", manifest, tmp_path / "videos", 0, out,
                                device="cpu", threads=2, progress=False, decode_workers=2)
    took = time.perf_counter() - t0
    store = FeatureStore(out)
    assert store.ids == ["a", "hang1", "b", "c", "d"]
    assert summary["n_failed"] == 1 and summary["decode_timeouts"] == 1
    fail = store.failures.set_index("id").loc["hangboth"]
    assert fail["path"] == "hangboth.mp4" and fail["stage"] == "decode"
    assert fail["error"] == (f"DecodeError: decord timed out after {DEADLINE_S:.1f} s; pyav timed out after "
                             f"{DEADLINE_S:.1f} s (the decode deadline, sampling.decode_deadline)")
    meta = store.video_meta("hang1")
    assert meta["backend"] == "pyav" and meta["decode_retries"] == [f"decord timed out after {DEADLINE_S:.1f} s"]
    assert all(store.video_meta(v)["backend"] == "decord" for v in ("a", "b", "c", "d"))
    assert len(store.spatial("hang1")) == 2 and len(store.motion("d")) == 4  # 2.5 s and 4.5 s at 10 fps
    assert took < 3 * DEADLINE_S + 60  # decord's and PyAV's deadlines, not forever


def test_deadline_from_the_command_line(tmp_path, make_video, hanging_backends):
    """`lmmvqa extract --decode-deadline S` sets the deadline's base seconds for the run."""
    make_video("videos/ok.mp4", n_frames=10, size=(64, 48), fps=10)
    make_video("videos/hangboth.mp4", n_frames=10, size=(64, 48), fps=10)
    manifest = _manifest(tmp_path, ["hangboth.mp4", "ok.mp4"])
    cfg = tmp_path / "config.yaml"
    cfg.write_text(json.dumps({"datasets": {"t": {"format": "generic", "labels": "labels.csv"}},
                               "models": {"preset": "tiny"}}))  # default deadline: 60 s
    out = tmp_path / "shard-00000.zarr"
    with hard_limit(90):
        assert cli_main(["extract", "--config", str(cfg), "--dataset", "t", "--manifest", str(manifest), "--videos",
                         str(tmp_path / "videos"), "--shard", "0", "--out", str(out), "--threads", "1",
                         "--decode-workers", "1", "--decode-deadline", "1.5", "--no-progress"]) == 0
    store = FeatureStore(out)
    assert store.ids == ["ok"]
    assert "decord timed out after 1.5 s; pyav timed out after 1.5 s" in store.failures.set_index("id").loc["hangboth", "error"]


def test_score_lists_a_hanging_video_and_scores_the_others(tmp_path, make_video, hanging_backends, monkeypatch):
    """`lmmvqa score` (a model trained on the tiny preset's features) on good, hanging, good: an error
    line naming both backends and "timed out" for the hanging one, scores for the others, exit 1."""
    from test_train import make_workspace

    from pipeline.core import paths, resolve
    from pipeline.training.train import train

    cfg = make_workspace(tmp_path, T=197, W=128, M=576, training={"batch_size": 4, "val_fraction": 0.0})
    monkeypatch.chdir(tmp_path)
    train(resolve.of(cfg), "exp", paths.model_dir("exp"), max_steps=1, progress=False)
    videos = [make_video(f"v/{n}.mp4", n_frames=15, size=(64, 48), fps=10, seed=i)
              for i, n in enumerate(["good1", "hangboth", "good2"])]
    out = tmp_path / "scores.jsonl"
    with hard_limit(150):
        code = cli_main(["score", *map(str, videos), "--model", str(paths.model_dir("exp")), "--out", str(out),
                         "--decode-deadline", str(DEADLINE_S)])
    assert code == 1
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["video"] for line in lines] == list(map(str, videos))
    assert lines[1]["error"] == (f"DecodeError: decord timed out after {DEADLINE_S:.1f} s; pyav timed out after "
                                 f"{DEADLINE_S:.1f} s (the decode deadline, sampling.decode_deadline)")
    for line in (lines[0], lines[2]):
        assert "error" not in line and 0 <= line["prob_score"] <= 100 and line["backend"] == "decord"


def test_probe_lists_a_hanging_file_and_probes_the_others(tmp_path, make_video, monkeypatch, capsys):
    """`lmmvqa probe --deadline S`: a file whose probe never returns is killed after S seconds and
    listed (stage timeout, "timed out"); the files after it are probed."""
    from pipeline.ingest import probe

    real = probe.probe_video

    def probe_video(path):
        if Path(path).stem.startswith("hang"):
            _never_returns(path, None, 0)
        return real(path)

    monkeypatch.setattr(probe, "probe_video", probe_video)
    monkeypatch.setattr(deadline, "START_METHOD", "fork")
    for name in ["a", "hang", "b"]:
        make_video(f"videos/{name}.mp4", n_frames=10, size=(64, 48), fps=10)
    manifest = _manifest(tmp_path, ["a.mp4", "hang.mp4", "b.mp4"])
    out = tmp_path / "probe.csv"
    with hard_limit(60):
        assert cli_main(["probe", "--manifest", str(manifest), "--videos", str(tmp_path / "videos"), "--out", str(out),
                         "--deadline", "1"]) == 0
    assert pd.read_csv(out)["id"].tolist() == ["a", "b"]
    fails = pd.read_csv(tmp_path / "probe.failures.csv")
    assert fails[["id", "path", "stage"]].values.tolist() == [["hang", "hang.mp4", "timeout"]]
    assert fails.loc[0, "error"] == "pyav timed out after 1 s reading the header and first frame"


# ---------------------------------------------------------------------------------------------
# Damaged streams made with ffmpeg
# ---------------------------------------------------------------------------------------------
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg command not installed")
CODECS = {
    "h264.mp4": ("-c:v", "libx264", "-preset", "ultrafast", "-g", "10"),
    "hevc.mkv": ("-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=none:keyint=10"),
    "vp9.webm": ("-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-g", "10"),
}
NOISE = (1000, 100, 10)  # the noise filter damages about one byte in `amount` of each packet


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True, timeout=120)


def _damaged_streams(folder: Path) -> list[str]:
    names = []
    for name, codec in CODECS.items():
        clean = folder / f"clean_{name}"
        ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x64:rate=10:duration=3", *codec, str(clean))
        names.append(clean.name)
        for amount in NOISE:
            noisy = folder / f"noise{amount}_{name}"
            ffmpeg("-i", str(clean), "-c", "copy", "-bsf:v", f"noise=amount={amount}", str(noisy))
            names.append(noisy.name)
        data = clean.read_bytes()
        (folder / f"trunc_{name}").write_bytes(data[: len(data) * 2 // 3])
        names.append(f"trunc_{name}")
    data = (folder / "clean_h264.mp4").read_bytes()
    for box, junk in (("stsz", b"\xff" * 12), ("stco", b"\x7f\xff\xff\xff" * 3), ("moov", b"\x00\x00\x00\x01")):
        at = data.find(box.encode())  # the box's fields (after its 4-byte name) overwritten
        (folder / f"broken_{box}.mp4").write_bytes(data[: at + 4] + junk + data[at + 4 + len(junk):])
        names.append(f"broken_{box}.mp4")
    return names


@needs_ffmpeg
def test_damaged_streams_end_decoded_or_listed_within_their_deadline(tmp_path):
    """Every damaged stream is decoded (with the backend that managed) or listed with a reason, each
    within its deadline (the decode seconds of a decoded one; the whole shard in a bounded time)."""
    videos = tmp_path / "videos"
    videos.mkdir()
    names = _damaged_streams(videos)
    manifest = _manifest(tmp_path, names)
    out = tmp_path / "shard-00000.zarr"
    limit = 5.0
    t0 = time.perf_counter()
    with hard_limit(300):
        summary = extract_shard(resolve.of(tiny_config(base_s=limit)).features, "t", manifest, videos, 0, out,
                                device="cpu", threads=2, progress=False, decode_workers=2)
    took = time.perf_counter() - t0
    store = FeatureStore(out)
    failures = store.failures.set_index("id")
    assert summary["n_videos"] + summary["n_failed"] == len(names)
    for name in names:
        vid = Path(name).stem
        if vid in store:
            assert vid not in failures.index
            assert store.video_meta(vid)["decode_s"] <= limit, name
            assert len(store.spatial(vid)) >= 1 and len(store.motion(vid)) >= 1
        else:
            assert failures.loc[vid, "error"].strip(), f"{name}: listed without a reason"
    for name in CODECS:
        assert Path(f"clean_{name}").stem in store.ids  # the undamaged ones decode
    assert took < len(names) * 2 * limit  # none waited past its deadlines (2 backends each)
    with hard_limit(120):  # the probe ends on each of them too
        assert cli_main(["probe", "--manifest", str(manifest), "--videos", str(videos), "--out",
                         str(tmp_path / "probe.csv"), "--deadline", str(limit)]) == 0
    probed = pd.read_csv(tmp_path / "probe.csv")["id"].astype(str).tolist()
    listed = pd.read_csv(tmp_path / "probe.failures.csv")["id"].astype(str).tolist()
    assert sorted(probed + [v for v in listed if v not in probed]) == sorted(Path(n).stem for n in names)


def test_probe_lists_a_file_that_crashes_its_reader(tmp_path, make_video, monkeypatch):
    """A probe that kills its process (a segfault in FFmpeg) is a failure of that file; the next file
    is probed in a new process."""
    import os

    from pipeline.ingest import probe

    real = probe.probe_video
    monkeypatch.setattr(probe, "probe_video", lambda path: os._exit(139) if "crash" in str(path) else real(path))
    monkeypatch.setattr(deadline, "START_METHOD", "fork")
    for name in ["crash", "a"]:
        make_video(f"videos/{name}.mp4", n_frames=5, size=(64, 48))
    manifest = pd.read_csv(_manifest(tmp_path, ["crash.mp4", "a.mp4"]))
    with hard_limit(60):
        table, failures = probe.probe_shard(manifest, tmp_path / "videos", deadline_s=30)
    assert table["id"].tolist() == ["a"]
    assert failures.values.tolist() == [["crash", "crash.mp4", "decode", "the process reading the video died (a crash "
                                         "in FFmpeg, e.g. a segfault)"]]
