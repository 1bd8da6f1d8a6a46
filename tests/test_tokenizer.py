"""The tiny preset tokenizer: coverage of digits, '.', level words, template words; round trips."""
from __future__ import annotations

import pytest

from pipeline.model.tokenizer import BOS, EOS, PAD, UNK, VIDEO_TOKEN, load_tokenizer, train_tokenizer, write_tokenizer
from pipeline.prompts.shards import load_templates


@pytest.fixture(scope="module")
def tok():
    bank = load_templates()
    samples = [{"question": q, "answer": "12.345"} for q in bank["score"]] + \
              [{"question": q, "answer": "fair"} for q in bank["level"]]
    return train_tokenizer(samples)


def test_digits_dot_levels_are_single_tokens(tok):
    unk = tok.unk_token_id
    for piece in [*"0123456789", ".", "good", "fair", "poor"]:
        ids = tok(piece, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] != unk, piece
    ids = tok("100.000", add_special_tokens=False)["input_ids"]
    assert len(ids) == 7 and tok.decode(ids) == "100.000"
    for answer in ("0.000", "63.215", "99.999", "good", "poor"):
        assert tok.decode(tok(answer, add_special_tokens=False)["input_ids"]) == answer


def test_every_template_word_is_covered(tok):
    unk = tok.unk_token_id
    for qs in load_templates().values():
        for q in qs:
            ids = tok(f"{VIDEO_TOKEN} {q} Answer:", add_special_tokens=False)["input_ids"]
            assert unk not in ids, q
            assert ids[0] == tok.convert_tokens_to_ids(VIDEO_TOKEN)


def test_special_tokens_and_round_trip(tok, tmp_path):
    for t in (PAD, BOS, EOS, UNK, VIDEO_TOKEN):
        assert tok.convert_tokens_to_ids(t) != tok.unk_token_id or t == UNK
    assert tok.pad_token == PAD and tok.eos_token == EOS and tok.bos_token == BOS
    write_tokenizer(tok, tmp_path / "t")
    again = load_tokenizer(tmp_path / "t")
    text = f"{VIDEO_TOKEN} {load_templates()['score'][3]} Answer:"
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert len(again) == len(tok)
    assert again.decode(again("poor", add_special_tokens=False)["input_ids"] + [again.eos_token_id],
                        skip_special_tokens=True) == "poor"


def test_tokenizer_cli(tmp_path):
    import pandas as pd

    from pipeline.cli import main
    from pipeline.core import resolve
    from pipeline.core.config import validate
    from pipeline.prompts.shards import build_prompts

    pd.DataFrame({"id": ["a", "b", "c"], "path": ["a.mp4", "b.mp4", "c.mp4"], "shard": 0, "mos": [10.0, 50, 90], "split": "kfold", "fold": [0, 1, 2],
                  "level": ["poor", "fair", "good"]}).to_csv(tmp_path / "m.csv", index=False)
    cfg = validate({"datasets": {"d": {"format": "generic", "labels": "l.csv"}}})
    s = resolve.resolve(cfg)
    build_prompts(s.prompts, s.dataset("d"), tmp_path / "m.csv", tmp_path / "p")
    assert main(["tokenizer", "--prompts", str(tmp_path / "p"), "--out", str(tmp_path / "tok")]) == 0
    t = load_tokenizer(tmp_path / "tok")
    assert t.convert_tokens_to_ids(VIDEO_TOKEN) != t.unk_token_id
    assert main(["tokenizer", "--prompts", str(tmp_path / "p" / "fold0.jsonl"), "--out", str(tmp_path / "tok2")]) == 0
