"""Strict parsing of generated answers: numbers in [0, 100], level words; adversarial inputs."""
import pytest

from pipeline.model.answers import parse_level, parse_score


@pytest.mark.parametrize(
    "text, value",
    [
        ("63.2", 63.2),
        ("The score is 63.215.", 63.215),
        ("63.215", 63.215),
        ("  0 ", 0.0),
        ("100", 100.0),
        ("100.000", 100.0),
        (".5", 0.5),
        ("+42", 42.0),
        ("Score: 63.2/100.", 63.2),
        ("63 out of 100", 63.0),
        ("a score of 100", 100.0),
        ("63.2, that is 63.2", 63.2),
        ("quality 0063.5", 63.5),
        ("Nancy rates it 50", 50.0),
        ("63.215</s>", 63.215),
    ],
)
def test_valid_scores(text, value):
    got, reason = parse_score(text)
    assert reason == "ok"
    assert got == pytest.approx(value)


@pytest.mark.parametrize(
    "text, why",
    [
        ("sixty", "no number"),
        ("", "empty"),
        ("   ", "empty"),
        (None, "empty"),
        (float("nan"), "empty"),
        ("1e309", "exponent"),
        ("6.3E1", "exponent"),
        ("1e-5", "exponent"),
        ("-5", "negative"),
        ("score: -0.5", "negative"),
        ("\u22125", "negative"),
        ("150", "out of range"),
        ("100.001", "out of range"),
        ("63.2.1", "malformed"),
        ("1..2", "malformed"),
        ("NaN", "finite"),
        ("nan", "finite"),
        ("inf", "finite"),
        ("Infinity", "finite"),
        ("63 or 64", "several"),
        ("63-64", "several"),
        ("x264 63", "several"),
        ("9" * 400, "too large"),
        ("__import__('os').system('ls')", "no number"),
        ("60+3", "several"),
    ],
)
def test_invalid_scores(text, why):
    got, reason = parse_score(text)
    assert got is None
    assert why in reason


def test_parser_never_evaluates(monkeypatch):
    import builtins

    def boom(*a, **k):
        raise AssertionError("eval called")

    monkeypatch.setattr(builtins, "eval", boom)
    monkeypatch.setattr(builtins, "exec", boom)
    assert parse_score("2*30")[0] is None  # two numbers, not 60
    assert parse_score("63.2") == (63.2, "ok")


@pytest.mark.parametrize(
    "text, level",
    [("good", "good"), ("Fair.", "fair"), ("The quality is POOR", "poor"), ("good, good", "good")],
)
def test_valid_levels(text, level):
    assert parse_level(text) == (level, "ok")


@pytest.mark.parametrize(
    "text, why",
    [("", "empty"), (None, "empty"), ("excellent", "no level"), ("goodness", "no level"),
     ("good or fair", "several"), ("not poor but fair", "several"), ("63.2", "no level")],
)
def test_invalid_levels(text, why):
    level, reason = parse_level(text)
    assert level is None
    assert why in reason


def test_expected_score_from_candidate_logprobs():
    import math

    from pipeline.evaluation.predict import SCORE_CANDIDATES
    from pipeline.model.answers import expected_score

    # the candidates end in "." (so "6" does not also count "63"); expected_score takes the numbers
    assert len(SCORE_CANDIDATES) == 101 and SCORE_CANDIDATES[0] == "0." and SCORE_CANDIDATES[-1] == "100."
    lp = {c[:-1]: -math.inf for c in SCORE_CANDIDATES}
    lp["60"], lp["70"] = math.log(0.25), math.log(0.75)  # renormalised: 0.25 * 60 + 0.75 * 70
    assert expected_score(lp) == pytest.approx(67.5)
    # unnormalised log-probabilities (very negative) give the same answer
    assert expected_score({"20": -1000.0, "40": -1000.0}) == pytest.approx(30.0)
    with pytest.raises(ValueError):
        expected_score({"20": -math.inf})


def test_level_probabilities_renormalised():
    import math

    from pipeline.model.answers import level_probabilities

    p = level_probabilities({"good": math.log(0.2), "fair": math.log(0.1), "poor": math.log(0.1), "other": 0.0})
    assert p == pytest.approx({"good": 0.5, "fair": 0.25, "poor": 0.25})
    with pytest.raises(ValueError):
        level_probabilities({"good": 0.0})


def test_every_constrained_answer_parses_to_its_value():
    """Constrained decoding (pipeline.model.constrained) only produces numbers 0..100 with at most three
    decimals and no leading zeros; the strict parser must accept each of them as exactly its value."""
    import re

    from pipeline.model.answers import GRAMMARS

    grammar = GRAMMARS["score"]
    texts = [str(i) for i in range(101)] + ["100.0", "100.00", "100.000"]
    texts += [f"{i}.{f:0{d}d}" for i in range(100) for d in (1, 2, 3) for f in range(0, 10 ** d, 1 if d < 3 else 37)]
    for text in texts:
        assert grammar.is_complete(text), text
        value, reason = parse_score(text)
        assert reason == "ok" and value == float(text) and 0 <= value <= 100, text
        assert re.fullmatch(r"[0-9]+(\.[0-9]{1,3})?", text)
