"""`evaluation.decoding: mbr`: the score answer is the weighted median of the probability score's own
candidate distribution (least expected absolute error), the level the most probable level word; both
through predict_batch, with no text generated."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_constrained import _inputs
from test_lmm import INFO, _cfg, build_lmm

from pipeline.core.config import validate
from pipeline.model.answers import expected_score, mbr_score, most_probable_level, parse_score
from pipeline.model.tokenizer import train_tokenizer
from pipeline.prompts.answer_format import FORMATS, answer_format
from pipeline.prompts.shards import load_templates


def _logprobs(mass: dict[int, float]) -> dict[str, float]:
    """The 101 candidates "0".."100" with the given probability mass (the rest 0, i.e. -inf)."""
    return {str(v): (math.log(mass[v]) if mass.get(v) else -math.inf) for v in range(101)}


def _risk(lp: dict[str, float], c: float) -> float:
    p = {int(k): math.exp(v) for k, v in lp.items()}
    return sum(q * abs(v - c) for v, q in p.items()) / sum(p.values())


@pytest.mark.parametrize("mass, median", [
    ({63: 1.0}, 63.0),                          # one answer
    ({10: 0.2, 40: 0.31, 90: 0.49}, 40.0),      # cumulative 0.51 at 40: the median, far below the mean 58.5
    ({10: 0.3, 40: 0.19, 90: 0.51}, 90.0),      # more than half the mass on 90, the mean is 56.5
    ({0: 0.6, 100: 0.4}, 0.0),                  # bimodal: the median is a mode, not the mean 40
    ({20: 0.5, 80: 0.5}, 50.0),                 # tie: every value 20..80 has the least risk; the mean wins
    ({20: 0.5, 81: 0.5}, 50.0),                 # tie, mean 50.5 between two candidates: the lower one
    ({30: 0.25, 31: 0.25, 70: 0.5}, 50.0),      # tie over 31..70 (mean 50.25): the nearest to the mean
])
def test_weighted_median_least_expected_absolute_error(mass, median):
    lp = _logprobs(mass)
    got = mbr_score(lp)
    assert got == median
    best = min(_risk(lp, c) for c in range(101))
    assert _risk(lp, got) == pytest.approx(best)
    # log-probabilities need not be normalised (the probability score renormalises too)
    assert mbr_score({k: v - 3.0 for k, v in lp.items()}) == median


def test_weighted_median_of_a_spread_distribution():
    # a discretised Gaussian around 62.3 with a small bump at 5: the median stays at the bulk
    values = np.arange(101)
    p = np.exp(-0.5 * ((values - 62.3) / 6.0) ** 2)
    p[5] += 0.05 * p.sum()
    lp = {str(v): float(np.log(q)) for v, q in zip(values, p)}
    assert mbr_score(lp) == 62.0
    assert expected_score(lp) == pytest.approx(59.6, abs=0.1)  # the mean is pulled towards the bump


@pytest.mark.parametrize("fmt, text", [("integer", "40"), ("decimal3", "40.000")])
def test_mbr_answer_rendered_in_each_format(fmt, text):
    """The candidates of both formats are the 101 integer values ("40" / "40." as the answer's start); the
    answer is the median written as the format writes a score, and parses back to it."""
    f = answer_format(fmt)
    assert f.render(mbr_score(_logprobs({10: 0.2, 40: 0.31, 90: 0.49}))) == text
    assert parse_score(text) == (40.0, "ok")


def test_level_is_the_most_probable_word():
    assert most_probable_level({"poor": 0.2, "fair": 0.3, "good": 0.5}) == "good"
    assert most_probable_level({"poor": 0.45, "fair": 0.1, "good": 0.45}) == "poor"  # tie: the first of LEVELS
    assert most_probable_level({"poor": 0.1, "fair": 0.6, "good": 0.3}) == "fair"


def test_offline_preset_decodes_mbr_and_the_paper_greedy():
    base = {"datasets": {"d": {"format": "generic", "labels": "l.csv"}}}
    assert validate(dict(base))["evaluation"]["decoding"] == "mbr"  # offline, the default preset
    assert validate({**base, "models": {"preset": "paper"}})["evaluation"]["decoding"] == "constrained"
    assert validate({**base, "models": {"preset": "tiny"}})["evaluation"]["decoding"] == "constrained"
    mine = validate({**base, "evaluation": {"decoding": "constrained", "templates_per_video": 2}})
    assert mine["evaluation"]["decoding"] == "constrained"  # a key the config sets wins
    assert validate({**base, "models": {"preset": "paper"}, "evaluation": {"decoding": "mbr"}})["evaluation"]["decoding"] == "mbr"


# ------------------------------------------------------------------ through predict_batch on tiny models

@pytest.fixture(scope="module")
def bank():
    return load_templates()


def _model(bank, fmt: str, seed: int):
    tok = train_tokenizer([{"question": q, "answer": FORMATS[fmt].render(50.5)} for q in bank["score"] + bank["level"]], fmt)
    cfg = _cfg()
    cfg["prompts"]["answer_format"] = fmt
    torch.manual_seed(seed)
    return build_lmm(cfg, tok, INFO, seed=seed)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_predict_batch_mbr_is_the_median_of_its_own_candidates(bank, fmt, monkeypatch):
    from pipeline.evaluation.predict import predict_batch
    from pipeline.prompts.shards import question_for

    model = _model(bank, fmt, 3)
    assert model.answer_format.name == fmt
    videos, _ = _inputs(6, 3, bank, "score")
    ids = [f"v3-{i}" for i in range(6)]
    constrained = predict_batch(model, videos, ids, bank=bank, decoding="constrained")
    calls = []
    monkeypatch.setattr(model, "generate", lambda *a, **k: calls.append(a) or [])
    rows = predict_batch(model, videos, ids, bank=bank, decoding="mbr")
    assert not calls  # nothing generated: text and prob_score come from one scoring of the candidates
    questions = [question_for(v, "score", 0, bank)[1] for v in ids]
    candidates = model.score_logprobs(videos, questions)
    for r, c, con in zip(rows, candidates, constrained):
        value, reason = parse_score(r["text"])
        assert reason == "ok" and not r["invalid"] and r["score"] == value == mbr_score(c)
        assert r["text"] == model.answer_format.render(value)
        assert r["prob_score"] == pytest.approx(expected_score(c)) and r["prob_score"] == pytest.approx(con["prob_score"])
        assert r["level"] == r["level_text"] == max(("poor", "fair", "good"), key=lambda lv: r[f"p_{lv}"])
        assert [r[f"p_{lv}"] for lv in ("good", "fair", "poor")] == [con[f"p_{lv}"] for lv in ("good", "fair", "poor")]


def test_predict_batch_mbr_agrees_with_a_peaked_probability_score(bank, monkeypatch):
    """With the model's distribution peaked around a value (a trained model's), the text is within a
    point of prob_score, whereas a greedy answer may take a far first token."""
    from pipeline.evaluation.predict import predict_batch

    model = _model(bank, "integer", 4)
    videos, _ = _inputs(3, 4, bank, "score")
    centres = [12.4, 57.0, 88.6]
    values = np.arange(101)

    def peaked(videos, questions):
        return [{str(v): float(-0.5 * ((v - m) / 3.0) ** 2) for v in values} for m in centres[:len(questions)]]

    monkeypatch.setattr(model, "score_logprobs", peaked)
    rows = predict_batch(model, videos, ["a", "b", "c"], bank=bank, decoding="mbr")
    assert [r["text"] for r in rows] == ["12", "57", "89"]
    for r, m in zip(rows, centres):
        assert abs(r["score"] - r["prob_score"]) <= 0.6 and r["prob_score"] == pytest.approx(m, abs=0.01)


def test_predict_batch_mbr_with_templates(bank):
    """With K templates each template's median is one answer of `text`, the score their mean; the level
    is the most probable word of the averaged probabilities."""
    from pipeline.evaluation.predict import predict_batch

    model = _model(bank, "integer", 5)
    videos, _ = _inputs(4, 5, bank, "score")
    ids = [f"v5-{i}" for i in range(4)]
    rows = predict_batch(model, videos, ids, bank=bank, templates=2, decoding="mbr")
    for r in rows:
        parts = r["text"].split(" | ")
        assert len(parts) == 2 and all(parse_score(p)[1] == "ok" for p in parts)
        assert r["score"] == pytest.approx(np.mean([float(p) for p in parts]))
        assert len(r["level_text"].split(" | ")) == 2
        assert r["level"] == max(("poor", "fair", "good"), key=lambda lv: r[f"p_{lv}"])
