"""Constrained decoding: the score / level grammars, the allowed-token sets over a word-level and a
byte-level BPE vocabulary, and greedy answers of random tiny models that are always valid."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from test_lmm import INFO, _cfg, build_lmm

from pipeline.core import resolve
from pipeline.features.stores.store_reader import collate_videos
from pipeline.model.answers import GRAMMARS, LEVELS, parse_level, parse_score
from pipeline.model.constrained import TokenConstraint, constraint_for, mask_logits, token_pieces
from pipeline.model.tokenizer import EOS, VIDEO_TOKEN, train_tokenizer
from pipeline.prompts.shards import load_templates, question_for

CANONICAL = re.compile(r"(?:0|[1-9][0-9]?|100)(?:\.[0-9]{1,3})?")


def _number_language() -> set[str]:
    ints = [str(i) for i in range(100)]
    out = set(ints) | {"100", "100.0", "100.00", "100.000"}
    for i in ints:
        for d in range(1, 4):
            out |= {f"{i}.{f:0{d}d}" for f in range(10 ** d)}
    return out


def test_number_grammar_is_exactly_the_valid_answers():
    g = GRAMMARS["score"]
    lang = _number_language()
    assert len(lang) == 100 * (1 + 10 + 100 + 1000) + 4
    prefixes = {s[:i] for s in lang for i in range(len(s) + 1)}
    # every prefix, and every one-character extension of them (of a sample of the 100k three-decimal
    # answers, whose extensions are all invalid for the same reason)
    full = sorted(s for s in lang if len(s.partition(".")[2]) == 3)
    extend = [p for p in prefixes if len(p.partition(".")[2]) < 3] + full[::97]
    probe = prefixes | {p + ch for p in extend for ch in "0123456789."}
    wrong_prefix = [s for s in probe if g.is_prefix(s) != (s in prefixes)]
    wrong_complete = [s for s in probe if g.is_complete(s) != (s in lang)]
    assert not wrong_prefix[:5] and not wrong_complete[:5]
    for bad in ("063", "00", ".5", "101", "100.5", "63.2151", "1.4.4", "63..", "-5", " 63"):
        assert not g.is_complete(bad), bad
    assert g.is_prefix("") and g.is_prefix("63.") and not g.is_complete("63.")


def test_level_grammar():
    g = GRAMMARS["level"]
    assert all(g.is_complete(w) for w in LEVELS)
    assert g.is_prefix("") and g.is_prefix("go") and g.is_prefix("po") and not g.is_prefix("gp")
    assert not g.is_complete("goo") and not g.is_complete("Good") and not g.is_complete("goods")


# ------------------------------------------------------------------ tokenizers

@pytest.fixture(scope="module")
def bank():
    return load_templates()


@pytest.fixture(scope="module")
def tiny_tok(bank):
    return train_tokenizer([{"question": q, "answer": "1.5"} for q in bank["score"] + bank["level"]])


def make_bpe_tokenizer(bank, use_regex: bool):
    """A byte-level BPE tokenizer (Llama-3 style) trained here on questions and answers, so numbers
    merge into multi-digit tokens ("63", " 63"; with use_regex=False also across the dot, ".215")."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", EOS, "<unk>", VIDEO_TOKEN]
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    rng = np.random.default_rng(0)
    corpus = []
    for q in bank["score"] + bank["level"]:
        corpus.append(f"{q} Answer: {rng.uniform(0, 100):.3f} {LEVELS[len(corpus) % 3]}")
    for i in range(20000):
        corpus.append(f"{rng.uniform(0, 100):.{i % 4}f} {rng.integers(0, 100)}")
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token=EOS, pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=[VIDEO_TOKEN])
    fast.padding_side = "left"
    return fast


_BPE: dict = {}


def _checked_bpe(bank, use_regex: bool):
    if use_regex not in _BPE:
        tok = make_bpe_tokenizer(bank, use_regex)
        pieces = token_pieces(tok)
        g = GRAMMARS["score"]
        # the vocabulary really has what makes BPE hard: multi-character number tokens, and number
        # tokens with a leading space; without the regex split also tokens across the dot ("84.")
        assert any(len(p) >= 2 and g.is_prefix(p) for p in pieces)
        assert any(p.startswith(" ") and p[1:] and g.is_prefix(p[1:]) for p in pieces)
        assert use_regex or any(len(p) >= 2 and p.endswith(".") and g.is_prefix(p) for p in pieces)
        _BPE[use_regex] = tok
    return _BPE[use_regex]


@pytest.fixture(scope="module", params=[True, False], ids=["bpe-regex", "bpe-whole"])
def bpe_tok(bank, request):
    return _checked_bpe(bank, request.param)


@pytest.fixture(scope="module", params=["tiny", "bpe-regex", "bpe-whole"])
def any_tok(bank, tiny_tok, request):
    return tiny_tok if request.param == "tiny" else _checked_bpe(bank, request.param == "bpe-regex")


def test_pieces_decoded_once_and_cached(tiny_tok):
    a = token_pieces(tiny_tok)
    assert token_pieces(tiny_tok) is a and len(a) == len(tiny_tok)
    c = constraint_for(tiny_tok, "score", [tiny_tok.eos_token_id])
    assert constraint_for(tiny_tok, "score", [tiny_tok.eos_token_id]) is c
    # digits, "." and the space token are the tiny tokenizer's only score candidates
    assert sorted(a[i] for i, _, _ in c.candidates) == sorted([" ", "."] + list("0123456789"))


def test_allowed_tokens_bpe(bpe_tok):
    tok = bpe_tok
    eos = tok.eos_token_id
    c = TokenConstraint(tok, GRAMMARS["score"], [eos])
    pieces = token_pieces(tok)

    def allowed(state, left):
        return {pieces[i] if i != eos else "<eos>" for i in c.allowed(state, left).tolist()}

    g = GRAMMARS["score"]
    start = allowed("", 8)
    multi = [p for p in pieces if len(p) >= 2 and g.is_prefix(p)]
    spaced = [p for p in pieces if p.startswith(" ") and p[1:] and g.is_prefix(p[1:])]
    assert multi and set(multi) <= start  # "63"-style tokens start an answer
    assert spaced and set(spaced) <= start  # so do " 63"-style ones
    assert all(p.lstrip() == "" or GRAMMARS["score"].is_prefix(p.lstrip()) for p in start)
    assert "<eos>" not in start  # nothing to stop on yet
    after6 = allowed("6", 8)
    assert "<eos>" in after6 and "3" in after6 and not set(spaced) & after6  # no whitespace inside a number
    assert not any(p.startswith("0") and len(p) > 1 and p.isdigit() for p in allowed("", 8))  # no "00"
    # the last step must end the answer: only tokens that make it complete
    last = allowed("63.", 1)
    assert last and all(GRAMMARS["score"].is_complete("63." + p) for p in last)
    assert allowed("63.215", 5) == {"<eos>"}
    assert allowed("100", 3) <= {".", ".0", ".00", ".000", "<eos>"} and "<eos>" in allowed("100", 3)


def test_vocabulary_without_digits_is_a_clear_error(tiny_tok):
    c = TokenConstraint(tiny_tok, GRAMMARS["score"], [tiny_tok.eos_token_id])
    c.check_reachable(1)
    with pytest.raises(ValueError, match="at least 1 token"):
        c.check_reachable(0)
    c.candidates = [x for x in c.candidates if not x[2].isdigit()]
    c._need.clear()
    with pytest.raises(ValueError, match="cannot spell any score answer"):
        c.check_reachable(8)


def test_random_logits_always_give_valid_answers(any_tok):
    """Batched masks over random logits: 256 random walks per answer kind and token limit."""
    tok = any_tok
    torch.manual_seed(0)
    eos = [tok.eos_token_id]
    for kind in ("score", "level"):
        c = constraint_for(tok, kind, eos)
        for limit in (1, 3, 8):
            if c.need("") > limit:
                assert kind == "level"  # a level word may take more than one token
                continue
            B = 256
            text, done = [""] * B, [False] * B
            for step in range(limit):
                allowed = [None if done[b] else c.allowed(text[b].lstrip(), limit - step) for b in range(B)]
                logits = mask_logits(torch.randn(B, len(tok)) * 3, allowed)
                for b, t in enumerate(logits.argmax(-1).tolist()):
                    if done[b]:
                        continue
                    assert t in allowed[b].tolist()
                    if t in eos:
                        done[b] = True
                    else:
                        text[b] = c.advance(text[b], t)
            answers = [t.strip() for t in text]
            if kind == "score":
                assert all(CANONICAL.fullmatch(a) and parse_score(a)[1] == "ok" for a in answers)
                assert all(0 <= parse_score(a)[0] <= 100 for a in answers)
                if limit >= 3:
                    assert len(set(answers)) > 20  # the mask leaves real choice
            else:
                assert all(a in LEVELS and parse_level(a) == (a, "ok") for a in answers)


def test_every_valid_answer_stays_reachable(any_tok):
    """The tokens of any valid answer, as the tokenizer spells it, are allowed step by step, then
    eos: the constraint never changes a greedy answer that was valid already."""
    from pipeline.model.prompt_format import PromptFormatter

    tok = any_tok
    fmt = PromptFormatter(tok, 1)
    rng = np.random.default_rng(0)
    answers = ["0", "7", "63", "100", "100.000", "0.5", "99.999"] + [f"{x:.{d}f}" for x, d in
                                                                    zip(rng.uniform(0, 100, 60), [0, 1, 2, 3] * 15)]
    for kind, texts in (("score", answers), ("level", list(LEVELS))):
        c = constraint_for(tok, kind, [tok.eos_token_id])
        for text in texts:
            ids = fmt.answer_ids(text, eos=True)
            limit = len(ids)
            state = ""
            for step, t in enumerate(ids):
                assert t in c.allowed(state.lstrip(), limit - step).tolist(), (text, step)
                if t != tok.eos_token_id:
                    state = c.advance(state, t)
            assert state.strip() == text


def test_mask_logits_leaves_unconstrained_rows():
    logits = torch.randn(3, 10)
    out = mask_logits(logits, [torch.tensor([2, 5]), None, torch.tensor([0])])
    assert torch.equal(out[1], logits[1])
    assert torch.isinf(out[0]).sum() == 8 and out[0, 2] == logits[0, 2] and out[0, 5] == logits[0, 5]
    assert int(out[2].argmax()) == 0


# ------------------------------------------------------------------ random tiny models

def _inputs(n, seed, bank, kind):
    rng = np.random.default_rng(seed)
    vids = [(rng.normal(size=(int(rng.integers(1, 4)), INFO["vision_tokens"], INFO["vision_width"])).astype(np.float32),
             rng.normal(size=(int(rng.integers(1, 4)), INFO["motion_dim"])).astype(np.float32) * 3)
            for _ in range(n)]
    qs = [question_for(f"v{seed}-{i}", kind, seed, bank)[1] for i in range(n)]
    return collate_videos(vids), qs


def test_random_models_never_give_invalid_answers(any_tok, bank):
    tok = any_tok
    free_invalid = 0
    for seed in range(2):
        torch.manual_seed(seed)
        model = build_lmm(_cfg(), tok, INFO, seed=seed)
        for kind in ("score", "level"):
            videos, qs = _inputs(16, seed, bank, kind)
            for limit in (3, 8):
                texts = model.generate(videos, qs, limit, constrain=kind)
                if kind == "score":
                    for t in texts:
                        value, reason = parse_score(t)
                        assert reason == "ok" and 0 <= value <= 100 and CANONICAL.fullmatch(t), t
                else:
                    assert all(parse_level(t) == (t, "ok") for t in texts), texts
            free = model.generate(videos, qs, 8)
            check = parse_score if kind == "score" else parse_level
            free_invalid += sum(check(t)[0] is None for t in free)
    assert free_invalid > 0  # the same random models' free text is often invalid: the mask does the work


def test_per_row_constraint_leaves_other_rows_alone(tiny_tok, bank):
    torch.manual_seed(0)
    model = build_lmm(_cfg(), tiny_tok, INFO, seed=0)
    videos, qs = _inputs(6, 0, bank, "score")
    kinds = [None, "score", "level", None, "score", "level"]
    mixed = model.generate(videos, qs, 8, constrain=kinds)
    free = model.generate(videos, qs, 8)
    score = model.generate(videos, qs, 8, constrain="score")
    level = model.generate(videos, qs, 8, constrain="level")
    expect = [{None: free, "score": score, "level": level}[k][i] for i, k in enumerate(kinds)]
    assert mixed == expect
    with pytest.raises(ValueError, match="3 entries for 6"):
        model.generate(videos, qs, 8, constrain=["score"] * 3)


def test_predict_batch_decoding_setting(tiny_tok, bank):
    from pipeline.evaluation.predict import predict_batch

    torch.manual_seed(2)
    model = build_lmm(_cfg(), tiny_tok, INFO, seed=2)
    videos, _ = _inputs(12, 2, bank, "score")
    ids = [f"v2-{i}" for i in range(12)]
    con = predict_batch(model, videos, ids, bank=bank, templates=2, decoding="constrained")
    free = predict_batch(model, videos, ids, bank=bank, templates=2, decoding="free")
    assert not any(r["invalid"] for r in con)
    for r in con:  # the level question is asked with each template too; the level is the more frequent answer
        answers = r["level_text"].split(" | ")
        assert len(answers) == 2 and set(answers) <= set(LEVELS) and r["level"] in answers
        assert answers[0] == answers[1] or r["level"] == max(answers, key=lambda lv: r[f"p_{lv}"])
    for r in con:
        parts = r["text"].split(" | ")
        assert len(parts) == 2 and r["score"] == pytest.approx(np.mean([float(p) for p in parts]))
    assert any(r["invalid"] for r in free)
    # the probability score does not depend on how the text is decoded
    assert [r["prob_score"] for r in con] == [r["prob_score"] for r in free]
    with pytest.raises(ValueError, match="unknown decoding 'greedy'"):
        predict_batch(model, videos, ids, bank=bank, decoding="greedy")


def test_config_decoding_default_and_check():
    from pipeline.core.config import validate
    from pipeline.core.errors import UserError
    from pipeline.evaluation.score_files import default_decoding

    cfg = validate({"datasets": {"d": {"format": "generic", "labels": "l.csv"}}, "models": {"preset": "tiny"}})
    assert cfg["evaluation"]["decoding"] == "constrained" == default_decoding()
    with pytest.raises(UserError, match="evaluation.decoding"):
        validate({"datasets": {"d": {"format": "generic", "labels": "l.csv"}}, "evaluation": {"decoding": "beam"}})


def test_evaluate_uses_the_decoding_setting(tmp_path, monkeypatch):
    """`lmmvqa evaluate` decodes as evaluation.decoding says, records it in metrics.json, and keeps
    the invalid count (0 when constrained) in the metrics and predictions."""
    import json

    import pandas as pd
    from test_train import make_workspace

    from pipeline.core import resolve
    from pipeline.evaluation.evaluate import evaluate
    from pipeline.training.train import train

    cfg = make_workspace(tmp_path, n_videos=10, k=2, training={"batch_size": 4, "val_fraction": 0.0})
    cfg["evaluation"]["bootstrap"] = 0
    monkeypatch.chdir(tmp_path)
    train(resolve.of(cfg), "exp", "results/models/exp", max_steps=1, progress=False)
    got = {}
    for decoding in ("free", "constrained", "mbr"):
        cfg["evaluation"]["decoding"] = decoding
        out = tmp_path / decoding / "predictions.csv"
        metrics = evaluate(resolve.resolve(cfg), "exp", "syn:test", out, out.with_name("metrics.json"))
        preds = pd.read_csv(out)
        assert json.loads(out.with_name("metrics.json").read_text())["decoding"] == decoding
        assert metrics["invalid"] == int(preds["invalid"].sum())
        got[decoding] = (metrics, preds)
    metrics, preds = got["constrained"]
    assert len(preds) == 5 and metrics["invalid"] == 0
    assert all(parse_score(str(t))[1] == "ok" for t in preds["text"])
    assert set(preds["level"]) <= set(LEVELS) and preds["level"].notna().all()
    assert list(preds["prob_score"]) == list(got["free"][1]["prob_score"])
    metrics, preds = got["mbr"]  # the median of the probability score's candidates, the most probable level
    assert metrics["invalid"] == 0 and list(preds["prob_score"]) == list(got["free"][1]["prob_score"])
    assert all(parse_score(str(t))[1] == "ok" for t in preds["text"])
    assert list(preds["level"]) == [max(LEVELS, key=lambda lv: r[f"p_{lv}"]) for _, r in preds.iterrows()]
