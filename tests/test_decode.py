"""Decoding: sampling plan, VFR by timestamp, short videos, rotation vs ffmpeg, VP9, broken files, fallback."""
from __future__ import annotations

import shutil
import subprocess
from fractions import Fraction

import av
import numpy as np
import pytest
from conftest import write_audio_only

from pipeline.features.decoding import decode, views
from pipeline.features.decoding.decode import sample_video
from pipeline.features.decoding.sampling import DecodeError, chunk_times, frame_at, keyframe_times

BACKENDS = ["decord", "pyav"]


def write_vfr(path, times, size=64):
    """Uniform grey frames, level 10 + 8 i, at the given timestamps (lossless x264, ms time base)."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=25)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        s.time_base = s.codec_context.time_base = Fraction(1, 1000)
        s.options = {"crf": "0"}
        for i, t in enumerate(times):
            f = av.VideoFrame.from_ndarray(np.full((size, size, 3), 10 + 8 * i, np.uint8), format="rgb24")
            f.pts, f.time_base = int(round(t * 1000)), Fraction(1, 1000)
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def level_index(frames):
    return np.round((frames[..., frames.shape[-3] // 2, frames.shape[-2] // 2, 0].astype(float) - 10) / 8).astype(int)


def write_smooth(path, n_frames=25, size=(128, 64), fps=25):
    """Low-frequency moving content (sinusoids + a soft disc): scalers agree on it, orientation shows."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": "10"}
        for i in range(n_frames):
            cx, cy = w * (0.25 + 0.02 * i), h * 0.3
            disc = 1 / (1 + np.exp((np.hypot(xx - cx, yy - cy) - h / 5) / 2))
            img = np.stack([128 + 100 * np.sin(xx / w * 3 + i / 10), 60 + 150 * yy / h, 40 + 180 * disc], -1)
            f = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def lowpass(x, k=4):
    """Mean over k x k pixel blocks: compares content, not the scalers' interpolation details."""
    x = np.asarray(x, dtype=float)
    h, w = x.shape[-3] // k, x.shape[-2] // k
    return x[..., : h * k, : w * k, :].reshape(*x.shape[:-3], h, k, w, k, 3).mean(axis=(-4, -2))


def test_sampling_plan():
    assert len(keyframe_times(8.1)) == 8 and len(keyframe_times(7.8)) == 8 and len(keyframe_times(6.0)) == 6
    np.testing.assert_allclose(keyframe_times(3.0), [0.5, 1.5, 2.5])
    np.testing.assert_allclose(keyframe_times(0.4), [0.2])
    np.testing.assert_allclose(keyframe_times(4.0, keyframe_fps=2.0), [0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.25, 3.75])
    kt = keyframe_times(60.0, max_keyframes=16)  # spread over the whole video, not the first 16 s
    assert len(kt) == 16 and kt[0] == 0.5 and kt[-1] == 59.5
    ct = chunk_times(2.0, chunk_frames=4)
    np.testing.assert_allclose(ct, [[0.125, 0.375, 0.625, 0.875], [1.125, 1.375, 1.625, 1.875]])
    short = chunk_times(0.4, chunk_frames=4)  # one chunk over the whole (short) video
    np.testing.assert_allclose(short, [[0.05, 0.15, 0.25, 0.35]])
    assert chunk_times(100.0, max_seconds=16).shape == (16, 32)
    np.testing.assert_array_equal(frame_at(np.array([0.0, 0.2, 0.4, 1.0]), [0.0, 0.19, 0.2, 0.9, 5.0]), [0, 0, 1, 2, 3])


@pytest.mark.parametrize("backend", BACKENDS)
def test_vfr_sampled_by_timestamp(tmp_path, backend):
    # 5 frames in the first second (5 fps), 25 in the second (25 fps): index-uniform sampling would be wrong
    times = [0.2 * i for i in range(5)] + [1.0 + 0.04 * i for i in range(25)]
    path = write_vfr(tmp_path / "vfr.mp4", times)
    d = sample_video(path, key_size=32, chunk_size=32, chunk_frames=8, backend=backend, fallback=None)
    assert d.meta["backend"] == backend and d.meta["duration"] == pytest.approx(2.0, abs=0.05)
    np.testing.assert_array_equal(level_index(d.keyframes), [2, 17])  # frames shown at 0.5 s and 1.5 s
    expect = frame_at(np.array(times), chunk_times(2.0, 8))
    np.testing.assert_array_equal(level_index(d.chunks), expect)


@pytest.mark.parametrize("backend", BACKENDS)
def test_short_video_one_keyframe_one_chunk(make_video, backend):
    path = make_video("short.mp4", n_frames=8, fps=25)  # 0.32 s
    d = sample_video(path, key_size=32, chunk_size=24, chunk_frames=16, backend=backend, fallback=None)
    assert d.keyframes.shape == (1, 32, 32, 3) and d.chunks.shape == (1, 16, 24, 24, 3)
    assert d.keyframes.dtype == np.uint8 and d.chunks.dtype == np.uint8
    assert d.meta["n_keyframes"] == 1 and d.meta["n_seconds"] == 1


def test_shapes_determinism_and_backends_agree(tmp_path):
    path = write_smooth(tmp_path / "v.mp4", n_frames=75, size=(160, 96), fps=25)  # 3 s
    a = sample_video(path, key_size=48, chunk_size=32, chunk_frames=8)
    b = sample_video(path, key_size=48, chunk_size=32, chunk_frames=8)
    assert a.keyframes.shape == (3, 48, 48, 3) and a.chunks.shape == (3, 8, 32, 32, 3)
    np.testing.assert_array_equal(a.keyframes, b.keyframes)
    np.testing.assert_array_equal(a.chunks, b.chunks)
    assert a.meta["backend"] == "decord" and a.meta["n_frames"] == 75 and a.meta["fps"] == pytest.approx(25)
    assert (a.meta["width"], a.meta["height"], a.meta["rotation"]) == (160, 96, 0)
    p = sample_video(path, key_size=48, chunk_size=32, chunk_frames=8, backend="pyav", fallback=None)
    assert np.abs(lowpass(a.keyframes) - lowpass(p.keyframes)).mean() < 4
    assert np.abs(lowpass(a.chunks) - lowpass(p.chunks)).mean() < 4


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg CLI not installed")
@pytest.mark.parametrize("backend", BACKENDS)
def test_rotation_matches_ffmpeg_autorotate(tmp_path, backend):
    src = write_smooth(tmp_path / "src.mp4", n_frames=25, size=(128, 64), fps=25)
    rot = tmp_path / "rot.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(rot)],
                   check=True)
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(rot), "-vf", "scale=64:64", "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
    ref = np.frombuffer(raw, np.uint8).reshape(-1, 64, 64, 3)
    d = sample_video(rot, key_size=64, chunk_size=64, chunk_frames=8, backend=backend, fallback=None)
    assert d.meta["rotation"] == 90 and (d.meta["width"], d.meta["height"]) == (64, 128)
    kf, good = lowpass(d.keyframes[0]), lowpass(ref[12])  # t = 0.5 s -> frame 12
    err = np.abs(kf - good).mean()
    assert err < 4, err
    for wrong in (ref[12][:, ::-1], ref[12][::-1, ::-1], np.rot90(ref[12], 2), np.rot90(ref[12], 1)):
        assert err < 0.25 * np.abs(kf - lowpass(wrong)).mean()  # far from mirrored / other rotations
    assert np.abs(lowpass(d.chunks[0]) - lowpass(ref[frame_at(np.arange(25) / 25, chunk_times(1.0, 8))[0]])).mean() < 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_vp9_webm(make_video, backend):
    path = make_video("v.webm", n_frames=30, size=(96, 64), fps=25, codec="libvpx-vp9")
    d = sample_video(path, key_size=32, chunk_size=32, chunk_frames=8, backend=backend, fallback=None)
    assert d.meta["codec"] == "vp9" and d.keyframes.shape == (1, 32, 32, 3) and d.keyframes.std() > 5


def _broken(tmp_path, make_video, kind):
    if kind == "zero":
        p = tmp_path / "zero.mp4"
        p.write_bytes(b"")
    elif kind == "text":
        p = tmp_path / "text.mp4"
        p.write_text("this is not a video\n" * 50)
    else:
        good = make_video("good.mp4", n_frames=50)
        p = tmp_path / "trunc.mp4"
        p.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return p


@pytest.mark.parametrize("kind", ["zero", "text", "truncated"])
def test_broken_files_raise(tmp_path, make_video, kind):
    with pytest.raises(DecodeError) as err:
        sample_video(_broken(tmp_path, make_video, kind), key_size=32, chunk_size=32, chunk_frames=8)
    assert str(err.value)


def test_fallback_backend_is_recorded(make_video, monkeypatch):
    path = make_video("v.mp4", n_frames=30)

    def fail(*a, **k):
        raise RuntimeError("decord says no")

    monkeypatch.setitem(decode.DECODERS, "decord", fail)
    d = sample_video(path, key_size=32, chunk_size=32, chunk_frames=8, backend="decord", fallback="pyav")
    assert d.meta["backend"] == "pyav"
    assert len(d.meta["decode_retries"]) == 2 and "decord says no" in d.meta["decode_retries"][0]
    with pytest.raises(DecodeError, match="decord says no"):
        sample_video(path, key_size=32, chunk_size=32, chunk_frames=8, backend="decord", fallback=None)


def test_stream_info_is_the_probe_s_view_without_the_probe(make_video, tmp_path):
    """decode.stream_info (its own reader; no import of the probe stage) gives what decoding took from
    probe_video before: the same displayed size / rotation / codec / pixel format, and the same
    message for a file that cannot be read."""
    import ast
    import inspect

    from pipeline.ingest.probe import ProbeError, probe_video

    tree = ast.parse(inspect.getsource(decode))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "probe" not in imported and "pipeline.ingest.probe" not in imported

    src = make_video("src.mp4", n_frames=5, size=(96, 64))
    files = [src, make_video("b.webm", codec="libvpx-vp9", n_frames=6, size=(64, 48), fps=24)]
    if shutil.which("ffmpeg"):
        rot = tmp_path / "r90.mp4"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), "-c", "copy", "-metadata:s:v", "rotate=90",
                        str(rot)], check=True)
        files.append(rot)
    for f in files:
        want = {k: probe_video(f)[k] for k in ("width", "height", "rotation", "codec", "pix_fmt")}
        assert decode.stream_info(f) == want
    if shutil.which("ffmpeg"):
        assert decode.stream_info(rot)["rotation"] == 90 and decode.stream_info(rot)["width"] == 64

    (tmp_path / "text.mp4").write_text("this is not a video\n")
    (tmp_path / "trunc.mp4").write_bytes(src.read_bytes()[:400])
    for name in ("text.mp4", "trunc.mp4"):
        with pytest.raises(ProbeError) as probed:
            probe_video(tmp_path / name)
        with pytest.raises(DecodeError) as decoded:
            decode.stream_info(tmp_path / name)
        assert str(decoded.value) == str(probed.value)
    write_audio_only(tmp_path / "audio.mp4")  # a file without a video stream
    with pytest.raises(DecodeError, match="^no video stream$"):
        decode.stream_info(tmp_path / "audio.mp4")


@pytest.mark.parametrize("h,w,c", [(3, 3, 3), (3, 7, 3), (4, 5, 3), (17, 40, 1), (56, 96, 3), (112, 112, 3)])
def test_halving_fast_path_gives_the_float_path_s_bytes(h, w, c):
    """`_halve` (integer arithmetic inside, the float path on the border strips) = torch's float32
    antialiased bilinear resize rounded half to even, byte for byte: random pixels, values that hit
    the exact halves, black / white patterns, and a strided (non-contiguous) input."""
    rng = np.random.default_rng(h * 1000 + w)
    for x in (rng.integers(0, 256, (5, 2 * h, 2 * w, c), dtype=np.uint8),
              rng.integers(0, 4, (5, 2 * h, 2 * w, c), dtype=np.uint8),
              (rng.integers(0, 2, (5, 2 * h, 2 * w, c)) * 255).astype(np.uint8),
              rng.integers(0, 256, (3, 2 * h + 5, 2 * w + 3, c), dtype=np.uint8)[:, 2 : 2 + 2 * h, 1 : 1 + 2 * w]):
        fast = views.resize_to(x, h, w)
        assert fast.dtype == np.uint8 and fast.shape == (len(x), h, w, c)
        np.testing.assert_array_equal(fast, views._resize_float(x, h, w))
