"""Synth datasets (pipeline/synth): graded variants of tiny generated references, scored by full-reference
metrics; the ladder's order, determinism, groups and sources, failures, and the workflow's incremental jobs."""
from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.core import resolve
from pipeline.core.config import validate
from pipeline.core.errors import UserError
from pipeline.ingest.demo import dataset as demo_dataset
from pipeline.ingest.demo.labels import clean_params, sample_params
from pipeline.ingest.demo.video import render_video
from pipeline.synth import collect, distortions, ffmpeg, plan, segments, transmission, variants

try:
    ffmpeg.executable()
except UserError as exc:  # pragma: no cover - the pinned dependency is missing
    pytest.skip(str(exc), allow_module_level=True)


def render_reference(path: Path, index: int, content: str, size=(128, 96), frames=16, fps=8) -> Path:
    """A small clean demo render (moving, textured content) as a lossless reference."""
    params = clean_params({**sample_params(5, index), "width": size[0], "height": size[1],
                           "n_frames": frames, "fps": fps, "content": content})
    path.parent.mkdir(parents=True, exist_ok=True)
    render_video(params, path)
    return path


def synth_config(references, families, **extra) -> dict:
    ds = {"format": "synth", "references": str(references), "synth": {"families": families, **extra.pop("synth", {})},
          **extra}
    return validate({"datasets": {"syn": ds}})


def synth_dataset(cfg: dict):
    """The resolved synth dataset `syn` of a config."""
    return plan.synth_dataset(resolve.resolve(cfg).datasets, "syn")


def build(cfg: dict, work: Path, threads: int = 2):
    """The whole stage through the package (plan, segments, variants, collect) into `work`."""
    ds = synth_dataset(cfg)
    table, plan_failures = plan.plan(ds)
    references = Path(ds.references)
    seg_dirs = [work / "segments" / r for r in table["reference"].unique()]
    for folder in seg_dirs:
        segments.cut_reference(table, folder.name, references, folder)
    shard_dirs = []
    for (ref, shard), _ in table.groupby(["reference", "shard"]):
        shard_dirs.append(work / "variants" / ref / f"shard-{shard:05d}")
        variants.build_shard(table, ref, shard, work / "segments" / ref, shard_dirs[-1], threads=threads)
    labels, failures = collect.collect(table, plan_failures, seg_dirs, shard_dirs, plan.synth_settings(ds)["metric"],
                                       work / "videos")
    return table, labels, failures


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------
# the ladder
# ------------------------------------------------------------------------------------------------
def test_ladder_checks_names_and_ranges():
    rungs = distortions.ladder({"x264": {"levels": 3, "crf": [20, 40]}, "blur": {}})
    assert [(r.family.name, r.levels, r.ranges) for r in rungs][0] == ("x264", 3, {"crf": (20.0, 40.0)})
    assert rungs[1].levels == distortions.REGISTRY["blur"].levels
    delivery = {n for n, f in distortions.REGISTRY.items() if f.kind == "delivery"}
    assert {r.family.name for r in distortions.ladder(None)} == delivery  # `families: null`: today's ladder
    assert {"motion_blur", "exposure", "jpeg", "capture_mix", "packet_loss"} <= set(distortions.REGISTRY) - delivery
    for families, words in [({"x266": {}}, "unknown distortion family"), ({"x264": {"qp": [1, 2]}}, "unknown parameter"),
                            ({"x264": {"crf": [40, 20]}}, "weak 40 > strong 20"), ({"x264": {"crf": [0, 99]}}, "outside"),
                            ({"x264": {"levels": 0}}, "levels"), ({"noise": {"strength": [1.5, 9]}}, "integer")]:
        with pytest.raises(UserError, match=words):
            distortions.ladder(families)


def test_levels_are_ordered_and_drawn_inside_their_share():
    rung = distortions.ladder({"x264": {"levels": 4, "crf": [10, 50]}, "fps_drop": {"levels": 3, "divisor": [2, 6]}})
    crfs = [distortions.draw(rung[0], level, distortions.variant_seed(0, "r", 0, "x264", level))["crf"]
            for level in range(4)]
    assert all(10 + 10 * i + 1.5 <= c <= 10 + 10 * i + 8.5 for i, c in enumerate(crfs)), crfs
    assert [distortions.draw(rung[1], level, 7)["divisor"] for level in range(3)] == [2, 4, 6]
    assert distortions.variant_seed(0, "r", 0, "x264", 1) != distortions.variant_seed(0, "r2", 0, "x264", 1)


def test_config_derives_a_synth_datasets_outputs():
    cfg = synth_config("refs", None)
    ds = cfg["datasets"]["syn"]
    assert (ds["labels"], ds["videos"]) == ("results/synth/syn/labels.csv", "cache/synth/syn/videos")
    assert ds["synth"]["metric"] == "vmaf" and ds["synth"]["segment_seconds"] == 4.0
    assert validate(json.loads(json.dumps(cfg)))["datasets"]["syn"] == ds  # the resolved config validates again
    with pytest.raises(UserError, match="datasets.syn.labels"):
        validate({"datasets": {"syn": {"format": "synth", "references": "r", "labels": "mine.csv"}}})
    with pytest.raises(UserError, match="references"):
        validate({"datasets": {"syn": {"format": "synth"}}})
    with pytest.raises(UserError, match="named `videos`"):
        validate({"datasets": {"syn": {"format": "synth", "references": "refs", "generate": {"n_videos": 2}}}})


# ------------------------------------------------------------------------------------------------
# a set from tiny references
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ladder_set(tmp_path_factory):
    """Every family at two levels on one textured, moving reference."""
    work = tmp_path_factory.mktemp("ladder")
    render_reference(work / "refs" / "tex.mkv", 0, "texture")
    cfg = synth_config(work / "refs", {name: {"levels": 2} for name in distortions.REGISTRY},
                       synth={"shard_size": 64})
    return (*build(cfg, work), work / "videos")


def test_every_family_scores_its_stronger_level_lower(ladder_set):
    _, labels, failures, _ = ladder_set
    assert failures.empty, failures
    assert sorted(labels["distortion"].unique()) == sorted(distortions.REGISTRY)
    for family, rows in labels.groupby("distortion"):
        weak, strong = rows.sort_values("severity").to_dict("records")
        assert weak["psnr"] > strong["psnr"] and weak["ssim"] > strong["ssim"], (family, weak, strong)
        if distortions.REGISTRY[family].kind != "capture":  # VMAF is not what capture families are scored by
            assert weak["vmaf"] > strong["vmaf"], (family, weak, strong)


def test_capture_families_draw_their_direction_and_save_jpeg(ladder_set):
    seg = distortions.Segment(640, 360, Fraction(30), 60)
    rung = {r.family.name: r for r in distortions.ladder({"exposure": {}, "motion_blur": {}})}
    exposures, streaks = set(), set()
    for seed in range(12):
        filt = distortions.recipe("exposure", distortions.draw(rung["exposure"], 1, seed), seg, seed).filters[0]
        exposures.add(filt.split("=")[1].split(":")[0])
        streaks.add(distortions.recipe("motion_blur", {"length": 20, "crf": 16}, seg, seed).filters[0])
    assert exposures == {"romax", "rimax"}  # under (output scaled down) and over (input range cut: clipping)
    assert streaks == {"avgblur=sizeX=10:sizeY=1", "avgblur=sizeX=1:sizeY=10"}
    stops = distortions.draw(rung["exposure"], 1, 0)["stops"]
    assert f"{2.0 ** -stops:.4f}" in distortions.recipe("exposure", {"stops": stops, "crf": 16}, seg, 0).filters[0]
    _, labels, _, videos = ladder_set
    jpeg = labels[labels["distortion"].isin(["jpeg", "capture_mix"])]
    assert set(jpeg["codec"]) == {"mjpeg"} and set(jpeg["container"]) <= {"mp4", "mkv"}
    from pipeline.ingest.probe import probe_video
    for row in jpeg.itertuples():  # the files decode as Motion JPEG at the reference's size
        info = probe_video(videos / row.name)
        assert (info["codec"], info["width"], info["height"]) == ("mjpeg", 128, 96)


def test_packets_are_lost_in_bursts_after_the_protected_start():
    packets = [bytes([0x47, i // 256, i % 256]) + bytes(185) for i in range(400)]
    stream = b"".join(packets)
    loss = transmission.Loss(percent=2.0, crf=20, gop=8, seed=5)
    arrived, lost = transmission.lose_packets(stream, loss)
    assert lost == 8 and len(arrived) == (400 - 8) * 188
    kept = [arrived[i:i + 188] for i in range(0, len(arrived), 188)]
    assert kept[:20] == packets[:20]  # the first 5 %: tables and the first key frame arrive
    assert kept == [q for q in packets if q in set(kept)]  # in order, none invented
    assert transmission.lose_packets(stream, loss) == (arrived, lost)  # the seed decides
    assert transmission.lose_packets(stream, transmission.Loss(2.0, 20, 8, seed=6))[0] != arrived
    assert transmission.lose_packets(stream, transmission.Loss(0.01, 20, 8, seed=5))[1] == 1  # at least one
    with pytest.raises(ValueError, match="MPEG-TS"):
        transmission.lose_packets(b"\x00" * 376, loss)


def test_a_lossy_stream_shows_the_same_damage_every_time(tmp_path):
    ref = render_reference(tmp_path / "ref.mkv", 0, "texture")
    args = ["-threads", "1", "-i", ref]
    loss = transmission.Loss(percent=3.0, crf=20, gop=8, seed=11)
    outs = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    lost = [transmission.send_and_receive(args, loss, distortions.encoder_args("h264", 20),
                                          distortions.encoder_args("h264", 16), out) for out in outs]
    assert lost[0] == lost[1] >= 1
    assert outs[0].read_bytes() == outs[1].read_bytes()
    clean = tmp_path / "clean.mp4"
    ffmpeg.run([*args, "-an", *distortions.encoder_args("h264", 16), *ffmpeg.BITEXACT, clean])
    from pipeline.synth.fr_metrics import score
    damaged, intact = (score(p, ref, 128, 96, Fraction(8), 16) for p in (outs[0], clean))
    assert damaged["psnr"] < intact["psnr"] - 1.0, (damaged, intact)


def test_labels_are_in_range_and_describe_the_variant(ladder_set):
    table, labels, _, _ = ladder_set
    assert list(labels.columns) == collect.LABEL_COLUMNS
    assert labels["mos"].between(0, 100).all() and labels["vmaf"].between(0, 100).all()
    assert (labels["mos"] == labels["vmaf"]).all()
    assert labels["ssim"].between(0, 1).all() and (labels["psnr"] > 10).all()
    rows = labels.set_index("distortion")
    assert rows.loc["downscale", "width"].max() < 128 and rows.loc["fps_drop", "fps"].min() < 8
    assert (labels["frames"] > 0).all()
    for row in labels.itertuples():
        assert set(json.loads(row.params)) == set(distortions.REGISTRY[row.distortion].params)
    assert len(labels) == len(table) == 2 * len(distortions.REGISTRY)


@pytest.fixture(scope="module")
def refs_folder(tmp_path_factory):
    """Two references, a file that is no video, and a reference cut short after its header."""
    refs = tmp_path_factory.mktemp("refs")
    render_reference(refs / "alpha.mkv", 1, "pan")
    render_reference(refs / "sub" / "beta.mkv", 2, "shapes", size=(96, 64), frames=12)
    (refs / "broken.mp4").write_bytes(b"not a video " * 200)
    good = render_reference(refs / "short.mkv", 3, "grating", frames=40).read_bytes()
    (refs / "short.mkv").write_bytes(good[: len(good) // 3])
    return refs


SMALL = {"x264": {"levels": 2, "crf": [16, 44]}, "blur": {"levels": 1}}


def test_a_set_is_byte_identical_when_rebuilt(refs_folder, tmp_path):
    cfg = synth_config(refs_folder, SMALL, synth={"shard_size": 2})
    first = build(cfg, tmp_path / "a", threads=2)
    second = build(cfg, tmp_path / "b", threads=1)
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    for one, two in zip(first, second):
        pd.testing.assert_frame_equal(one, two)
    assert len(digests(tmp_path / "a" / "videos")) == len(first[1]) == 6


def test_groups_sources_and_failures(refs_folder, tmp_path):
    cfg = synth_config(refs_folder, SMALL, synth={"shard_size": 2, "metric": "psnr"})
    table, labels, failures = build(cfg, tmp_path)
    assert sorted(labels["reference"].unique()) == ["alpha", "sub_beta"]
    assert set(zip(labels["reference"], labels["source"], labels["group"])) == {
        ("alpha", "alpha", "alpha-0"), ("sub_beta", "sub_beta", "sub_beta-0")}
    assert labels["mos"].round(3).tolist() == [round(min(100, max(0, 100 * (p - 20) / 30)), 3) for p in labels["psnr"]]
    by_ref = failures.set_index("id")
    assert set(by_ref.index) == {"broken", "short"}
    assert by_ref.loc["broken", "stage"].startswith("probe") and "Invalid data" in by_ref.loc["broken", "error"]
    assert by_ref.loc["short", "stage"] == "segment 0" and "frames" in by_ref.loc["short", "error"]
    assert table["shard"].max() == 1  # 3 variants per reference in shards of 2


def test_reference_labels_give_groups_and_sources(refs_folder, tmp_path):
    listing = tmp_path / "refs.csv"
    listing.write_text("name,group,source,mos\nsub/beta.mkv,city-1,city,99\nalpha.mkv,,bikes,98\n")
    cfg = synth_config(refs_folder, SMALL, reference_labels=str(listing))
    table, _ = plan.plan(synth_dataset(cfg))
    got = table.drop_duplicates("reference").set_index("reference")[["path", "group", "source"]]
    assert got.to_dict("index") == {"alpha": {"path": "alpha.mkv", "group": "alpha-0", "source": "bikes"},
                                    "sub_beta": {"path": "sub/beta.mkv", "group": "city-1", "source": "city"}}
    listing.write_text("name\n../outside.mkv\n")
    with pytest.raises(UserError, match="escapes"):
        plan.plan(synth_dataset(cfg))


def test_the_synth_stages_take_the_resolved_synth_dataset():
    datasets = resolve.resolve({"datasets": {"syn": {"format": "synth", "references": "refs"},
                                             "t": {"format": "generic", "labels": "labels.csv"}}}).datasets
    ds = plan.synth_dataset(datasets, "syn")
    assert ds.references == "refs" and plan.synth_settings(ds)["metric"] == "vmaf"
    for name in ("t", "nope"):
        with pytest.raises(UserError, match=f"dataset '{name}' is not a synth dataset of the config"):
            plan.synth_dataset(datasets, name)
    with pytest.raises(UserError, match="dataset 't' is not a synth dataset of the config"):
        plan.synth_settings(datasets["t"])


def test_segments_spread_over_a_long_reference():
    assert plan.segment_starts(100, 40, 2) == [0, 60]
    assert plan.segment_starts(100, 40, 5) == [0, 60]  # at most n_frames // seg_frames
    assert plan.segment_starts(30, 30, 3) == [0]  # a short reference: one segment, all of it
    assert plan.segment_size(1281, 721, 960) == (960, 540) and plan.segment_size(407, 721, 960) == (406, 720)


# ------------------------------------------------------------------------------------------------
# the workflow: cached, incremental
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_workflow_reruns_nothing_and_adds_only_a_new_references_jobs(tmp_path):
    from test_workflow import snakemake

    refs = tmp_path / "refs"
    render_reference(refs / "a.mkv", 1, "pan", size=(96, 64), frames=8)
    render_reference(refs / "b.mkv", 2, "texture", size=(96, 64), frames=8)
    cfg = {"datasets": {"syn": {"format": "synth", "references": "refs", "split": {"k": 2},
                                "synth": {"families": {"x264": {"levels": 1}}}}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(tmp_path)
    labels = pd.read_csv(tmp_path / "results/synth/syn/labels.csv")
    assert labels["source"].tolist() == ["a", "b"]
    manifest = pd.read_csv(tmp_path / "results/manifest/syn.csv")
    assert len(manifest) == 2
    dry = snakemake(tmp_path, "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr

    render_reference(refs / "c.mkv", 3, "shapes", size=(96, 64), frames=8)
    built = [p for d in ("segments", "variants") for p in (tmp_path / "cache/synth/syn" / d).rglob("*") if p.is_file()]
    before = {p: p.stat().st_mtime_ns for p in built}
    proc = snakemake(tmp_path)
    out = proc.stdout + proc.stderr
    stats = dict(line.split() for line in out.split("Job stats:")[1].splitlines()[2:] if len(line.split()) == 2)
    assert stats["synth_plan"] == "1" and stats["synth_labels"] == "1"
    ran = [line.split("(Rule: ")[1].rstrip(")") for line in out.splitlines() if "Finished jobid" in line]
    assert sorted(ran) == ["manifest", "synth_labels", "synth_plan", "synth_segments", "synth_variants"]
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # a's and b's files untouched
    assert len(pd.read_csv(tmp_path / "results/synth/syn/labels.csv")) == 3


def test_the_user_page_lists_every_family():
    page = (Path(__file__).resolve().parents[1] / "docs" / "synth.md").read_text()
    rows = {line.split("|")[1].strip(" `") for line in page.splitlines() if line.startswith("| `")}
    assert set(distortions.REGISTRY) <= rows


def test_the_demo_generator_renders_clean_lossless_references(tmp_path):
    labels = demo_dataset.generate(tmp_path, n_videos=1, seed=4, workers=1, clean=True)
    row = labels.iloc[0]
    assert (row["name"], row["codec"], row["mos"], row["distortions"]) == ("clean_0000.mkv", "ffv1", 100.0, "")
    from pipeline.ingest.probe import probe_video
    info = probe_video(tmp_path / "videos" / "clean_0000.mkv")
    assert info["codec"] == "ffv1" and (info["width"], info["height"]) == (row["width"], row["height"])
    distorted = sample_params(4, 0)
    assert (distorted["content"], distorted["width"], distorted["n_frames"]) == (row["content"], row["width"], row["n_frames"])
