"""Tokenizers: the word-level tokenizer trained on the prompt shards for an LLM built at random init
(the `tiny` and `offline` presets), and a pretrained LLM's tokenizer (`paper`) with a video placeholder (one of its reserved special tokens where it
has them, e.g. Llama-3's `<|reserved_special_token_0|>`, else an added `<video>`).

Trained tokenizer (`lmmvqa tokenizer --prompts FILE_OR_DIR... --out DIR`): a `tokenizers` WordLevel
model trained on every question and answer of the shards. Spaces become a `▁` word prefix
(Metaspace), punctuation is split off, and numbers are split as the answer format says
(`prompts.answer_format`, pipeline/prompts/answer_format.py): `decimal3` (the paper's) makes every digit a
token of its own, `integer` keeps digit runs whole and puts every number 0..100 in the vocabulary, so

* a `decimal3` score answer `63.215` is the tokens `6 3 . 2 1 5` and decodes back to exactly `63.215`;
  an `integer` answer `63` is the one token `63`;
* the level words, every template word, the digits and `.` are in the vocabulary (checked after
  training: a word that would map to `<unk>` is an error);
* special tokens: `<pad>`, `<s>` (bos), `</s>` (eos), `<unk>`, and the video placeholder `<video>`.

Saved as a `PreTrainedTokenizerFast` folder, loadable with `AutoTokenizer.from_pretrained(DIR)`.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from pipeline.core.errors import UserError
from pipeline.core.levels import LEVELS
from pipeline.prompts.answer_format import FORMATS, AnswerFormat
from pipeline.prompts.answer_format import answer_format as get_format
from pipeline.prompts.shards import read_prompts

VIDEO_TOKEN = "<video>"
PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, VIDEO_TOKEN]
ANSWER_PREFIX = "Answer:"  # the tiny prompt format: "<video> {question} Answer:" then the answer tokens
# always in the vocabulary: digits, the number punctuation, the level words (best first, lower and
# capitalised) and the answer prefix
ALWAYS = " ".join(["0 1 2 3 4 5 6 7 8 9 . :", *reversed(LEVELS), *(w.capitalize() for w in reversed(LEVELS)),
                   ANSWER_PREFIX])


def _pre_tokenizer(number_tokens: str = "digits"):
    return pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never"),
        pre_tokenizers.Digits(individual_digits=number_tokens == "digits"),
        pre_tokenizers.Punctuation(),
    ])


def corpus(samples: list[dict], fmt: AnswerFormat | None = None) -> list[str]:
    always = ALWAYS
    if fmt is not None and fmt.number_tokens == "whole":  # every whole-number answer is a token
        always += " " + " ".join(fmt.candidates())
    texts = [always, " " + always, *always.split()]
    for s in samples:
        texts.append(str(s["question"]))
        texts.append(" " + str(s["question"]))
        if s["answer"] is not None:  # an unrated video's samples have no answer
            texts.append(str(s["answer"]))
    return texts


def train_tokenizer(samples: list[dict], answer_format: str | None = None):
    """A PreTrainedTokenizerFast trained on the questions and answers of `samples`, splitting numbers
    as the answer format says (None: the paper's `decimal3`, one digit per token)."""
    fmt = get_format(answer_format)
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = _pre_tokenizer(fmt.number_tokens)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="never")
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=1, show_progress=False)
    tok.train_from_iterator(corpus(samples, fmt), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, additional_special_tokens=[VIDEO_TOKEN])
    fast.padding_side = "left"
    fast.model_max_length = 4096
    check_coverage(fast, corpus(samples, fmt))
    return fast


def check_coverage(tokenizer, texts: Iterable[str]) -> None:
    unk = tokenizer.convert_tokens_to_ids(UNK)
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if unk in ids:
            raise ValueError(f"tokenizer does not cover: {text!r}")


def write_tokenizer(tokenizer, out: str | Path) -> Path:
    """save_pretrained into a temporary sibling, then rename into place."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(str(tmp))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


# Unused special tokens that tokenizers reserve for later use (Llama-3: <|reserved_special_token_0|>
# .. _250|>; Gemma: <unused0> ..). One of them serves as the video placeholder, so the LLM's embedding
# matrix keeps its size (no resize of Llama-3's 128,256 rows, no new untrained row).
RESERVED_TOKEN_PATTERNS = (re.compile(r"^<\|reserved_special_token_(\d+)\|>$"), re.compile(r"^<unused(\d+)>$"))


def reserved_token(tokenizer) -> str | None:
    """The lowest-numbered reserved special token of a tokenizer (an added token, so it is matched
    whole in text), or None."""
    found = []
    for token in getattr(tokenizer, "added_tokens_encoder", {}) or {}:
        for rank, pattern in enumerate(RESERVED_TOKEN_PATTERNS):
            m = pattern.match(token)
            if m:
                found.append((rank, int(m.group(1)), token))
    return min(found)[2] if found else None


def video_token(tokenizer) -> str:
    """The video placeholder of a tokenizer: `<video>` when it has it, else a reserved special token
    (see RESERVED_TOKEN_PATTERNS), else `<video>` (which `load_tokenizer` then adds)."""
    if VIDEO_TOKEN in tokenizer.get_vocab():
        return VIDEO_TOKEN
    return reserved_token(tokenizer) or VIDEO_TOKEN


def load_tokenizer(source: str | Path):
    """Any tokenizer folder or hub id (the paper LLM's own tokenizer, chat template included), with a
    video placeholder (`video_token`: `<video>`, or a reserved special token the tokenizer already has,
    so the vocabulary keeps its size; else `<video>` is added) and a pad token set."""

    tok = AutoTokenizer.from_pretrained(str(source))
    if video_token(tok) not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [VIDEO_TOKEN]})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", nargs="+", required=True, help="prompt shards (JSONL) or folders of them")
    parser.add_argument("--out", required=True, help="output tokenizer folder")
    parser.add_argument("--answer-format", default=None, choices=sorted(FORMATS),
                        help="how score answers are written (prompts.answer_format; default: decimal3): "
                             "integer keeps every whole number 0..100 one token")


def main(args) -> int:
    samples = read_prompts(args.prompts)
    if not samples:
        raise UserError("no prompt samples in " + " ".join(args.prompts))
    tok = train_tokenizer(samples, args.answer_format)
    write_tokenizer(tok, args.out)
    print(f"tokenizer: vocabulary of {len(tok)} tokens from {len(samples)} samples -> {args.out}")
    return 0
