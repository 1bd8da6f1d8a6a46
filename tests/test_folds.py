"""Evaluation protocol: which folds an experiment runs, fixed splits from a `split` column, and the
aggregate of every fold (each fold, mean / std / median) in metrics.json and the experiment table."""
from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main as cli_main
from pipeline.core import paths
from pipeline.core.config import validate
from pipeline.core.errors import UserError
from pipeline.core.metrics import aggregate_folds, compute_metrics, experiment_table
from pipeline.core import resolve
from pipeline.prompts import selectors


def experiment_folds(cfg, name):
    return resolve.of(cfg).experiment(name).folds


def with_holdout(cfg, name, fold) -> dict:
    """The config of the resolved settings with `fold` of experiment `name` held out."""
    return resolve.of(cfg).with_holdout(name, fold).config


def prompt_parts(cfg, selector, fold):
    return selectors.prompt_parts(resolve.of(cfg).datasets, selector, fold)


def shared_content(cfg, name, manifests=None):
    s = resolve.of(cfg)
    return selectors.shared_content(s.experiment(name), s.datasets, manifests)


def _cfg(experiments, k=3, other_k=3):
    return validate({
        "datasets": {"a": {"format": "generic", "labels": "a.csv", "split": {"k": k}},
                     "b": {"format": "generic", "labels": "b.csv", "split": {"k": other_k}},
                     "fixed": {"format": "generic", "labels": "fixed.csv", "split": {"scheme": "official"}}},
        "experiments": experiments,
    })


def test_experiment_folds_and_holdout():
    cfg = _cfg({"single": {"train": ["a:train"], "test": ["a:test"], "holdout_fold": 2},
                "cv": {"train": ["a:train", "fixed:all"], "test": ["a:test", "b:all"], "folds": "all"}})
    assert cfg["experiments"]["single"]["folds"] == "holdout"  # the default keeps one held-out fold
    assert experiment_folds(cfg, "single") is None
    assert experiment_folds(cfg, "cv") == [0, 1, 2]
    one = with_holdout(cfg, "cv", 1)
    assert one["experiments"]["cv"]["holdout_fold"] == 1 and cfg["experiments"]["cv"]["holdout_fold"] == 0
    assert prompt_parts(one, "a:train", 1) == ["fold0", "fold2"] and prompt_parts(one, "a:test", 1) == ["fold1"]
    # `all` of a dataset with fewer folds serves every fold of the experiment (fold 3 of 5 folds, k=3)
    assert prompt_parts(_cfg({}, k=5), "b:all", 3) == ["fold0", "fold1", "fold2"]
    with pytest.raises(UserError, match="holdout_fold 3 >= k=3"):
        prompt_parts(_cfg({}, k=5), "b:train", 3)
    with pytest.raises(UserError, match="fold 3 not among its folds 0..2"):
        with_holdout(cfg, "cv", 3)
    with pytest.raises(UserError, match="--fold needs folds: all"):
        with_holdout(cfg, "single", 0)


def test_folds_all_needs_one_k_and_a_kfold_selector():
    with pytest.raises(UserError, match=r"experiment 'cv': folds: all needs one k .*a: k=3, b: k=5"):
        experiment_folds(_cfg({"cv": {"train": ["a:train"], "test": ["b:test"], "folds": "all"}}, other_k=5), "cv")
    with pytest.raises(UserError, match="folds: all needs a k-fold dataset"):
        experiment_folds(_cfg({"cv": {"train": ["fixed:train"], "test": ["a:all"], "folds": "all"}}), "cv")
    with pytest.raises(UserError, match="folds"):
        validate({"datasets": {"a": {"format": "generic", "labels": "a.csv"}},
                  "experiments": {"cv": {"train": ["a:train"], "test": ["a:test"], "folds": "every"}}})


def test_split_column_names_are_selectable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _cfg({"fixed": {"train": ["fixed:train"], "test": ["fixed:test"]}})
    paths.manifest("fixed").parent.mkdir(parents=True)
    pd.DataFrame({"id": ["a", "b", "c"], "path": ["a.mp4", "b.mp4", "c.mp4"], "split": ["train", "test", "train"],
                  "fold": -1, "shard": 0}).to_csv(paths.manifest("fixed"), index=False)
    assert prompt_parts(cfg, "fixed:test", 0) == ["test"] and prompt_parts(cfg, "fixed:train", 0) == ["train"]
    assert prompt_parts(cfg, "fixed:all", 0) == ["test", "train"]
    with pytest.raises(UserError, match=r"split 'val' not among \['test', 'train'\]"):
        prompt_parts(cfg, "fixed:val", 0)


def _fold_metrics(k=4, n=20, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for f in range(k):
        mos = rng.uniform(0, 100, n)
        noise = 5 + 10 * f
        lt = np.where(mos <= 33, "poor", np.where(mos <= 66, "fair", "good"))
        df = pd.DataFrame({"id": [f"f{f}-{i}" for i in range(n)], "mos": mos, "level_true": lt,
                           "score": mos + rng.normal(0, noise, n), "invalid": False,
                           "prob_score": mos + rng.normal(0, noise, n), "level": lt})
        df.loc[: f - 1, ["score", "invalid"]] = [np.nan, True]  # fold f has f invalid answers
        df.loc[n - 2:, "level"] = "fair"
        m = compute_metrics(df, bootstrap=0, seed=0, experiment="cv", dataset="d")
        m["fold"] = f
        out.append((m, df))
    return out


def test_aggregate_folds_numbers():
    folds = _fold_metrics()
    per_fold = [m for m, _ in folds]
    agg = aggregate_folds(per_fold[::-1], "cv", "d")  # order of the inputs does not matter
    srcc = [m["methods"]["prob"]["srcc"] for m in per_fold]
    a = agg["aggregate"]["prob"]["srcc"]
    assert a["values"] == srcc and a["folds"] == 4
    assert a["mean"] == pytest.approx(np.mean(srcc)) and a["median"] == pytest.approx(np.median(srcc))
    assert a["std"] == pytest.approx(np.std(srcc, ddof=1)) and a["min"] == min(srcc) and a["max"] == max(srcc)
    assert agg["methods"]["prob"]["srcc"] == pytest.approx(np.mean(srcc))  # readers of `methods` see the mean
    assert agg["methods"]["text"]["plcc"] == pytest.approx(np.mean([m["methods"]["text"]["plcc"] for m in per_fold]))
    assert agg["methods"]["prob"]["srcc_ci"] is None and "mean over 4 of 4 folds" in agg["methods"]["prob"]["note"]
    assert agg["n"] == 80 and agg["invalid"] == 0 + 1 + 2 + 3 and agg["folds"] == 4
    assert [c["fold"] for c in agg["fold_metrics"]] == [0, 1, 2, 3]
    assert agg["aggregate"]["invalid"]["values"] == [0, 1, 2, 3]
    acc = [m["level"]["accuracy"] for m in per_fold]
    assert agg["level"]["accuracy"] == pytest.approx(np.mean(acc))
    assert agg["aggregate"]["level_accuracy"]["std"] == pytest.approx(np.std(acc, ddof=1))
    assert np.array_equal(agg["level"]["confusion"], np.sum([m["level"]["confusion"] for m in per_fold], axis=0))
    json.dumps(agg, allow_nan=False)  # valid JSON, no NaN
    # a fold with an undefined metric is left out of the statistics, and said so
    broken = copy.deepcopy(per_fold)
    broken[2]["methods"]["prob"]["srcc"] = None
    b = aggregate_folds(broken)
    assert b["aggregate"]["prob"]["srcc"]["mean"] == pytest.approx(np.mean([srcc[0], srcc[1], srcc[3]]))
    assert b["aggregate"]["prob"]["srcc"]["values"][2] is None and "not defined in 1 fold" in b["methods"]["prob"]["note"]


def test_experiment_table_of_folds():
    per_fold = [m for m, _ in _fold_metrics(k=3)]
    agg = aggregate_folds(per_fold, "cv", "d")
    table = experiment_table([agg])
    assert table["fold"].tolist() == ["0", "1", "2", "mean", "std", "median"]
    srcc = [m["methods"]["prob"]["srcc"] for m in per_fold]
    assert table["prob_srcc"].tolist()[:3] == pytest.approx(srcc)
    assert table.loc[table["fold"] == "mean", "prob_srcc"].item() == pytest.approx(np.mean(srcc))
    assert table.loc[table["fold"] == "std", "prob_srcc"].item() == pytest.approx(np.std(srcc, ddof=1))
    assert table.loc[table["fold"] == "median", "invalid"].item() == 1
    # single-fold tables are unchanged: no fold column
    assert "fold" not in experiment_table(per_fold[:1]).columns


def test_aggregate_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = {"datasets": {"d": {"format": "generic", "labels": "d.csv", "split": {"k": 3}}},
           "experiments": {"cv": {"train": ["d:train"], "test": ["d:test"], "folds": "all"},
                           "one": {"train": ["d:train"], "test": ["d:test"]}}}
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    folds = _fold_metrics(k=3)
    out = paths.metrics("cv", "d:test")
    # a missing fold is an error naming its file
    assert cli_main(["aggregate", "--config", "c.yaml", "--experiment", "cv", "--test", "d:test", "--out", str(out),
                     "--predictions", str(paths.predictions("cv", "d:test"))]) == 2
    assert "fold 0 of experiment 'cv' on 'd:test'" in capsys.readouterr().err
    for m, df in folds:
        p = paths.predictions("cv", "d:test", m["fold"])
        p.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(p, index=False)
        paths.metrics("cv", "d:test", m["fold"]).write_text(json.dumps({k: v for k, v in m.items() if k != "fold"}))
    assert cli_main(["aggregate", "--config", "c.yaml", "--experiment", "cv", "--test", "d:test", "--out", str(out),
                     "--predictions", str(paths.predictions("cv", "d:test"))]) == 0
    agg = json.loads(out.read_text())
    assert [c["fold"] for c in agg["fold_metrics"]] == [0, 1, 2] and agg["n"] == 60
    assert agg["test"] == "d:test" and agg["dataset"] == "d"
    assert agg["aggregate"]["prob"]["srcc"]["values"] == [m["methods"]["prob"]["srcc"] for m, _ in folds]
    pooled = pd.read_csv(paths.predictions("cv", "d:test"))
    assert len(pooled) == 60 and pooled["fold"].tolist() == [0] * 20 + [1] * 20 + [2] * 20
    assert "over 3 folds" in capsys.readouterr().out
    assert cli_main(["aggregate", "--config", "c.yaml", "--experiment", "one", "--test", "d:test", "--out", "x.json",
                     "--predictions", "x.csv"]) == 2
    assert "nothing to aggregate" in capsys.readouterr().err


def test_exclude_shared_drops_training_videos_of_tested_sources(tmp_path, monkeypatch):
    """Leave one source out with synthetic variants of every source: the variants of the held-out source
    never train the model of that fold, and nothing else is dropped."""
    from pipeline.ingest.manifest import build_manifest, write_manifest

    monkeypatch.chdir(tmp_path)
    real = tmp_path / "real.csv"
    pd.DataFrame([(f"r-{s}{i}.mp4", 10 * i, s) for s in "abc" for i in range(3)],
                 columns=["name", "mos", "source"]).to_csv(real, index=False)
    syn = tmp_path / "syn.csv"
    pd.DataFrame([(f"s-{s}{i}.mp4", 5 * i, s) for s in "abcd" for i in range(2)] + [("s-x.mp4", 1, "")],
                 columns=["name", "mos", "source"]).to_csv(syn, index=False)
    cfg = validate({
        "datasets": {"real": {"format": "generic", "labels": str(real), "split": {"k": 3, "group_by": "source"}},
                     "syn": {"format": "generic", "labels": str(syn), "split": {"scheme": "official"}}},
        "experiments": {"loso": {"train": ["real:train", "syn:all"], "test": ["real:test"], "folds": "all",
                                 "exclude_shared": "source"},
                        "plain": {"train": ["real:train", "syn:all"], "test": ["real:test"]}},
    })
    for name, f, kw in (("real", real, {"k": 3, "group_by": "source"}), ("syn", syn, {"split_scheme": "official"})):
        m, miss = build_manifest("generic", f, None, **kw)
        paths.manifest(name).parent.mkdir(parents=True, exist_ok=True)
        write_manifest(m, miss, paths.manifest(name), paths.missing(name))
    real_m = pd.read_csv(paths.manifest("real"))
    seen = set()
    for fold in range(3):
        held = set(real_m.loc[real_m["fold"] == fold, "source"])
        assert len(held) == 1
        out = shared_content(with_holdout(cfg, "loso", fold), "loso")
        src = held.pop()
        seen.add(src)
        assert out["column"] == "source" and out["values"] == {src}
        # exactly the synthetic variants of the held-out source (the real ones are test videos already)
        assert out["videos"] == {("syn", f"s-{src}{i}") for i in range(2)}
    assert seen == {"a", "b", "c"}
    # manifests given in memory (a benchmark's own folds) are used instead of the files
    in_memory = real_m.assign(fold=[{"a": 1, "b": 2, "c": 0}[s] for s in real_m["source"]])
    out = shared_content(with_holdout(cfg, "loso", 0), "loso", manifests={"real": in_memory})
    assert out["values"] == {"c"} and out["videos"] == {("syn", "s-c0"), ("syn", "s-c1")}
    assert shared_content(cfg, "plain") == {"column": None, "values": set(), "videos": set()}
    bad = copy.deepcopy(cfg)
    bad["experiments"]["loso"]["exclude_shared"] = "camera"
    with pytest.raises(UserError, match=r"exclude_shared: column 'camera' is not in the manifest of 'real'"):
        shared_content(bad, "loso")
    # a test set the experiment does not train on and that has no such column (photos rated by people)
    # shares nothing with the training videos; it was an error before
    photos = tmp_path / "photos.csv"
    pd.DataFrame([(f"p{i}.jpg", 10.0 * i) for i in range(6)], columns=["name", "mos"]).to_csv(photos, index=False)
    m, miss = build_manifest("generic", photos, None, k=3)
    write_manifest(m, miss, paths.manifest("photos"), paths.missing("photos"))
    cross = copy.deepcopy(cfg)
    cross["datasets"]["photos"] = {"format": "generic", "labels": str(photos), "split": {"k": 3}}
    cross["experiments"]["loso"]["test"] = ["real:test", "photos:all"]
    cross = validate(cross)
    for fold in range(3):
        assert shared_content(with_holdout(cross, "loso", fold), "loso") == shared_content(
            with_holdout(cfg, "loso", fold), "loso")
    cross["experiments"]["loso"]["train"] = ["real:train", "syn:all", "photos:train"]
    cross = validate(cross)
    with pytest.raises(UserError, match=r"column 'source' is not in the manifest of 'photos'"):
        shared_content(cross, "loso")
