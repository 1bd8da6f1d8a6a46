"""The failure suite: one shard holding every awkward kind of video users send.

Each video is either decoded correctly (key frames and seconds as its duration says) or listed in
the shard's failures table with a reason, and every other video of the shard still finishes.
The fixtures are made with the ffmpeg command line (skipped without it).
"""
from __future__ import annotations

import math
import shutil
import subprocess

import pandas as pd
import pytest
import torch

from pipeline.core import resolve
from pipeline.core.config import validate
from pipeline.features.extract import extract_shard
from pipeline.features.stores.store_reader import FeatureStore

torch.set_num_threads(2)

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg command not installed")

SRC = "testsrc2=size={size}:rate={fps}:duration={dur}"


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True, timeout=300)


def make(path, size="160x120", fps=25, dur=2.0, codec=("-c:v", "libx264", "-preset", "ultrafast"), extra=()):
    ffmpeg("-f", "lavfi", "-i", SRC.format(size=size, fps=fps, dur=dur), *codec, *extra, str(path))
    return path


# name -> (builder(folder) -> file name, expected: ("ok", duration seconds) or ("fail", None))
def _cases(folder):
    v = folder
    good = make(v / "good.mp4")
    data = good.read_bytes()
    (v / "zero.mp4").write_bytes(b"")
    (v / "trunc_tail.mp4").write_bytes(data[: len(data) // 2])  # mdat cut: frames and the index lost
    # faststart file cut right after its index: the index lists frames that are not there
    make(v / "faststart.mp4", extra=("-movflags", "+faststart"))
    fs = (v / "faststart.mp4").read_bytes()
    (v / "trunc_index.mp4").write_bytes(fs[: fs.find(b"mdat") + 2000])
    (v / "text.mp4").write_text("this is not a video\n" * 50)
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:a", "aac", str(v / "audio_only.mp4"))
    make(v / "single_frame.mp4", dur=0.04)
    make(v / "short.mp4", dur=0.6)
    make(v / "vp9.webm", codec=("-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8"))
    make(v / "hevc.mkv", codec=("-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=none"))
    make(v / "tenbit.mkv", codec=("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le"))
    # the rotate tag is kept only on a stream copy (a re-encode drops it)
    ffmpeg("-i", str(good), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(v / "rotated.mp4"))
    ffmpeg("-f", "lavfi", "-i", SRC.format(size="160x120", fps=30, dur=3),
           "-vf", "select='not(mod(n\\,3))+lt(n\\,30)'", "-fps_mode", "vfr", "-c:v", "libx264", "-preset", "ultrafast",
           str(v / "vfr.mp4"))
    make(v / "uhd.mp4", size="3840x2160", fps=25, dur=1.0, codec=("-c:v", "libx264", "-preset", "ultrafast", "-crf", "45"))
    make(v / "ten_minutes.mp4", size="64x48", fps=10, dur=600,
         codec=("-c:v", "libx264", "-preset", "ultrafast", "-crf", "45", "-g", "300"))
    return {
        "good.mp4": ("ok", 2.0), "zero.mp4": ("fail", None), "trunc_tail.mp4": ("either", None),
        "trunc_index.mp4": ("either", None), "text.mp4": ("fail", None), "audio_only.mp4": ("fail", None),
        "single_frame.mp4": ("ok", 0.04), "short.mp4": ("ok", 0.6), "vp9.webm": ("ok", 2.0), "hevc.mkv": ("ok", 2.0),
        "tenbit.mkv": ("ok", 2.0), "rotated.mp4": ("ok", 2.0), "vfr.mp4": ("ok", 3.0), "uhd.mp4": ("ok", 1.0),
        "ten_minutes.mp4": ("ok", 600.0), "missing.mp4": ("fail", None),
    }


def test_every_awkward_video_is_decoded_or_listed(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    cases = _cases(videos)
    names = sorted(cases)
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"id": [n.split(".")[0] for n in names], "path": names, "shard": 0}).to_csv(manifest, index=False)
    cfg = validate({"datasets": {"t": {"format": "generic", "labels": "labels.csv"}}, "models": {"preset": "tiny"},
                    "features": {"batch_size": 8}})
    out = tmp_path / "shard-00000.zarr"
    summary = extract_shard(resolve.of(cfg).features, "t", manifest, videos, 0, out, progress=False)
    store = FeatureStore(out)
    failures = store.failures.set_index("id")
    assert summary["n_videos"] + summary["n_failed"] == len(names)
    outcome = {}
    for name in names:
        vid = name.split(".")[0]
        if vid in store:
            outcome[name] = "ok"
            assert vid not in failures.index
        else:
            outcome[name] = "fail"
            assert failures.loc[vid, "error"].strip(), f"{name}: failure without a reason"
    for name, (want, duration) in cases.items():
        if want != "either":
            assert outcome[name] == want, f"{name}: expected {want}, got {outcome[name]}"
        if outcome[name] == "ok" and duration is not None:
            meta = store.video_meta(name.split(".")[0])
            assert meta["duration"] == pytest.approx(duration, abs=0.15), name
            expected = min(16, max(1, math.ceil(meta["duration"] - 0.5 - 1e-9)))  # one per second (decoding/sampling.py)
            assert len(store.spatial(name.split(".")[0])) == expected, name
            assert len(store.motion(name.split(".")[0])) == expected, name
    rotated = store.video_meta("rotated")
    assert (rotated.get("width"), rotated.get("height")) == (120, 160), rotated
    assert store.video_meta("vfr").get("vfr") is True
    assert "missing" in failures.index and "zero" in failures.index
