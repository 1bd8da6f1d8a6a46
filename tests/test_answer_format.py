"""The answer format (`prompts.answer_format`): every score 0..100 renders, tokenises, decodes, parses and
is a candidate of the probability score and of the constrained decoder, for the tiny tokenizer and for
byte-level BPE tokenizers; the paper's format is what it was."""
from __future__ import annotations

import pytest
from test_constrained import _checked_bpe

from pipeline.model.answers import GRAMMARS, grammar_for, parse_score
from pipeline.model.constrained import constraint_for
from pipeline.model.prompt_format import PromptFormatter
from pipeline.model.tokenizer import train_tokenizer
from pipeline.prompts.answer_format import FORMATS, answer_format, with_format
from pipeline.prompts.shards import load_templates, score_answer

MAX_NEW_TOKENS = 8


@pytest.fixture(scope="module")
def bank():
    return load_templates()


def _tiny(bank, fmt):
    return train_tokenizer([{"question": q, "answer": answer_format(fmt).render(50.5)}
                            for q in bank["score"] + bank["level"]], fmt)


@pytest.fixture(scope="module")
def tokenizers(bank):
    return {"tiny-decimal3": _tiny(bank, "decimal3"), "tiny-integer": _tiny(bank, "integer"),
            "bpe-regex": _checked_bpe(bank, True), "bpe-whole": _checked_bpe(bank, False)}


def _accepted(constraint, ids, eos) -> bool:
    """Whether constrained greedy decoding may emit exactly these tokens and then eos."""
    state = ""
    for step, t in enumerate(ids):
        if t not in constraint.allowed(state, MAX_NEW_TOKENS - step).tolist():
            return False
        state = constraint.advance(state, t).lstrip()
    return eos in constraint.allowed(state, MAX_NEW_TOKENS - len(ids)).tolist()


@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize("tok_name", ["tiny", "bpe-regex", "bpe-whole"])
def test_every_score_round_trips(tokenizers, name, tok_name):
    fmt = answer_format(name)
    tok = tokenizers[f"tiny-{name}"] if tok_name == "tiny" else tokenizers[tok_name]
    formatter = PromptFormatter(tok, 3)
    constraint = constraint_for(tok, "score", [tok.eos_token_id], answer_format=fmt)
    candidates = fmt.candidates()
    assert len(candidates) == 101 and fmt.candidate_values() == [float(v) for v in range(101)]
    for v in range(101):
        for mos in ([v, v + 0.2149, v + 0.5] if v < 100 else [v]):
            text = fmt.render(mos)
            ids = formatter.answer_ids(text, eos=False)
            assert tok.decode(ids) == text, (tok_name, text)
            value, why = parse_score(text)
            assert why == "ok" and value == pytest.approx(round(mos + 1e-9, fmt.decimals)), text
            assert grammar_for("score", fmt).is_complete(text), text
            assert _accepted(constraint, ids, tok.eos_token_id), (tok_name, text)
            # the probability score's candidate of the value the answer starts with
            cand = candidates[int(float(text))]
            if fmt.candidate_eos:  # whole answers: the candidate is the answer
                assert cand == text and formatter.answer_ids(cand, eos=False) == ids
            else:  # the start of the answer: its integer part and the dot
                assert text.startswith(cand) or text == cand[:-1]


def test_integer_answers_are_one_tiny_token_each(tokenizers):
    tok = tokenizers["tiny-integer"]
    formatter = PromptFormatter(tok, 3)
    ids = [formatter.answer_ids(str(v), eos=False) for v in range(101)]
    assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == 101
    # the decimal3 tiny tokenizer spells digits one by one, as before
    digits = PromptFormatter(tokenizers["tiny-decimal3"], 3)
    assert [tokenizers["tiny-decimal3"].decode([t]) for t in digits.answer_ids("63.215", eos=False)] == \
        ["6", "3", ".", "2", "1", "5"]


def test_paper_format_unchanged(bank):
    fmt = answer_format("decimal3")
    assert answer_format(None) is fmt
    assert [fmt.render(m) for m in (63.2154, 100, 0, 7.0005)] == ["63.215", "100.000", "0.000", "7.000"]
    assert score_answer(63.2154) == "63.215" == score_answer(63.2154, "decimal3")
    assert fmt.candidates()[:2] == ["0.", "1."] and fmt.candidates()[-1] == "100." and not fmt.candidate_eos
    assert grammar_for("score", "decimal3") is grammar_for("score", None)
    g = GRAMMARS["score"]
    for text in ("0", "7", "63.2", "63.215", "100", "100.000", "063", ".5", "63.", "101", "63.2151", "100.5"):
        assert g.is_complete(text) == grammar_for("score", fmt).is_complete(text)
    assert load_templates(None, "decimal3") == bank and with_format(bank["score"][0], fmt) == bank["score"][0]


def test_integer_format_language_and_questions(bank):
    fmt = answer_format("integer")
    assert [fmt.render(m) for m in (63.4999, 63.5, 0.2, 99.7, 100, -3, 140)] == ["63", "64", "0", "100", "100", "0", "100"]
    g = grammar_for("score", fmt)
    assert all(g.is_complete(str(v)) for v in range(101))
    for bad in ("063", "101", "63.0", "63.", ".5", "00", ""):
        assert not g.is_complete(bad), bad
    assert g.is_prefix("") and g.is_prefix("10") and not g.is_prefix("63.")
    questions = load_templates(None, "integer")["score"]
    assert len(questions) == len(bank["score"])
    assert all("a whole number between 0 and 100" in q and "real number" not in q for q in questions)
    assert load_templates(None, "integer")["level"] == bank["level"]
