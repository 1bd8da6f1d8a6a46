"""Probe: real clips, rotation, variable frame rate, unreadable files, shard CLI."""
from __future__ import annotations

import shutil
import subprocess
from fractions import Fraction

import av
import numpy as np
import pandas as pd
import pytest
from conftest import write_audio_only

from pipeline.cli import main as cli
from pipeline.ingest.manifest import build_manifest, write_manifest
from pipeline.ingest.probe import (
    FAILURE_COLUMNS,
    PROBE_COLUMNS,
    PROBE_KEYS,
    ProbeError,
    probe_shard,
    probe_video,
    to_display,
)

REAL = {  # file: (width, height, duration, fps, n_frames) from the README / ffprobe
    "konvid_10053703034.mp4": (960, 540, 8.0, 29.97, 240),
    "konvid_2999049224.mp4": (960, 540, 8.0, 29.97, 240),
    "lsvq_1724.mp4": (406, 720, 8.1, 29.97, 243),
    "lsvq_17734.mp4": (1280, 720, 7.8, 29.97, 234),
    "nflx_Seeking_10_288_375.mp4": (384, 288, 6.0, 25.0, 150),
    "nflx_Seeking_30_480_1050.mp4": (720, 480, 6.0, 25.0, 150),
}
FFMPEG = shutil.which("ffmpeg")


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_clips(real_clips, name):
    w, h, dur, fps, n = REAL[name]
    info = probe_video(real_clips / name)
    assert list(info) == PROBE_KEYS
    assert (info["width"], info["height"], info["rotation"]) == (w, h, 0)
    assert info["duration"] == pytest.approx(dur, abs=0.06)
    assert info["fps"] == pytest.approx(fps, abs=0.01) and info["n_frames"] == n
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert info["has_video"] is True and info["vfr"] is False


def _rotated(src, dst, degrees):
    subprocess.run([FFMPEG, "-v", "error", "-y", "-i", str(src), "-c", "copy", "-metadata:s:v", f"rotate={degrees}",
                    str(dst)], check=True)
    return dst


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg CLI not installed")
def test_rotation_swaps_width_and_height(make_video, tmp_path):
    src = make_video("src.mp4", n_frames=5, size=(96, 64))
    assert probe_video(src)["rotation"] == 0
    r90 = probe_video(_rotated(src, tmp_path / "r90.mp4", 90))
    assert (r90["rotation"], r90["width"], r90["height"]) == (90, 64, 96)
    r270 = probe_video(_rotated(src, tmp_path / "r270.mp4", 270))
    assert (r270["rotation"], r270["width"], r270["height"]) == (270, 64, 96)
    r180 = probe_video(_rotated(src, tmp_path / "r180.mp4", 180))
    assert (r180["rotation"], r180["width"], r180["height"]) == (180, 96, 64)


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg CLI not installed")
def test_to_display_matches_ffmpeg_autorotation(tmp_path):
    """A frame white on its left half: ffmpeg (which applies the display matrix) shows it at the bottom."""
    src = tmp_path / "half.mp4"
    with av.open(str(src), "w") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        img = np.zeros((64, 96, 3), np.uint8)
        img[:, :48] = 255
        for _ in range(3):
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    rot = _rotated(src, tmp_path / "half90.mp4", 90)
    shown = subprocess.run([FFMPEG, "-v", "error", "-i", str(rot), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt",
                            "gray", "-"], check=True, capture_output=True).stdout
    shown = np.frombuffer(shown, np.uint8).reshape(96, 64)
    with av.open(str(rot)) as c:
        frame = next(c.decode(video=0)).to_ndarray(format="gray")
    ours = to_display(frame, probe_video(rot)["rotation"])
    assert ours.shape == shown.shape == (96, 64)
    assert np.abs(ours.astype(int) - shown.astype(int)).mean() < 8


def _timed_video(path, deltas_ms):
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        t = 0
        for i, d in enumerate(deltas_ms):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 5 % 255, np.uint8), format="rgb24")
            f.pts, f.time_base = t, Fraction(1, 1000)
            t += d
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_variable_frame_rate(tmp_path, ext):
    cfr = probe_video(_timed_video(tmp_path / f"cfr.{ext}", [40] * 40))
    vfr = probe_video(_timed_video(tmp_path / f"vfr.{ext}", [20, 60] * 20))
    assert cfr["vfr"] is False and cfr["fps"] == pytest.approx(25, abs=0.5) and cfr["n_frames"] == 40
    assert vfr["vfr"] is True


def test_other_containers(make_video):
    webm = probe_video(make_video("a.webm", codec="libvpx-vp9", n_frames=12, size=(64, 48), fps=24))
    assert (webm["codec"], webm["width"], webm["height"]) == ("vp9", 64, 48)
    assert webm["n_frames"] == 12 and webm["duration"] == pytest.approx(0.5, abs=0.05)
    mkv = probe_video(make_video("b.mkv", n_frames=30, size=(80, 48), fps=30))
    assert (mkv["codec"], mkv["fps"], mkv["n_frames"]) == ("h264", 30.0, 30)


def test_unreadable_files(tmp_path, make_video):
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("this is not a video\n")
    good = make_video("good.mp4", n_frames=10)
    (tmp_path / "trunc.mp4").write_bytes(good.read_bytes()[:400])
    write_audio_only(tmp_path / "audio.mp4")
    with pytest.raises(ProbeError, match="empty file") as info:
        probe_video(tmp_path / "zero.mp4")
    assert info.value.stage == "open"
    with pytest.raises(ProbeError, match="Invalid data"):
        probe_video(tmp_path / "text.mp4")
    assert probe_video(tmp_path / "audio.mp4")["has_video"] is False
    with pytest.raises(ProbeError, match="file not found"):
        probe_video(tmp_path / "absent.mp4")
    with pytest.raises(ProbeError):  # moov atom at the end: cut off, the container cannot open
        probe_video(tmp_path / "trunc.mp4")


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg CLI not installed")
def test_truncated_after_header_fails_at_decode(tmp_path, make_video):
    src = make_video("src.mp4", n_frames=20, size=(96, 64))
    fast = tmp_path / "fast.mp4"
    subprocess.run([FFMPEG, "-v", "error", "-y", "-i", str(src), "-c", "copy", "-movflags", "+faststart", str(fast)],
                   check=True)
    data = fast.read_bytes()
    mdat = data.index(b"mdat") - 4  # the index (moov) comes first: keep it and a sliver of the frame data
    (tmp_path / "cut.mp4").write_bytes(data[: mdat + 8 + 40])
    with pytest.raises(ProbeError) as info:
        probe_video(tmp_path / "cut.mp4")
    assert info.value.stage == "decode" and str(info.value)


def test_probe_shard_and_cli(tmp_path, make_video, capsys):
    videos = tmp_path / "videos"
    for i in range(3):
        make_video(f"videos/ok{i}.mp4", n_frames=5 + i, size=(64, 48))
    (videos / "zero.mp4").write_bytes(b"")
    (videos / "text.mp4").write_text("hello\n")
    write_audio_only(videos / "audio.mp4")
    names = ["ok0.mp4", "zero.mp4", "ok1.mp4", "text.mp4", "audio.mp4", "ok2.mp4"]
    pd.DataFrame({"name": names, "mos": np.linspace(10, 90, 6)}).to_csv(tmp_path / "labels.csv", index=False)
    manifest, missing = build_manifest("generic", tmp_path / "labels.csv", videos, shard_size=3)
    assert len(manifest) == 6 and len(missing) == 0
    table, failures = probe_shard(manifest, videos, 0)
    assert list(table.columns) == PROBE_COLUMNS and list(failures.columns) == FAILURE_COLUMNS
    assert table["id"].tolist() == ["ok0", "ok1"] and table["n_frames"].tolist() == [5, 6]
    assert failures[["id", "stage"]].values.tolist() == [["zero", "open"]]

    mpath = tmp_path / "results" / "manifest" / "d.csv"
    write_manifest(manifest, missing, mpath, mpath.with_name("d.missing.csv"))
    out, fails = tmp_path / "probe" / "shard-00001.csv", tmp_path / "probe" / "shard-00001.failures.csv"
    outputs = ["--out", str(out), "--failures", str(fails)]
    assert cli(["probe", "--manifest", str(mpath), "--videos", str(videos), "--shard", "1", *outputs]) == 0
    assert "2 videos probed, 2 failure(s)" in capsys.readouterr().out
    t = pd.read_csv(out)
    assert t["id"].tolist() == ["audio", "ok2"] and t["has_video"].tolist() == [False, True]
    assert (t.loc[1, "width"], t.loc[1, "height"], t.loc[1, "n_frames"]) == (64, 48, 7)
    f = pd.read_csv(fails)
    assert f[["id", "stage"]].values.tolist() == [["text", "open"], ["audio", "stream"]]
    assert f.loc[0, "error"].startswith("[Errno") and "Invalid data" in f.loc[0, "error"]
    assert f.loc[1, "error"] == "no video stream"
    assert cli(["probe", "--manifest", str(mpath), "--videos", str(videos), "--shard", "9", *outputs]) == 2
    assert "no shard 9" in capsys.readouterr().err
