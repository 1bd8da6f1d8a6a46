"""The synthetic demo dataset: determinism, decodability, the MOS formula, the CLI."""
from __future__ import annotations

import csv

import av
import numpy as np
import pytest

from pipeline import cli
from pipeline.ingest.demo import dataset, distortions, labels, scenes

N = 8


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    df = dataset.generate(out, n_videos=N, seed=0, workers=1)
    return out, df


def test_labels_format(demo):
    out, df = demo
    with open(out / "labels.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:2] == ["name", "mos"]
    assert rows[0] == labels.LABEL_COLUMNS
    assert len(rows) == N + 1
    assert all(len(r[1].split(".")[1]) == 3 for r in rows[1:])  # 3 decimals
    assert df["mos"].between(0, 100).all()
    assert df["name"].is_unique
    assert sorted(p.name for p in (out / "videos").iterdir()) == sorted(df["name"])
    assert not list(out.glob(".*tmp*")) and not list((out / "videos").glob(".*"))


def test_same_seed_identical_bytes_and_workers_do_not_matter(demo, tmp_path):
    out, df = demo
    dataset.generate(tmp_path / "b", n_videos=N, seed=0, workers=2)
    assert (tmp_path / "b" / "labels.csv").read_bytes() == (out / "labels.csv").read_bytes()
    for name in df["name"]:
        assert (tmp_path / "b" / "videos" / name).read_bytes() == (out / "videos" / name).read_bytes(), name


def test_different_seed_differs():
    a = [labels.sample_params(0, i) for i in range(N)]
    b = [labels.sample_params(1, i) for i in range(N)]
    assert [r["mos"] for r in a] != [r["mos"] for r in b]


def test_prefix_stable_and_params_pure():
    # parameters depend on (seed, index) only: a larger set starts with the smaller one
    assert labels.sample_params(3, 5) == labels.sample_params(3, 5)


def test_regenerate_smaller_removes_stale_videos(tmp_path):
    dataset.generate(tmp_path, n_videos=3, seed=0, workers=1)
    df = dataset.generate(tmp_path, n_videos=2, seed=0, workers=1)
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == sorted(df["name"])


def test_videos_decode_with_pyav(demo):
    out, df = demo
    for r in df.itertuples():
        with av.open(str(out / "videos" / r.name)) as c:
            s = c.streams.video[0]
            assert (s.codec_context.width, s.codec_context.height) == (r.width, r.height)
            assert abs(float(s.average_rate) - r.fps) < 0.05, (r.name, s.average_rate)
            assert {"h264": "h264", "vp9": "vp9", "hevc": "hevc"}[r.codec] == s.codec_context.name
            n = sum(1 for _ in c.decode(video=0))
        assert n == r.n_frames, r.name


def test_videos_decode_with_decord(demo):
    decord = pytest.importorskip("decord")
    out, df = demo
    for r in df.itertuples():
        vr = decord.VideoReader(str(out / "videos" / r.name), num_threads=1)
        assert len(vr) == r.n_frames, r.name
        frame = vr[len(vr) // 2].asnumpy()
        assert frame.shape == (r.height, r.width, 3)
        assert abs(vr.get_avg_fps() - r.fps) < 0.05
        assert frame.std() > 3  # not blank


def test_sampled_params_cover_the_spec():
    ps = [labels.sample_params(0, i) for i in range(240)]
    assert {p["container"] for p in ps} == {"mp4", "webm", "mkv"}
    assert {p["codec"] for p in ps} == {"h264", "vp9", "hevc"}
    assert {p["fps"] for p in ps} == {24, 25, 30}
    assert {p["content"] for p in ps} == set(scenes.CONTENTS)
    for p in ps:
        assert 256 <= p["width"] <= 480 and 180 <= p["height"] <= 270
        assert p["width"] % 2 == 0 and p["height"] % 2 == 0
        assert 2.0 - 1e-9 <= p["n_frames"] / p["fps"] <= 4.0 + 1e-9
        present = [d for d in distortions.DISTORTIONS if p[f"s_{d}"] > 0]
        assert len(present) <= 2 and sum(d in distortions.TEMPORAL for d in present) <= 1
        assert all(0 < p[f"s_{d}"] <= 1 for d in present)
        assert p["distortions"] == "+".join(present)
        assert p["mos"] == labels.mos_from_strengths({d: p[f"s_{d}"] for d in present},
                                                 p["mos"] - p["mos_formula"]) or p["mos"] in (0.0, 100.0)
        if "compression" in present:
            assert p["codec"] == "h264" and p["crf"] > 29
    for d in distortions.DISTORTIONS:
        assert any(p[f"s_{d}"] > 0 for p in ps), d
    mos = np.array([p["mos"] for p in ps])
    hist = np.histogram(mos, bins=5, range=(0, 100))[0]
    assert hist.min() >= 0.1 * len(ps), hist  # spans the range roughly uniformly


def test_mos_formula_monotone_and_bounded():
    assert labels.mos_formula({}) == 100.0
    for d in distortions.DISTORTIONS:
        vals = [labels.mos_formula({d: s}) for s in np.linspace(0, 1, 11)]
        assert all(a > b for a, b in zip(vals, vals[1:])), d
        assert labels.mos_formula({d: 1.0}) == 100.0 - labels.WEIGHTS[d]
        # also monotone in presence of a second distortion
        other = "blur" if d != "blur" else "noise"
        assert labels.mos_formula({d: 0.6, other: 0.3}) < labels.mos_formula({d: 0.3, other: 0.3})
    assert labels.mos_from_strengths({"blur": 1, "noise": 1}, noise=-5) == 0.0
    assert labels.mos_from_strengths({}, noise=5) == 100.0
    with pytest.raises(ValueError):
        labels.mos_formula({"nope": 0.5})


def test_temporal_distortions_retime_content():
    base = dict(n_frames=30, s_stutter=0.0, s_judder=0.0, s_drops=0.0)
    rng = np.random.default_rng(0)
    assert np.array_equal(distortions.content_times(base, rng), np.arange(30))
    st = distortions.content_times({**base, "s_stutter": 1.0}, rng)
    assert len(np.unique(st)) == 5  # 30 frames at 1/6 of the frame rate
    ju = distortions.content_times({**base, "s_judder": 1.0}, rng)
    gaps = np.diff(ju)
    assert np.allclose(gaps[::2], 0.1) and np.allclose(gaps[1::2], 1.9)
    dr = distortions.content_times({**base, "s_drops": 0.5}, rng)
    assert (np.diff(dr) == 0).mean() >= 0.3 and np.all(np.diff(dr) >= 0)


def test_cli(tmp_path, capsys):
    rc = cli.main(["demo-data", "--out", str(tmp_path / "d"), "--n-videos", "2", "--seed", "4", "--workers", "1"])
    assert rc == 0
    assert (tmp_path / "d" / "labels.csv").is_file()
    assert "2 videos" in capsys.readouterr().out
    assert cli.main(["demo-data", "--out", str(tmp_path / "e"), "--n-videos", "0"]) == 2
    assert not (tmp_path / "e" / "labels.csv").exists()
