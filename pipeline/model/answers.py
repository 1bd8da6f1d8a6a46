"""Strict parsing of the model's generated answers: a score in [0, 100] or a level word.

Nothing in a model answer is ever executed or `eval`-ed: the text is scanned with regular
expressions over plain decimal numbers only.

Score answers (`parse_score`): the answer is valid when the text holds exactly one plain decimal
number value (`63`, `63.215`, `.5`; a sentence-ending period is allowed, `63.215.`), finite and in
[0, 100]. The same value written twice (`63.2 ... 63.2`) counts once; a trailing scale such as
`/100` or `out of 100` is not a second number. Invalid, with a reason:

* no number at all (empty text, words such as `sixty`);
* NaN / inf / infinity anywhere in the text;
* exponent notation (`1e309`, `6.3E1`);
* malformed numbers (`63.2.1`);
* negative numbers (`-5`), values above 100 (`150`), overflowing digit strings;
* several different numbers (`63 or 64`, `63-64`).

Level answers (`parse_level`): valid when exactly one of the words good / fair / poor occurs
(case-insensitive, whole words; repeats of the same word are fine). Negation is not interpreted.

`grammar_for(kind, format)` gives the narrower languages that constrained decoding
(pipeline.model.constrained) keeps the text inside, as `is_prefix` / `is_complete` tests: score answers
are canonical numbers 0..100 with at most the answer format's decimals (`decimal3`: `7`, `63.215`,
`100.000`; not `063`, `.5`, `63.`; `integer`: `0` .. `100`), level answers exactly `poor`, `fair` or
`good`. Every complete answer of them parses. `GRAMMARS` holds them under the paper's format.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

from pipeline.core.levels import LEVELS
from pipeline.prompts.answer_format import FORMATS, AnswerFormat, answer_format

# level -> its probability column (predictions.csv, `lmmvqa score` lines), best first: p_good, p_fair, p_poor
LEVEL_PROB_COLUMNS = {lv: f"p_{lv}" for lv in reversed(LEVELS)}
SCORE_MIN, SCORE_MAX = 0.0, 100.0

_NONFINITE = re.compile(r"\b(?:nan|inf|infinity)\b", re.IGNORECASE)
_EXPONENT = re.compile(r"[0-9.][eE][-+]?[0-9]")
# "/100", "out of 100", "of 100" after a number: the answer's scale, not a second number
_SCALE = re.compile(r"(?<=[0-9])(\s*(?:/|\bout\s+of\b)\s*100(?:\.0+)?)(?![0-9])(?!\.[0-9])", re.IGNORECASE)
# a run of digits and dots holding at least one digit, with an optional sign in front
_NUMBER_RUN = re.compile(r"(?P<sign>[-+\u2212]?)(?P<body>[0-9.]*[0-9][0-9.]*)")
_PLAIN = re.compile(r"^(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)$")
_LEVEL_WORD = re.compile(r"\b(" + "|".join(LEVELS) + r")\b", re.IGNORECASE)


def parse_score(text: str | None) -> tuple[float | None, str]:
    """(score, "ok") for a valid answer, else (None, reason)."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return None, "empty answer"
    text = str(text)
    if not text.strip():
        return None, "empty answer"
    if _NONFINITE.search(text):
        return None, "not a finite number (NaN/inf)"
    if _EXPONENT.search(text):
        return None, "exponent notation is not accepted"
    scanned = _SCALE.sub(" ", text)
    values: list[float] = []
    for m in _NUMBER_RUN.finditer(scanned):
        body = m.group("body")
        if body.endswith(".") and _PLAIN.match(body[:-1]):
            body = body[:-1]  # sentence-ending period: "The score is 63.215."
        if not _PLAIN.match(body):
            return None, f"malformed number '{m.group(0).strip()}'"
        value = float(body)
        sign = m.group("sign")
        if sign in ("-", "\u2212"):
            before = scanned[m.start() - 1] if m.start() > 0 else " "
            if not before.isalnum():  # "-5" is negative; "63-64" is a range of two numbers
                return None, f"negative number '{sign}{body}'"
        if not math.isfinite(value):
            return None, f"number too large '{body[:20]}'"
        if value not in values:
            values.append(value)
    if not values:
        return None, "no number in the answer"
    if len(values) > 1:
        shown = ", ".join(f"{v:g}" for v in values[:4])
        return None, f"several different numbers ({shown})"
    value = values[0]
    if not SCORE_MIN <= value <= SCORE_MAX:
        return None, f"out of range [0, 100]: {value:g}"
    return value, "ok"


def parse_level(text: str | None) -> tuple[str | None, str]:
    """("good" | "fair" | "poor", "ok") when exactly one level word occurs, else (None, reason)."""
    if text is None or (isinstance(text, float) and math.isnan(text)) or not str(text).strip():
        return None, "empty answer"
    found = sorted({w.lower() for w in _LEVEL_WORD.findall(str(text))}, key=LEVELS.index)
    if not found:
        return None, "no level word (good / fair / poor)"
    if len(found) > 1:
        return None, f"several level words ({', '.join(found)})"
    return found[0], "ok"


# ------------------------------------------------------------------ the answers constrained decoding may give
# A grammar is a finite answer language: `name`, `alphabet` (its characters), `is_prefix(text)` and
# `is_complete(text)`.

class NumberGrammar:
    """The score answers of an answer format (pipeline/prompts/answer_format.py): 0..100 with up to its
    number of decimals (`decimal3`: three; `integer`: none), no leading zeros, no bare trailing or
    leading dot."""

    name = "score"
    alphabet = frozenset("0123456789.")

    def __init__(self, fmt: AnswerFormat | None = None):
        self.format = fmt or answer_format(None)
        self._complete = self.format.complete_pattern
        self._prefix = self.format.prefix_pattern

    def is_prefix(self, text: str) -> bool:
        return self._prefix.fullmatch(text) is not None

    def is_complete(self, text: str) -> bool:
        return self._complete.fullmatch(text) is not None


class WordsGrammar:
    """Exactly one of a fixed set of words."""

    def __init__(self, name: str, words: Sequence[str]):
        self.name = name
        self.words = frozenset(words)
        self.prefixes = frozenset(w[:i] for w in words for i in range(len(w) + 1))
        self.alphabet = frozenset("".join(words))

    def is_prefix(self, text: str) -> bool:
        return text in self.prefixes

    def is_complete(self, text: str) -> bool:
        return text in self.words


# the answer languages of constrained decoding (pipeline.model.constrained), by question type, under
# the paper's answer format; `grammar_for` gives them under any format
GRAMMARS: dict = {"score": NumberGrammar(), "level": WordsGrammar("level", LEVELS)}
_SCORE_GRAMMARS = {name: NumberGrammar(fmt) for name, fmt in FORMATS.items()}


def grammar_for(kind: str, fmt: AnswerFormat | str | None = None):
    """The answer language of a question type ("score" | "level") under an answer format."""
    if kind not in GRAMMARS:
        raise ValueError(f"unknown answer kind '{kind}' for constrained decoding (score or level)")
    if kind == "score":
        return _SCORE_GRAMMARS[fmt.name if isinstance(fmt, AnswerFormat) else answer_format(fmt).name]
    return GRAMMARS[kind]


# ------------------------------------------------------------------ scores from token probabilities
# (the candidate answers whose log-probabilities these take are the answer format's `candidates()`)

def _normalise(logprobs) -> tuple[list[str], "object"]:
    keys = list(logprobs)
    lp = np.asarray([float(logprobs[k]) for k in keys], dtype=float)
    if not len(lp) or not np.isfinite(lp).any():
        raise ValueError("no finite log-probability among the candidates")
    lp = np.where(np.isfinite(lp), lp, -np.inf)
    p = np.exp(lp - lp.max())
    return keys, p / p.sum()


def expected_score(logprobs: dict[str, float]) -> float:
    """Probability score: the expected value of the score under the model's distribution over the
    integer candidate answers ("0".."100" -> their log-probabilities; predict.py scores the answer
    format's candidates, e.g. "63." as the start of a `decimal3` answer), renormalised over the candidates. Always defined (in [0, 100]) when at least one log-probability is finite."""
    keys, p = _normalise(logprobs)
    values = np.asarray([float(k) for k in keys])
    return float(np.clip(np.dot(p, values), SCORE_MIN, SCORE_MAX))


def mbr_score(logprobs: dict[str, float]) -> float:
    """Minimum Bayes risk score: the candidate answer ("0".."100" -> log-probability, as `expected_score`)
    with the least expected absolute error under the distribution renormalised over the candidates, a
    weighted median of it. When several candidates tie (the median falls between two candidates, e.g. half
    the mass on 20 and half on 80, where every value from 20 to 80 has the same risk), the one nearest the
    expected score wins, and of two equally near the lower one, so the answer agrees with the probability
    score where the distribution leaves it free."""
    keys, p = _normalise(logprobs)
    values = np.asarray([float(k) for k in keys])
    risk = np.abs(values[:, None] - values[None, :]) @ p  # risk[c] = sum_j p_j |v_c - v_j|
    tied = np.flatnonzero(risk <= risk.min() + 1e-9)
    mean = float(np.dot(p, values))
    return float(min(values[tied], key=lambda v: (abs(v - mean), v)))


def most_probable_level(probabilities: dict[str, float]) -> str:
    """The level word with the highest probability (ties: the first of poor, fair, good)."""
    return max(LEVELS, key=lambda lv: probabilities[lv])


def level_probabilities(logprobs: dict[str, float]) -> dict[str, float]:
    """{"good", "fair", "poor"} -> probability, renormalised over the three level words."""
    missing = [lv for lv in LEVELS if lv not in logprobs]
    if missing:
        raise ValueError(f"log-probabilities missing for {missing}")
    keys, p = _normalise({lv: logprobs[lv] for lv in LEVELS})
    return {k: float(v) for k, v in zip(keys, p)}
