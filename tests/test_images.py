"""Images as inputs: the image-quality databases' label files as released (exact counts on fixtures
built from their documented columns), the `image` format and its manifest (clive-dev), a still's
decoding and features (one key frame, the zero motion row, the still flag), image prompts, and a
dataset whose labels match no file."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SHARED, write_video
from PIL import Image
from scipy.io import savemat

from pipeline.cli import main as cli_main
from pipeline.core import resolve
from pipeline.core.config import validate
from pipeline.core.errors import UserError
from pipeline.features.decoding.decode import VideoSampler
from pipeline.features.encoding.statistics_encoders import TemporalStats
from pipeline.features.extractor import Extractor
from pipeline.ingest.labels import read_labels
from pipeline.ingest.manifest import build_manifest
from pipeline.prompts.shards import build_samples, load_templates

CLIVE_DEV = SHARED / "datasets" / "clive-dev"


@pytest.fixture
def clive_dev():
    if not (CLIVE_DEV / "labels.csv").is_file():
        pytest.skip(f"clive-dev not found at {CLIVE_DEV} (the ../shared folder is absent)")
    return CLIVE_DEV


# ---- the databases' label files, as released ------------------------------------------------------
def write_clive_release(folder, n_rated=1162):
    """AllImages_release.mat (a MATLAB cell array of names: the 7 training images first) and
    AllMOS_release.mat (a 1 x N row of MOS in the same order), as the LIVE Challenge release has them."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"t{i}.bmp" for i in range(1, 8)] + [f"{i}.JPG" for i in range(3, 3 + n_rated)]
    cells = np.empty((len(names), 1), dtype=object)
    for i, n in enumerate(names):
        cells[i, 0] = np.array([n])
    mos = np.linspace(3.42, 92.43, len(names)).reshape(1, -1)
    savemat(folder / "AllImages_release.mat", {"AllImages_release": cells})
    savemat(folder / "AllMOS_release.mat", {"AllMOS_release": mos})
    return names, mos.ravel()


def test_clive_release_keeps_the_1162_rated_images(tmp_path):
    names, mos = write_clive_release(tmp_path / "Data")
    assert len(names) == 1169
    df = read_labels("clive", tmp_path / "Data" / "AllImages_release.mat")  # the MOS file is found beside it
    assert len(df) == 1162
    assert df["id"].iloc[0] == "3" and df["path"].iloc[0] == "3.JPG" and df["id"].iloc[-1] == "1164"
    assert not df["path"].str.startswith("t").any()  # the 7 training images are left out
    assert df["row"].iloc[0] == 8 and df["row"].iloc[-1] == 1169  # entry numbers of the release
    assert np.allclose(df["mos"], mos[7:]) and np.allclose(df["mos_raw"], mos[7:])
    both = read_labels("clive", [tmp_path / "Data" / "AllMOS_release.mat", tmp_path / "Data" / "AllImages_release.mat"])
    assert both["id"].tolist() == df["id"].tolist()
    savemat(tmp_path / "Data" / "AllMOS_release.mat", {"AllMOS_release": mos[:-1].reshape(1, -1)})
    with pytest.raises(UserError, match="1168 MOS values for the 1169 images"):
        read_labels("clive", tmp_path / "Data" / "AllImages_release.mat")


def test_koniq_scores_file_gives_10073_images_on_the_1_5_scale(tmp_path):
    n = 10073
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 40, (n, 5))
    mos = np.round(1 + 3 * rng.random(n), 6)
    f = tmp_path / "koniq10k_scores_and_distributions.csv"
    pd.DataFrame({"image_name": [f"{10000 + i * 37}.jpg" for i in range(n)],
                  **{f"c{k}": counts[:, k - 1] for k in range(1, 6)}, "c_total": counts.sum(1),
                  "MOS": mos, "SD": 0.5, "MOS_zscore": np.round((mos - 1) * 25, 4)}).to_csv(f, index=False)
    df = read_labels("koniq", f)
    assert len(df) == n
    assert df["id"].iloc[1] == "10037" and df["path"].iloc[1] == "10037.jpg"
    assert np.allclose(df["mos"], mos * 20)  # MOS (1-5), not MOS_zscore


def test_spaq_sheet_as_csv_gives_11125_images_and_xlsx_needs_openpyxl(tmp_path):
    n = 11125
    mos = np.round(np.linspace(2.0, 98.5, n), 2)
    f = tmp_path / "MOS and Image attribute scores.csv"  # the released sheet saved as CSV
    pd.DataFrame({"Image name": [f"{i:05d}.jpg" for i in range(1, n + 1)], "MOS": mos, "Brightness": 50.0,
                  "Colorfulness": 40.0, "Contrast": 45.0, "Noisiness": 30.0, "Sharpness": 60.0}).to_csv(f, index=False)
    df = read_labels("spaq", f)
    assert len(df) == n and df["id"].iloc[0] == "00001" and np.allclose(df["mos"], mos)
    try:
        import openpyxl  # noqa: F401
    except ImportError:
        xlsx = tmp_path / "MOS and Image attribute scores.xlsx"
        xlsx.write_bytes(b"PK\x03\x04")
        with pytest.raises(UserError, match="needs the openpyxl package.*save the sheet as CSV"):
            read_labels("spaq", xlsx)


def test_kadid_dmos_gives_10125_images_grouped_by_reference(tmp_path):
    refs, per_ref = 81, 125  # 25 distortions x 5 levels of each of 81 references
    rows = [(f"I{r:02d}_{d:02d}_{lv:02d}.png", f"I{r:02d}.png", round(1 + (lv + d % 3) / 2.5, 2), 0.5)
            for r in range(1, refs + 1) for d in range(1, 26) for lv in range(1, 6)]
    f = tmp_path / "dmos.csv"
    pd.DataFrame(rows, columns=["dist_img", "ref_img", "dmos", "var"]).to_csv(f, index=False)
    df = read_labels("kadid", f)
    assert len(df) == refs * per_ref == 10125
    assert df["id"].iloc[0] == "I01_01_01" and df["group"].iloc[0] == "I01.png"
    manifest, _ = build_manifest("kadid", f, k=5)
    folds = manifest.groupby("group")["fold"].nunique()
    assert len(folds) == 81 and (folds == 1).all()  # a reference's distorted versions share a fold
    assert sorted(manifest["fold"].unique()) == [0, 1, 2, 3, 4]


# ---- the image format, its manifest, and labels that match no file ---------------------------------
def test_manifest_of_clive_dev_with_the_image_format(clive_dev, tmp_path):
    out = tmp_path / "m.csv"
    assert cli_main(["manifest", "--format", "image", "--labels", str(clive_dev / "labels.csv"),
                     "--videos", str(clive_dev / "images"), "--out", str(out)]) == 0
    m = pd.read_csv(out, dtype={"id": str})
    assert len(m) == 310 and m["path"].str.endswith(".JPG").all()
    assert m["id"].iloc[0] == m["path"].iloc[0][:-4] and "mos_std" in m.columns
    assert len(pd.read_csv(tmp_path / "m.missing.csv")) == 0
    assert sorted(m["fold"].value_counts().index) == [0, 1, 2, 3, 4]


def test_image_names_without_extension_and_a_folder_of_images(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for name in ("a.png", "b.jpeg", "c.bmp", "stray.jpg"):
        Image.new("RGB", (8, 8)).save(imgs / name)
    (tmp_path / "l.csv").write_text("name,mos\na,10\nb.jpeg,20\nc,30\nd,40\n")
    m, missing = build_manifest("image", tmp_path / "l.csv", imgs)
    assert m["path"].tolist() == ["a.png", "b.jpeg", "c.bmp"] and m["id"].tolist() == ["a", "b", "c"]
    assert dict(zip(missing["path"], missing["reason"])) == {"d": "file not found", "stray.jpg": "no label"}
    unrated, _ = build_manifest("image", imgs)  # a folder of images: every image, unrated
    assert unrated["id"].tolist() == ["a", "b", "c", "stray"] and unrated["mos"].isna().all()


def test_labels_matching_no_file_stop_with_the_folder_and_the_names(tmp_path, capsys):
    """Used to write an empty manifest and exit 0 (it looked for `<name>.mp4` only)."""
    imgs = tmp_path / "photos"
    imgs.mkdir()
    for name in ("533.JPG", "536.JPG"):
        Image.new("RGB", (8, 8)).save(imgs / name)
    (tmp_path / "l.csv").write_text("name,mos\n533.JPG,70\n536.JPG,40\n")
    out = tmp_path / "m.csv"
    rc = cli_main(["manifest", "--format", "generic", "--labels", str(tmp_path / "l.csv"), "--videos", str(imgs),
                   "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert str(imgs) in err and "533.JPG.mp4, 536.JPG.mp4" in err and "use format: image" in err
    videos = tmp_path / "videos"  # any format: a video folder whose files the labels do not name
    write_video(videos / "x.mp4", n_frames=3)
    (tmp_path / "k.csv").write_text("flickr_id,mos\n1001,3.5\n1002,2.0\n")
    with pytest.raises(UserError, match=f"in {videos} \\(looked for 1001.mp4, 1002.mp4\\)"):
        build_manifest("konvid", tmp_path / "k.csv", videos)


# ---- a still: decoded once, one key frame, the motion row of "no motion" ----------------------------
def offline_config():
    return validate({"datasets": {"t": {"format": "image", "labels": "labels.csv"}}, "models": {"preset": "offline"},
                     "sampling": {"keyframe_mode": "fragments"}, "features": {"batch_size": 8}})


def test_stills_extract_to_one_key_frame_and_zero_motion_beside_a_video(tmp_path):
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    video = write_video(tmp_path / "c.mp4", n_frames=50)
    ex = Extractor(resolve.of(offline_config()).features)
    decoded = [ex.decode(tmp_path / n) for n in ("a.jpg", "b.png", "c.mp4")]
    a, b, c = decoded
    assert a.meta["still"] and b.meta["still"] and "still" not in c.meta
    assert a.keyframes.shape == (1, 224, 224, 3) and a.chunks.shape[0] == 0  # no fake clip
    assert (a.meta["width"], a.meta["height"], a.meta["backend"]) == (400, 300, "pillow")
    # fragments of a still are cut at its native resolution, as a video's key frames
    assert np.array_equal(a.keyframes[0, :32, :32], np.asarray(Image.open(tmp_path / "a.jpg"))[
        round(300 / 14 - 16): round(300 / 14 - 16) + 32, round(400 / 14 - 16): round(400 / 14 - 16) + 32])
    outs, _, _ = ex.encode(decoded)
    (sa, ma), (sb, mb), (sc, mc) = outs
    assert sa.shape == sb.shape == (1, 10, 976) and sc.shape[0] == 2
    assert ma.shape == mb.shape == (1, 10) and not ma.any() and not mb.any()
    assert mc.shape == (2, 10) and mc.any()
    assert video.is_file()


def test_a_shard_of_stills_extracts_and_its_store_marks_them(tmp_path):
    """A batch of stills alone has no chunk to encode (it used to divide by zero timing the motion
    encoder); the store records each still and its zero motion row, beside a video of another shard."""
    from pipeline.features.extract import extract_shard
    from pipeline.features.stores.store_reader import FeatureStore

    torch.set_num_threads(2)
    (tmp_path / "v").mkdir()
    for i in range(3):
        Image.new("RGB", (64, 48), (40 * i, 90, 200)).save(tmp_path / "v" / f"s{i}.png")
    write_video(tmp_path / "v" / "c.mp4", n_frames=30)
    manifest = tmp_path / "m.csv"
    pd.DataFrame([("s0", "s0.png", 0), ("s1", "s1.png", 0), ("s2", "s2.png", 0), ("c", "c.mp4", 1)],
                 columns=["id", "path", "shard"]).to_csv(manifest, index=False)
    features = resolve.of(offline_config()).features
    for shard in (0, 1):
        extract_shard(features, "t", manifest, tmp_path / "v", shard, tmp_path / f"s{shard}.zarr", progress=False,
                      decode_workers=0)
    stills, video = FeatureStore(tmp_path / "s0.zarr"), FeatureStore(tmp_path / "s1.zarr")
    for vid in ("s0", "s1", "s2"):
        assert stills.media(vid) == "image" and stills.video_meta(vid)["motion_s"] == 0.0
        assert stills.spatial(vid).shape == (1, 10, 976) and not np.asarray(stills.motion(vid)).any()
    assert video.media("c") == "video" and np.asarray(video.motion("c")).shape == (1, 10)


def test_a_static_video_has_the_stills_zero_frame_difference_statistics():
    """The still's motion row (zeros) is what the temporal statistics give a video that does not move,
    in every frame-difference statistic; only feature 7 (distinct source frames per chunk frame) tells a
    static video (its frame rate) from a still (no frames in time: 0)."""
    frame = np.random.default_rng(1).integers(0, 255, (1, 3, 1, 16, 16)).astype(np.uint8)
    static = torch.from_numpy(np.repeat(frame, 32, axis=2))
    ids = torch.arange(32).view(1, 32)  # 32 distinct source frames, all identical
    row = TemporalStats(16, 4)(static, ids)[0].numpy()
    assert np.all(np.delete(row, 7) == 0) and row[7] == 1.0


def test_sampler_decodes_each_image_format_once_as_a_still(tmp_path):
    sampler = VideoSampler(keyframe_fps=1, max_keyframes=4, chunk_frames=8, max_seconds=4, key_size=28,
                           chunk_size=16, keyframe_mode="stretch")
    for name in ("x.jpg", "x.png", "x.bmp", "x.tiff", "x.webp"):
        Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / name)
        d = sampler.decode(tmp_path / name)
        assert d.meta["still"] and d.keyframes.shape == (1, 28, 28, 3) and d.chunks.shape == (0, 8, 16, 16, 3)
        assert abs(int(d.keyframes[0, 14, 14, 0]) - 200) <= 3
    (tmp_path / "bad.jpg").write_text("not an image")
    with pytest.raises(Exception, match="not a readable image"):
        sampler.decode(tmp_path / "bad.jpg")


# ---- prompts ----------------------------------------------------------------------------------------
# sha256 of the shipped bank's 40 questions as they read before the bank had `{media}` marks
VIDEO_BANK_SHA256 = "8149e877dddc762c6b3cbcb87a4ecd674c0c0f74c6ac8b7ec23ee5ba7c2d0c04"


def test_prompts_say_image_for_an_image_and_video_questions_are_unchanged():
    bank = load_templates()
    assert hashlib.sha256("\n".join(bank["score"] + bank["level"]).encode()).hexdigest() == VIDEO_BANK_SHA256
    manifest = pd.DataFrame({"id": ["533", "v1"], "path": ["533.JPG", "v1.mp4"], "mos": [70.0, 30.0],
                             "level": ["good", "poor"], "split": "kfold", "fold": 0})
    samples = build_samples(manifest, "mixed", seed=0)
    image_q = [s["question"] for s in samples if s["id"] == "533"]
    video_q = [s["question"] for s in samples if s["id"] == "v1"]
    for q in image_q:
        assert "image" in q and "video" not in q and "clip" not in q and "{" not in q
    for s in samples:
        if s["id"] == "v1":
            assert s["question"] == bank[s["type"]][s["template"]]
    assert all("video" in q for q in video_q)
    image_bank = bank.for_media("image")
    text = json.dumps(image_bank)
    assert "video" not in text and " a image" not in text and "an image" in text


# ---- images and videos train one model; `lmmvqa score` on an image ---------------------------------
def write_photos(folder, n=8, seed=0):
    """n small JPEG photos, blurred / noised by their index (a MOS that follows), and their label file."""
    from PIL import ImageFilter

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        base = np.kron(rng.integers(40, 220, (12, 16, 3)), np.ones((8, 8, 1))).astype(np.uint8)
        img = Image.fromarray(base).filter(ImageFilter.GaussianBlur(i / 2))
        noisy = np.clip(np.asarray(img, dtype=float) + rng.normal(0, 2 + 3 * i, base.shape), 0, 255)
        Image.fromarray(noisy.astype(np.uint8)).save(folder / f"p{i}.jpg", quality=90)
        rows.append((f"p{i}.jpg", round(90 - 9 * i, 3)))
    pd.DataFrame(rows, columns=["name", "mos"]).to_csv(folder.parent / "labels.csv", index=False)


MIXED = {
    "datasets": {
        "demo": {"format": "generic", "labels": "resources/demo/labels.csv", "videos": "resources/demo/videos",
                 "generate": {"n_videos": 6, "seed": 3}, "split": {"scheme": "kfold", "k": 2, "seed": 0}},
        "photos": {"format": "image", "labels": "photos/labels.csv", "videos": "photos/images",
                   "split": {"scheme": "kfold", "k": 2, "seed": 0}},
    },
    "sampling": {"max_keyframes": 2, "max_seconds": 2, "keyframe_mode": "fragments"},
    "features": {"shard_size": 8},
    "training": {"max_steps": 2, "batch_size": 4, "val_fraction": 0.2},
    "evaluation": {"bootstrap": 10},
    "experiments": {"mixed": {"train": ["demo:train", "photos:train"], "test": ["demo:test", "photos:test"]}},
}


@pytest.mark.slow
def test_images_and_videos_train_one_model_and_score_an_image(tmp_path):
    """A config with an image dataset and a video dataset in one experiment runs through the workflow;
    the image prompts say image, the stores mark the stills, and `lmmvqa score` on a photo gives the score
    the evaluation gave it (same features, same image questions)."""
    import subprocess

    from workflow_run import BIN, snakemake, write_config

    write_photos(tmp_path / "photos" / "images")
    write_config(tmp_path, MIXED)
    snakemake(tmp_path, "results/eval/mixed/photos/test/predictions.csv")
    prompts = [json.loads(line) for f in sorted((tmp_path / "results/prompts/photos").glob("*.jsonl"))
               for line in f.read_text().splitlines()]
    assert len(prompts) == 16 and all("image" in p["question"] and "video" not in p["question"] for p in prompts)
    card = (tmp_path / "results/models/mixed/README.md").read_text()
    assert "photos" in card and "demo" in card
    preds = pd.read_csv(tmp_path / "results/eval/mixed/photos/test/predictions.csv", dtype={"id": str})
    assert len(preds) >= 2 and preds["prob_score"].between(0, 100).all()
    photo = preds["id"].iloc[0]
    proc = subprocess.run([str(BIN / "lmmvqa"), "score", f"photos/images/{photo}.jpg", "--config", "config.yaml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    line = json.loads(proc.stdout)
    assert line["media"] == "image" and line["duration"] == 0.0 and line["backend"] == "pillow"
    assert line["prob_score"] == pytest.approx(preds.set_index("id").loc[photo, "prob_score"], abs=1e-3)


# ---- config/clive-dev.yaml ------------------------------------------------------------------------
@pytest.mark.slow
def test_clive_dev_config_plans_its_folds_and_names_the_folder_when_it_is_absent(clive_dev, tmp_path):
    """A dry run of config/clive-dev.yaml from the repository plans the manifest, one model per fold and
    one on all folds; in a clone without ../shared it stops before any job, naming the label file and
    what ../shared is."""
    import yaml
    from conftest import REPO
    from workflow_run import snakemake

    work = tmp_path / "work"
    work.mkdir()
    cfg = yaml.safe_load((REPO / "config/clive-dev.yaml").read_text())
    for key in ("labels", "videos"):
        cfg["datasets"]["clive-dev"][key] = str(REPO / cfg["datasets"]["clive-dev"][key])
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake(work, "-n", "--quiet", "rules").stdout
    counts = {p[0]: int(p[1]) for p in (line.split() for line in out.splitlines()) if len(p) == 2 and p[1].isdigit()}
    assert counts["manifest"] == 1 and counts["train_fold"] == 5 and counts["train_all"] == 1
    # the config as shipped, run from a folder with no ../shared beside it (a user's clone)
    assert not (tmp_path / "shared").exists()
    (work / "config.yaml").write_text((REPO / "config/clive-dev.yaml").read_text())
    proc = snakemake(work, "-n", check=False)
    said = proc.stderr + proc.stdout
    assert proc.returncode != 0 and "Traceback" not in said
    assert "Error: dataset 'clive-dev': labels not found: ../shared/datasets/clive-dev/labels.csv; ../shared is the " \
           "development data folder kept beside the repository, absent in a user's clone" in said, said
