"""Label readers on the real label files, and every bad-input case."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.errors import UserError
from pipeline.ingest.labels import FORMATS, id_and_path, read_labels, split_from_filename

REAL = [  # format, files, rows, (low, high) of mos_raw, scale factor
    ("konvid", ["KoNViD_1k_mos.csv"], 1200, 20),
    ("youtube_ugc", ["youtube_ugc_whole.csv"], 1142, 20),
    ("live_vqc", ["LIVE-VQC_.csv"], 585, 1),
    ("live_gaming", ["LIVE_Gaming.csv"], 600, 1),
    ("lsvq", ["LSVQ_whole_test.csv"], 7220, 1),
    ("lsvq", ["LSVQ_whole_test_1080p.csv"], 3561, 1),
]


@pytest.mark.parametrize("fmt,files,rows,factor", REAL, ids=[r[1][0] for r in REAL])
def test_real_label_files(shared_labels, fmt, files, rows, factor):
    df = read_labels(fmt, [shared_labels / f for f in files])
    assert len(df) == rows
    assert list(df["row"]) == list(range(1, rows + 1))
    assert df["id"].is_unique and df["path"].is_unique
    assert df["mos"].between(0, 100).all() and df["mos"].notna().all()
    assert np.allclose(df["mos"], df["mos_raw"] * factor)
    assert not df["path"].str.startswith("/").any()
    assert not any(".." in p.split("/") for p in df["path"])  # `..` inside a name (LSVQ has some) is fine
    assert df["path"].str.endswith(".mp4").all()


def test_konvid_ids_and_scale(shared_labels):
    df = read_labels("konvid", shared_labels / "KoNViD_1k_mos.csv")
    first = df.iloc[0]
    assert (first["id"], first["path"]) == ("3339962845", "3339962845.mp4")  # quoted id in the file
    assert first["mos_raw"] == pytest.approx(4.64) and first["mos"] == pytest.approx(92.8)
    assert set(df["split"]) == {"kfold"}


def test_name_with_and_without_extension(shared_labels):
    vqc = read_labels("live_vqc", shared_labels / "LIVE-VQC_.csv").iloc[0]
    assert (vqc["id"], vqc["path"], vqc["mos"]) == ("A001", "A001.mp4", pytest.approx(80.232))
    gaming = read_labels("live_gaming", shared_labels / "LIVE_Gaming.csv").iloc[0]
    assert (gaming["id"], gaming["path"]) == ("ARKSuvivalEvolved-001", "ARKSuvivalEvolved-001.mp4")
    ugc = read_labels("youtube_ugc", shared_labels / "youtube_ugc_whole.csv").iloc[0]
    # `..._t_20.0.mp4`: only the video extension is dropped from the id
    assert ugc["id"] == "Animation_1080P-05f8_crf_10_ss_00_t_20.0"
    assert ugc["mos"] == pytest.approx(3.901 * 20)


def test_lsvq_subfolders_splits_and_concatenation(shared_labels):
    df = read_labels("lsvq", [shared_labels / "LSVQ_whole_test.csv", shared_labels / "LSVQ_whole_test_1080p.csv"])
    assert len(df) == 7220 + 3561
    assert (df.iloc[0]["id"], df.iloc[0]["path"]) == ("yfcc-batch1/747", "yfcc-batch1/747.mp4")
    assert df["split"].value_counts().to_dict() == {"test": 7220, "test_1080p": 3561}
    assert df.iloc[7220]["row"] == 1 and df.iloc[7220]["split"] == "test_1080p"  # row numbers are per file
    # LSVQ stores every video as `<name>.mp4`, even names that carry another extension
    mov = df[df["id"] == "ia-batch12/xmas.flv"].iloc[0]
    assert mov["path"] == "ia-batch12/xmas.flv.mp4" and mov["split"] == "test"


def test_lsvq_is_test_column_and_train_name(tmp_path):
    f = tmp_path / "LSVQ_whole_train.csv"
    f.write_text("name,p1,mos,is_test\nyfcc-batch1/1,x,50,False\nyfcc-batch1/2,y,60,True\n")
    assert read_labels("lsvq", f)["split"].tolist() == ["train", "test"]
    g = tmp_path / "LSVQ_whole_train2.csv"
    g.write_text("name,mos\nyfcc-batch1/3,50\n")
    assert read_labels("lsvq", g)["split"].tolist() == ["train"]
    assert split_from_filename("LSVQ_whole_test_1080p.csv") == "test_1080p"


def test_generic_extra_columns_and_scale_override(tmp_path):
    f = tmp_path / "labels.csv"
    f.write_text("name,mos,content\nsub/a.webm,1.5,x\nb,5,y\n")
    df = read_labels("generic", f)
    assert df["id"].tolist() == ["sub/a", "b"] and df["path"].tolist() == ["sub/a.webm", "b.mp4"]
    assert df["mos"].tolist() == [1.5, 5.0]
    assert df["content"].tolist() == ["x", "y"]  # extra columns are kept (folds and exclusions use them)
    df5 = read_labels("generic", f, mos_scale="1-5")
    assert df5["mos"].tolist() == [30.0, 100.0] and df5["mos_raw"].tolist() == [1.5, 5.0]


def test_folder_format(tmp_path):
    (tmp_path / "v" / "sub").mkdir(parents=True)
    for name in ["b.mp4", "a.MKV", "sub/c.webm", "notes.txt", ".hidden.mp4"]:
        (tmp_path / "v" / name).write_bytes(b"x")
    df = read_labels("folder", tmp_path / "v")
    assert df["path"].tolist() == ["a.MKV", "b.mp4", "sub/c.webm"]
    assert df["id"].tolist() == ["a", "b", "sub/c"] and df["mos"].isna().all()


def test_id_and_path():
    assert id_and_path("yfcc-batch1/747", "w") == ("yfcc-batch1/747", "yfcc-batch1/747.mp4")
    assert id_and_path("./x//y.mov", "w") == ("x/y", "x/y.mov")


# ---- bad inputs: one UserError naming the file, the row and the problem ----------------------------
def _bad(tmp_path, text, fmt="generic", name="labels.csv", **kw):
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(UserError) as info:
        read_labels(fmt, f, **kw)
    msg = str(info.value)
    assert "\n" not in msg and str(f) in msg
    return msg


def test_missing_label_column(tmp_path):
    msg = _bad(tmp_path, "name,score\na.mp4,50\n")
    assert "missing label column 'mos'" in msg and "name, score" in msg
    assert "'flickr_id'" in _bad(tmp_path, "name,mos\na,3\n", fmt="konvid")


@pytest.mark.parametrize("value,what", [("", "is empty"), ("NaN", "'NaN', not a number"), ("good", "'good', not a number"),
                                        ("inf", "'inf'")])
def test_bad_mos_values(tmp_path, value, what):
    msg = _bad(tmp_path, f"name,mos\na.mp4,50\nb.mp4,60\nc.mp4,{value}\n")
    assert "row 3:" in msg and "column 'mos'" in msg and what in msg


def test_mos_out_of_range(tmp_path):
    msg = _bad(tmp_path, "name,mos\na.mp4,50\nb.mp4,101.5\n")
    assert "row 2:" in msg and "101.5" in msg and "0-100" in msg
    msg = _bad(tmp_path, "name,mos\na.mp4,3\nb.mp4,70\n", fmt="youtube_ugc")
    assert "row 2:" in msg and "1-5" in msg
    msg = _bad(tmp_path, "name,mos\na.mp4,3\nb.mp4,0.5\n", mos_scale="1-5")
    assert "row 2:" in msg and "1-5" in msg


def test_duplicate_ids(tmp_path):
    msg = _bad(tmp_path, "name,mos\na.mp4,50\nb.mp4,60\na.mp4,70\n")
    assert "row 3: duplicate id 'a'" in msg and "row 1" in msg
    msg = _bad(tmp_path, "name,mos\na,50\nb.mp4,60\na.mp4,70\n")  # same video with and without extension
    assert "row 3: duplicate id 'a'" in msg


def test_duplicate_ids_across_files(tmp_path):
    a, b = tmp_path / "LSVQ_whole_test.csv", tmp_path / "LSVQ_whole_test_1080p.csv"
    a.write_text("name,mos\nx/1,50\nx/2,60\n")
    b.write_text("name,mos\nx/3,50\nx/1,60\n")
    with pytest.raises(UserError, match=r"LSVQ_whole_test_1080p.csv: row 2: duplicate id 'x/1' \(already at row 1 of"):
        read_labels("lsvq", [a, b])


def test_empty_files(tmp_path):
    assert "empty label file" in _bad(tmp_path, "")
    assert "no data rows" in _bad(tmp_path, "name,mos\n")


@pytest.mark.parametrize("name,what", [("/etc/passwd", "absolute"), ("../outside.mp4", "escapes"),
                                       ("sub/../../x.mp4", "escapes"), ("C:\\videos\\a.mp4", "absolute"),
                                       ("a\\..\\..\\b.mp4", "escapes")])
def test_paths_escaping_the_videos_folder(tmp_path, name, what):
    msg = _bad(tmp_path, f'name,mos\nok.mp4,50\n"{name}",60\n')
    assert "row 2:" in msg and what in msg


def test_unknown_format_and_unreadable_csv(tmp_path):
    f = tmp_path / "l.csv"
    f.write_text("name,mos\na,1\n")
    with pytest.raises(UserError, match="unknown label format 'konvid1k'.*konvid"):
        read_labels("konvid1k", f)
    assert "not a readable CSV" in _bad(tmp_path, 'name,mos\na,1\nb,2,3,4\n"unterminated\n')
    g = tmp_path / "bin.csv"
    g.write_bytes(b"name,mos\n\xff\xfe\x00a,1\n")
    with pytest.raises(UserError, match="not a UTF-8"):
        read_labels("generic", g)
    with pytest.raises(UserError, match="label file not found"):
        read_labels("generic", tmp_path / "nope.csv")
    assert set(FORMATS) == {"konvid", "lsvq", "youtube_ugc", "live_vqc", "live_gaming", "generic", "folder",
                            "image", "clive", "koniq", "spaq", "kadid"}


# ---- optional group and split columns of the generic format ----------------------------------------
def test_generic_group_and_split_columns(tmp_path):
    f = tmp_path / "labels.csv"
    f.write_text("name,mos,Group,split\na.mp4,10,src-1,train\nb.mp4,20, src-1 ,test\nc.mp4,30,,train\n")
    df = read_labels("generic", f)
    assert df["group"].tolist() == ["src-1", "src-1", ""]  # stripped; an empty cell is no group
    assert df["split"].tolist() == ["train", "test", "train"]
    plain = tmp_path / "plain.csv"
    plain.write_text("name,mos\na.mp4,10\n")
    assert read_labels("generic", plain)["group"].tolist() == [""]
    assert read_labels("generic", plain)["split"].tolist() == ["kfold"]
    # other formats do not read them
    konvid = tmp_path / "k.csv"
    konvid.write_text("flickr_id,mos,group,split\n1,3,g,test\n")
    assert read_labels("konvid", konvid)[["group", "split"]].values.tolist() == [["", "kfold"]]


@pytest.mark.parametrize("value,what", [("", "is empty"), ("all", "reserved"), ("KFold", "reserved"),
                                        ("test set", "letters, digits and _ only")])
def test_bad_split_values(tmp_path, value, what):
    msg = _bad(tmp_path, f"name,mos,split\na.mp4,50,train\nb.mp4,60,{value}\n")
    assert "row 2:" in msg and "column 'split'" in msg and what in msg


def test_generic_extra_columns_across_files_and_clashes(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("name,mos,source,width\na.mp4,10,tree,320\nb.mp4,20, city ,640\n")
    b.write_text("name,mos,distortion\nc.mp4,30,crf30\n")
    df = read_labels("generic", [a, b])
    assert list(df.columns)[-3:] == ["source", "width", "distortion"]
    assert df["source"].tolist() == ["tree", "city", ""] and df["width"].tolist() == ["320", "640", ""]
    assert df["distortion"].tolist() == ["", "", "crf30"]  # a column only one file has: empty elsewhere
    clash = tmp_path / "clash.csv"
    clash.write_text("name,mos,fold\na.mp4,10,1\n")
    with pytest.raises(UserError, match=r"clash.csv: column 'fold' clashes with a column the manifest writes"):
        read_labels("generic", clash)
    unnamed = tmp_path / "unnamed.csv"
    unnamed.write_text("name,mos,\na.mp4,10,x\n")
    with pytest.raises(UserError, match=r"unnamed.csv: a column has no name"):
        read_labels("generic", unnamed)


def test_video_id_is_the_file_name_without_its_video_extension():
    """`lmmvqa score` draws a video's question templates by this id, as the prompt stage does for the
    dataset's videos: `demo_0002.mp4` is `demo_0002` in both (it was the file name, so score asked
    other questions than evaluate and gave other scores)."""
    from pipeline.ingest.labels import id_and_path, video_id

    assert video_id("demo_0002.mp4") == "demo_0002" and video_id("clip.MKV") == "clip"
    assert video_id("sub/a.webm") == "sub/a" and video_id("noext") == "noext" and video_id("a.b.txt") == "a.b.txt"
    assert id_and_path("sub/a.webm", "row 2")[0] == video_id("sub/a.webm")
