"""Prompt shards: template bank shape, deterministic template choice, shard contents, CLI."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd

from pipeline.core import resolve
from pipeline.core.config import validate
from pipeline.prompts.shards import (
    build_prompts,
    build_samples,
    levels_from_mos,
    load_templates,
    question_for,
    read_prompts,
    score_answer,
    template_index,
)


def _cfg(k=5, scheme="kfold", **prompts):
    return validate({"datasets": {"d": {"format": "generic", "labels": "l.csv", "split": {"scheme": scheme, "k": k}}},
                     "prompts": prompts})


def _manifest(n=30, k=5):
    rng = np.random.default_rng(0)
    mos = rng.uniform(0, 100, n)
    df = pd.DataFrame({"id": [f"v{i}" for i in range(n)], "path": [f"v{i}.mp4" for i in range(n)], "mos": mos,
                       "split": "kfold", "fold": [i % k for i in range(n)], "shard": 0})
    df["level"] = levels_from_mos(df["mos"])
    return df


def test_bank_has_20_templates_each_with_format_constraint():
    bank = load_templates()
    assert len(bank["score"]) == 20 and len(bank["level"]) == 20
    assert len(set(bank["score"])) == 20 and len(set(bank["level"])) == 20
    for t in bank["score"]:
        assert t.endswith("Answer with a real number between 0 and 100.")
    for t in bank["level"]:
        assert t.endswith("Answer with good, fair or poor.")


def test_template_choice_is_deterministic_and_covers_bank():
    bank = load_templates()
    a = [question_for(f"id{i}", "score", 0, bank) for i in range(400)]
    b = [question_for(f"id{i}", "score", 0, bank) for i in range(400)]
    assert a == b
    assert {i for i, _ in a} == set(range(20))  # every template is used
    c = [question_for(f"id{i}", "score", 1, bank)[0] for i in range(400)]
    assert c != [i for i, _ in a]  # the seed matters
    lv = [question_for(f"id{i}", "level", 0, bank)[0] for i in range(400)]
    assert lv != [i for i, _ in a]  # the question type matters
    assert template_index("x", 0, "score", 20, k=1) == (template_index("x", 0, "score", 20) + 1) % 20


def test_choice_independent_of_row_order():
    df = _manifest()
    s1 = {(s["id"], s["type"]): s["template"] for s in build_samples(df, "d", 3)}
    s2 = {(s["id"], s["type"]): s["template"] for s in build_samples(df.iloc[::-1], "d", 3)}
    assert s1 == s2


def test_answers_and_levels():
    df = _manifest()
    samples = build_samples(df, "d", 0)
    assert len(samples) == 2 * len(df)
    for s in samples:
        row = df[df["id"] == s["id"]].iloc[0]
        if s["type"] == "score":
            assert re.fullmatch(r"\d{1,3}\.\d{3}", s["answer"]) and s["answer"] == f"{row['mos']:.3f}"
        else:
            assert s["answer"] == row["level"] and s["answer"] in ("good", "fair", "poor")
        assert s["part"] == f"fold{row['fold']}"
    assert score_answer(63.2154) == "63.215" and score_answer(100) == "100.000" and score_answer(0) == "0.000"
    lv = levels_from_mos(pd.Series([10.0, 20, 30, 40, 50, 60, 70, 80, 90]))
    assert list(lv).count("poor") == 3 and list(lv).count("good") == 3


def test_build_prompts_writes_all_folds(tmp_path):
    df = _manifest(n=12, k=5)
    df = df[df["fold"] != 4]  # fold 4 has no videos: its shard exists, empty
    df.to_csv(tmp_path / "m.csv", index=False)
    s = resolve.resolve(_cfg())
    counts = build_prompts(s.prompts, s.dataset("d"), tmp_path / "m.csv", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"fold{k}.jsonl" for k in range(5)]
    assert counts["fold4"] == 0 and sum(counts.values()) == 2 * len(df)
    rows = [json.loads(l) for l in (tmp_path / "out" / "fold0.jsonl").read_text().splitlines()]
    assert set(rows[0]) == {"id", "dataset", "part", "type", "template", "question", "answer", "mos", "level"}
    # rerun: identical bytes (deterministic), no temporary folders left
    before = (tmp_path / "out" / "fold1.jsonl").read_bytes()
    build_prompts(s.prompts, s.dataset("d"), tmp_path / "m.csv", tmp_path / "out")
    assert (tmp_path / "out" / "fold1.jsonl").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "out"]
    assert len(read_prompts([tmp_path / "out"])) == 2 * len(df)


def test_official_split_parts(tmp_path):
    cfg = validate({"datasets": {"lsvq": {"format": "lsvq", "labels": "LSVQ_whole_train.csv",
                                          "extra_labels": ["LSVQ_whole_test.csv"], "split": {"scheme": "official"}}}})
    df = pd.DataFrame({"id": ["a", "b", "c", "d"], "path": ["a.mp4", "b.mp4", "c.mp4", "d.mp4"], "mos": [10.0, 40, 60, 90],
                       "split": ["train", "train", "test", "test"], "fold": -1, "shard": 0,
                       "level": ["poor", "fair", "good", "good"]})
    df.to_csv(tmp_path / "m.csv", index=False)
    s = resolve.resolve(cfg)
    counts = build_prompts(s.prompts, s.dataset("lsvq"), tmp_path / "m.csv", tmp_path / "out")
    assert counts == {"test": 4, "train": 4}


def test_prompts_cli_and_custom_bank(tmp_path):
    import yaml

    from pipeline.cli import main

    _manifest(n=10).to_csv(tmp_path / "m.csv", index=False)
    bank = {"score": ["Rate it. Answer with a real number between 0 and 100."], "level": ["Level? Answer with good, fair or poor."]}
    (tmp_path / "bank.yaml").write_text(yaml.safe_dump(bank))
    cfg = {"datasets": {"d": {"format": "generic", "labels": "l.csv"}},
           "prompts": {"templates": str(tmp_path / "bank.yaml"), "questions": ["score"]}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["prompts", "--config", str(tmp_path / "c.yaml"), "--dataset", "d", "--manifest",
                 str(tmp_path / "m.csv"), "--out-dir", str(tmp_path / "p")]) == 0
    rows = read_prompts([tmp_path / "p"])
    assert len(rows) == 10 and {r["type"] for r in rows} == {"score"} and rows[0]["question"].startswith("Rate it.")
    assert main(["prompts", "--config", str(tmp_path / "c.yaml"), "--dataset", "nope", "--manifest",
                 str(tmp_path / "m.csv"), "--out-dir", str(tmp_path / "p")]) == 2
