"""Manifest table: levels, folds, shards (stable under additions), missing table, CLI, atomic writes."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main as cli
from pipeline.core.errors import UserError
from pipeline.ingest.manifest import (
    MANIFEST_COLUMNS,
    MISSING_COLUMNS,
    build_manifest,
    fingerprint,
    fold_of,
    group_folds,
    read_manifest,
    shard_digest,
    shard_digests,
    shard_ids,
    write_manifest,
)


def _labels(path, names, mos=None):
    mos = mos if mos is not None else [10 + 80 * i / max(1, len(names) - 1) for i in range(len(names))]
    pd.DataFrame({"name": names, "mos": mos, "extra": "x"}).to_csv(path, index=False)
    return path


def _videos(folder, names, size=200):
    folder.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        p = folder / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(bytes([i % 256]) * (size + i))
    return folder


def test_real_lsvq_manifest_without_videos(shared_labels):
    files = [shared_labels / "LSVQ_whole_test.csv", shared_labels / "LSVQ_whole_test_1080p.csv"]
    m, missing = build_manifest("lsvq", files, None, shard_size=256)
    assert list(m.columns) == MANIFEST_COLUMNS and len(missing) == 0
    assert len(m) == 10781 and (m["split"] == "test").sum() == 7220 and (m["split"] == "test_1080p").sum() == 3561
    assert (m["fold"] == -1).all() and m["mos"].between(0, 100).all()
    assert m["shard"].tolist() == (np.arange(len(m)) // 256).tolist()
    assert m["size_bytes"].isna().all() and (m["fingerprint"] == "").all()
    # level thresholds: the 33rd / 66th percentiles of the whole dataset
    p33, p66 = np.percentile(m["mos"], [33, 66])
    assert (m.loc[m["mos"] <= p33, "level"] == "poor").all()
    assert (m.loc[(m["mos"] > p33) & (m["mos"] <= p66), "level"] == "fair").all()
    assert (m.loc[m["mos"] > p66, "level"] == "good").all()
    assert abs((m["level"] == "good").mean() - 0.34) < 0.01


def test_real_konvid_kfold(shared_labels):
    m, _ = build_manifest("konvid", [shared_labels / "KoNViD_1k_mos.csv"], None, k=5, seed=0)
    assert len(m) == 1200 and set(m["split"]) == {"kfold"} and set(m["fold"]) == {0, 1, 2, 3, 4}
    assert m["fold"].value_counts().min() > 200  # the id hash spreads videos evenly enough
    assert m["mos"].max() <= 100 and m["mos"].min() >= 20
    assert m["fold"].tolist() == [fold_of(i, 5, 0) for i in m["id"]]
    other = build_manifest("konvid", [shared_labels / "KoNViD_1k_mos.csv"], None, k=5, seed=1)[0]
    assert (other["fold"] != m["fold"]).mean() > 0.5  # the seed matters


def test_shards_and_folds_stable_under_appended_rows(tmp_path):
    names = [f"v{i:03d}.mp4" for i in range(23)]
    small = build_manifest("generic", _labels(tmp_path / "a.csv", names[:10]), None, shard_size=4)[0]
    big = build_manifest("generic", _labels(tmp_path / "b.csv", names), None, shard_size=4)[0]
    merged = small.merge(big, on="id", suffixes=("_s", "_b"))
    assert len(merged) == 10
    assert (merged["shard_s"] == merged["shard_b"]).all() and (merged["fold_s"] == merged["fold_b"]).all()
    assert sorted(big["shard"].unique()) == [0, 1, 2, 3, 4, 5]
    # folds depend on the id only: reversing the row order keeps every video's fold
    rev = build_manifest("generic", _labels(tmp_path / "c.csv", names[::-1]), None, shard_size=4)[0]
    assert dict(zip(rev["id"], rev["fold"])) == dict(zip(big["id"], big["fold"]))
    # digests of untouched shards do not change when rows are appended
    assert shard_digest(small, 0) == shard_digest(big, 0) and shard_digest(small, 1) == shard_digest(big, 1)
    assert shard_digest(small, 2) != shard_digest(big, 2)
    assert shard_digests(big) == {s: shard_digest(big, s) for s in shard_ids(big)}


def test_missing_table_and_fingerprints(tmp_path):
    names = ["a.mp4", "sub/b.mp4", "c.mp4", "d", "e.mp4"]
    labels = _labels(tmp_path / "labels.csv", names)
    videos = _videos(tmp_path / "videos", ["a.mp4", "sub/b.mp4", "d.mkv", "e.mp4", "extra.webm", "notes.txt"])
    (videos / "c.mp4").mkdir()  # a folder where a file should be
    m, missing = build_manifest("generic", labels, videos, shard_size=2)
    assert m["id"].tolist() == ["a", "sub/b", "d", "e"]
    assert m["path"].tolist() == ["a.mp4", "sub/b.mp4", "d.mkv", "e.mp4"]  # `d` (no extension) found as d.mkv
    assert m["shard"].tolist() == [0, 0, 1, 2]  # missing `c` keeps its slot: e stays in shard 2
    assert m["row"].tolist() == [1, 2, 4, 5]
    assert list(missing.columns) == MISSING_COLUMNS
    assert missing.to_dict("records") == [
        {"id": "c", "path": "c.mp4", "row": 3, "reason": "not a regular file"},
        {"id": "extra", "path": "extra.webm", "row": None, "reason": "no label"},
    ]
    size, fp = fingerprint(videos / "a.mp4")
    data = (videos / "a.mp4").read_bytes()
    assert m.loc[0, "size_bytes"] == size == len(data)
    assert fp == hashlib.sha1(f"{len(data)}:".encode() + data).hexdigest() == m.loc[0, "fingerprint"]
    (videos / "c.mp4").rmdir()
    m2, missing2 = build_manifest("generic", labels, videos, shard_size=2)
    assert missing2["reason"].tolist() == ["file not found", "no label"]


def test_fingerprint_head_and_tail(tmp_path):
    f = tmp_path / "big.bin"
    data = bytearray(np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes())
    f.write_bytes(bytes(data))
    base = fingerprint(f)
    data[150_000] ^= 1  # a change in the middle is (by design) not seen
    f.write_bytes(bytes(data))
    assert fingerprint(f) == base
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    assert fingerprint(f)[1] != base[1]


def test_videos_folder_missing_and_bad_options(tmp_path):
    labels = _labels(tmp_path / "l.csv", ["a.mp4"])
    with pytest.raises(UserError, match="videos folder not found: .*nope"):
        build_manifest("generic", labels, tmp_path / "nope")
    with pytest.raises(UserError, match="split scheme"):
        build_manifest("generic", labels, None, split_scheme="random")
    with pytest.raises(UserError, match="shard size"):
        build_manifest("generic", labels, None, shard_size=0)


def test_official_split_for_other_formats(tmp_path):
    train = _labels(tmp_path / "mine_train.csv", ["a.mp4", "b.mp4"])
    test = _labels(tmp_path / "mine_test.csv", ["c.mp4"])
    m, _ = build_manifest("generic", [train, test], None, split_scheme="official")
    assert m["split"].tolist() == ["train", "train", "test"] and (m["fold"] == -1).all()


def test_folder_format(tmp_path):
    videos = _videos(tmp_path / "clips", ["x.mp4", "y/z.webm"])
    m, missing = build_manifest("folder", [videos], None)
    assert m["id"].tolist() == ["x", "y/z"] and m["mos"].isna().all() and (m["level"] == "").all()
    assert (m["split"] == "all").all() and (m["fold"] == -1).all() and m["size_bytes"].notna().all()
    assert len(missing) == 0


def test_write_and_read_roundtrip(tmp_path):
    labels = _labels(tmp_path / "l.csv", ["0001.mp4", "0002.mp4", "x/0003.mp4"])
    m, missing = build_manifest("generic", labels, None, shard_size=2)
    out = tmp_path / "results" / "manifest" / "demo.csv"
    miss = out.with_name("demo.missing.csv")
    assert write_manifest(m, missing, out, miss) == (out, miss)
    assert miss.read_text() == "id,path,row,reason\n"
    back = read_manifest(out)
    assert back["id"].tolist() == ["0001", "0002", "x/0003"]  # ids stay strings (leading zeros kept)
    assert back["row"].dtype == np.int64 and back["mos"].dtype == np.float64 and back["size_bytes"].isna().all()
    assert shard_ids(out) == [0, 1]
    assert shard_digest(back, 1) == shard_digest(m, 1)
    assert not list(out.parent.glob(".*tmp*"))
    with pytest.raises(UserError, match="manifest not found"):
        read_manifest(tmp_path / "none.csv")


def test_cli_prints_counts(tmp_path, capsys):
    labels = _labels(tmp_path / "labels.csv", ["a.mp4", "b.mp4", "c.mp4"])
    videos = _videos(tmp_path / "videos", ["a.mp4", "b.mp4", "stray.mp4"])
    out = tmp_path / "m" / "demo.csv"
    assert cli(["manifest", "--format", "generic", "--labels", str(labels), "--videos", str(videos),
                "--out", str(out), "--missing", str(tmp_path / "m" / "demo.missing.csv"), "--shard-size", "2",
                "--k", "3", "--seed", "7"]) == 0
    text = capsys.readouterr().out
    assert "2 rows" in text and "2 missing" in text and "1 files without a label" in text
    m = read_manifest(out)
    assert m["fold"].tolist() == [fold_of("a", 3, 7), fold_of("b", 3, 7)]
    assert pd.read_csv(tmp_path / "m" / "demo.missing.csv")["reason"].tolist() == ["file not found", "no label"]


def test_cli_error_leaves_no_manifest(tmp_path, capsys):
    good = _labels(tmp_path / "labels.csv", ["a.mp4", "b.mp4"])
    out, miss = tmp_path / "demo.csv", tmp_path / "demo.missing.csv"
    outputs = ["--out", str(out), "--missing", str(miss)]
    assert cli(["manifest", "--format", "generic", "--labels", str(good), *outputs]) == 0
    assert out.exists() and miss.exists()
    bad = tmp_path / "bad.csv"
    bad.write_text("name,mos\na.mp4,50\nb.mp4,oops\n")
    assert cli(["manifest", "--format", "generic", "--labels", str(bad), *outputs]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "row 2" in err and "'oops'" in err
    assert not out.exists() and not miss.exists()
    assert cli(["manifest", "--format", "nope", "--labels", str(good), *outputs]) == 2
    assert "unknown label format 'nope'" in capsys.readouterr().err


# ---- content-separated folds (group column) and fixed splits (split column) ---------------------------
REALSET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "realset-dev" / "labels.csv"


def _grouped_labels(path, sizes, seed=0):
    """A generic label file with groups of the given sizes (videos of a group are not adjacent)."""
    rng = np.random.default_rng(seed)
    rows = [(f"g{g:02d}-v{i:02d}.mp4", float(rng.uniform(0, 100)), f"g{g:02d}") for g, n in enumerate(sizes)
            for i in range(n)]
    rows = [rows[i] for i in rng.permutation(len(rows))]
    pd.DataFrame(rows, columns=["name", "mos", "group"]).to_csv(path, index=False)
    return path


def _check_grouped(m, k, max_group):
    folds_of_group = m.groupby("group")["fold"].nunique()
    assert (folds_of_group == 1).all(), folds_of_group[folds_of_group > 1]  # no group in two folds
    counts = m["fold"].value_counts().reindex(range(k), fill_value=0)
    assert counts.min() > 0 and counts.max() - counts.min() <= max_group  # balanced as far as groups allow


def test_group_column_keeps_each_group_in_one_fold(tmp_path):
    if REALSET.is_file():  # the real development set: 10 segments x 15 variants -> 5 folds of 2 segments
        m = build_manifest("generic", REALSET, None, k=5, seed=0)[0]
        assert list(m.columns)[:len(MANIFEST_COLUMNS)] == MANIFEST_COLUMNS and m["group"].nunique() == 10
        _check_grouped(m, 5, 15)
        assert sorted(m["fold"].value_counts().tolist()) == [30] * 5
        assert (m.groupby("fold")["group"].nunique() == 2).all()
    labels = _grouped_labels(tmp_path / "g.csv", [9, 7, 7, 5, 4, 4, 3, 2, 2, 1, 1, 1])
    m = build_manifest("generic", labels, None, k=3, seed=0)[0]
    _check_grouped(m, 3, 9)
    assert sorted(m["fold"].value_counts().tolist()) == [15, 15, 16]  # 46 videos: greedy balances exactly here
    # deterministic from the split seed, and the seed matters
    again = build_manifest("generic", labels, None, k=3, seed=0)[0]
    assert again["fold"].tolist() == m["fold"].tolist()
    even = _grouped_labels(tmp_path / "even.csv", [4] * 12)
    by_seed = [build_manifest("generic", even, None, k=3, seed=s)[0] for s in (0, 1)]
    for b in by_seed:
        _check_grouped(b, 3, 4)
        assert sorted(b["fold"].value_counts().tolist()) == [16, 16, 16]
    assert by_seed[0].groupby("group")["fold"].first().tolist() != by_seed[1].groupby("group")["fold"].first().tolist()
    # a manifest read back keeps the groups
    write_manifest(m, pd.DataFrame(columns=MISSING_COLUMNS), tmp_path / "m.csv", tmp_path / "m.missing.csv")
    assert read_manifest(tmp_path / "m.csv")["group"].tolist() == m["group"].tolist()


def test_group_folds_edge_cases(tmp_path):
    # empty group cells: each such video is a group of its own
    f = tmp_path / "l.csv"
    f.write_text("name,mos,group\n" + "".join(f"a{i}.mp4,{i},A\n" for i in range(4)) +
                 "".join(f"b{i}.mp4,{i},\n" for i in range(4)))
    m = build_manifest("generic", f, None, k=2, seed=0)[0]
    assert m.loc[m["group"] == "A", "fold"].nunique() == 1
    assert sorted(m["fold"].value_counts().tolist()) == [4, 4]
    assert sorted(group_folds(["x", "y", "z"], ["", "", ""], 3, 0)) == [0, 1, 2]
    # fewer groups than folds: a clear error naming the label file
    g = _grouped_labels(tmp_path / "few.csv", [5, 5])
    with pytest.raises(UserError, match=r"few.csv: 2 distinct value\(s\) in column 'group' cannot fill k=3 folds"):
        build_manifest("generic", g, None, k=3)
    # without a group column the folds stay the id hash
    plain = build_manifest("generic", _labels(tmp_path / "p.csv", [f"v{i}.mp4" for i in range(8)]), None, k=3)[0]
    assert plain["fold"].tolist() == [fold_of(i, 3, 0) for i in plain["id"]] and (plain["group"] == "").all()


def test_split_column_gives_fixed_splits(tmp_path):
    f = tmp_path / "labels.csv"
    f.write_text("name,mos,split,group\na.mp4,10,train,x\nb.mp4,20,test,x\nc.mp4,30,train,y\nd.mp4,40,val,y\n")
    m = build_manifest("generic", f, None, split_scheme="official")[0]
    assert m["split"].tolist() == ["train", "test", "train", "val"] and (m["fold"] == -1).all()
    # k-fold ignores the column (and folds by group)
    k = build_manifest("generic", f, None, split_scheme="kfold", k=2)[0]
    assert set(k["split"]) == {"kfold"} and k.groupby("group")["fold"].nunique().max() == 1
    # without the column, official splits still come from the label file name
    g = tmp_path / "set_test.csv"
    g.write_text("name,mos\na.mp4,10\n")
    assert build_manifest("generic", g, None, split_scheme="official")[0]["split"].tolist() == ["test"]


def test_group_by_any_column(tmp_path):
    if REALSET.is_file():  # leave one source out: 4 sources -> 4 folds, one source each
        m = build_manifest("generic", REALSET, None, k=4, seed=0, group_by="source")[0]
        assert m.groupby("source")["fold"].nunique().max() == 1
        assert sorted(m.groupby("fold")["source"].first()) == ["bikes", "city", "testmovie", "tree"]
        assert m.groupby("source").size().to_dict() == {"bikes": 30, "city": 30, "testmovie": 30, "tree": 60}
        assert {"source", "distortion", "width"} <= set(m.columns)
    f = tmp_path / "l.csv"
    rows = [(f"{src}{i}.mp4", 10 * i, f"{src}-{i % 2}", src) for src in "abc" for i in range(4)]
    pd.DataFrame(rows, columns=["name", "mos", "group", "source"]).to_csv(f, index=False)
    by_source = build_manifest("generic", f, None, k=3, group_by="source")[0]
    assert by_source.groupby("source")["fold"].nunique().max() == 1 and by_source["fold"].nunique() == 3
    by_group = build_manifest("generic", f, None, k=3)[0]  # default: the group column (6 groups)
    assert by_group.groupby("group")["fold"].nunique().max() == 1
    assert by_group.groupby("source")["fold"].nunique().max() > 1  # groups of one source may be split
    # the extra columns survive a write + read as text
    write_manifest(by_source, pd.DataFrame(columns=MISSING_COLUMNS), tmp_path / "m.csv", tmp_path / "m.missing.csv")
    back = read_manifest(tmp_path / "m.csv")
    assert back["source"].tolist() == by_source["source"].tolist() and back["fold"].dtype.kind == "i"
    with pytest.raises(UserError, match=r"l.csv: split.group_by is 'camera' but the label file has no such column "
                                        r"\(columns it can fold by: group, source\)"):
        build_manifest("generic", f, None, k=3, group_by="camera")
    with pytest.raises(UserError, match=r"3 distinct value\(s\) in column 'source' cannot fill k=4 folds"):
        build_manifest("generic", f, None, k=4, group_by="source")
    with pytest.raises(UserError, match="applies to k-fold splits only"):
        build_manifest("generic", f, None, split_scheme="official", group_by="source")


# ---------------------------------------------------------------------------------------------------
# LSVQ's official split is the default; a k-fold split of it is still there when asked for
# ---------------------------------------------------------------------------------------------------
def _lsvq_labels(folder: Path) -> list[Path]:
    """A tiny LSVQ in its own label-file layout: a train file with an `is_test` column, and test_1080p."""
    folder.mkdir(parents=True, exist_ok=True)
    train = folder / "LSVQ_whole_train.csv"
    train.write_text("name,height,mos,is_test\n" + "".join(
        f"yfcc-batch1/{i},720,{20 + 7 * i},{'True' if i >= 6 else 'False'}\n" for i in range(9)))
    hd = folder / "LSVQ_whole_test_1080p.csv"
    hd.write_text("name,height,mos\n" + "".join(f"yfcc-batch2/{i},1080,{30 + 9 * i}\n" for i in range(3)))
    return [train, hd]


LSVQ_SPLITS = {"train": 6, "test": 3, "test_1080p": 3}


def test_lsvq_cli_without_a_scheme_is_official_and_kfold_when_asked(tmp_path, capsys):
    files = _lsvq_labels(tmp_path / "labels")
    out = tmp_path / "m.csv"
    assert cli(["manifest", "--format", "lsvq", "--labels", *map(str, files), "--out", str(out)]) == 0
    m = read_manifest(out)
    assert m["split"].value_counts().to_dict() == LSVQ_SPLITS and (m["fold"] == -1).all()
    assert cli(["manifest", "--format", "lsvq", "--labels", *map(str, files), "--out", str(out),
                "--split-scheme", "kfold", "--k", "2"]) == 0
    m = read_manifest(out)
    assert set(m["split"]) == {"kfold"} and set(m["fold"]) == {0, 1}


def test_config_split_scheme_follows_the_format():
    from pipeline.core.config import validate

    cfg = validate({"datasets": {"lsvq": {"format": "lsvq", "labels": "a.csv"},
                                 "konvid": {"format": "konvid", "labels": "b.csv"},
                                 "asked": {"format": "lsvq", "labels": "c.csv", "split": {"scheme": "kfold", "k": 3}},
                                 "seeded": {"format": "lsvq", "labels": "d.csv", "split": {"seed": 2}}}})
    schemes = {d: (ds["split"]["scheme"], ds["split"]["k"]) for d, ds in cfg["datasets"].items()}
    assert schemes == {"lsvq": ("official", 5), "konvid": ("kfold", 5), "asked": ("kfold", 3),
                       "seeded": ("official", 5)}


@pytest.mark.slow
def test_workflow_lsvq_without_a_split_key_uses_the_official_split(tmp_path):
    """The user's path: a config naming LSVQ's label files and no `split`, then `snakemake`; and the same
    config asking for k folds."""
    import yaml
    from workflow_run import snakemake

    files = _lsvq_labels(tmp_path / "data")
    lsvq = {"format": "lsvq", "labels": str(files[0]), "extra_labels": [str(files[1])]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"datasets": {"lsvq": lsvq}}))
    snakemake(tmp_path)
    m = read_manifest(tmp_path / "results/manifest/lsvq.csv")
    assert m["split"].value_counts().to_dict() == LSVQ_SPLITS and (m["fold"] == -1).all()

    lsvq["split"] = {"scheme": "kfold", "k": 2}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"datasets": {"lsvq": lsvq}}))
    snakemake(tmp_path)
    m = read_manifest(tmp_path / "results/manifest/lsvq.csv")
    assert set(m["split"]) == {"kfold"} and set(m["fold"]) == {0, 1}
