"""How a score answer is written (`prompts.answer_format`): one definition that the prompt shards
(the training answers), the tiny tokenizer (its number tokens), constrained decoding (the answer
language), the probability score (its candidate answers) and the answer parser all follow.

| format | answer for MOS 63.2149 | answer language | candidates of the probability score |
|---|---|---|---|
| `decimal3` (the paper) | `63.215` | 0..100 with at most three decimals, no leading zeros | `"0."` .. `"100."`, as the start of the answer (the `.` ends the integer part, so `"6."` does not also count `"63"`) |
| `integer` | `63` | the whole numbers 0..100, no leading zeros | `"0"` .. `"100"` as complete answers (followed by eos) |

The paper's LLM (Llama-3) writes numbers in tokens of 1-3 digits, so `decimal3` is a few tokens
whatever the value. The tiny tokenizer writes one digit per token under `decimal3` (so its first
answer token is not ordinal: `1` covers 10-19 and 100, and three decimal digits of noise dominate
the loss), and every whole number 0..100 as one token under `integer` (`number_tokens = "whole"`),
which makes the first answer token the score itself.

Every complete answer of a format parses (`pipeline.model.answers.parse_score`, which accepts any
plain decimal number in [0, 100]) to the value it was rendered from, rounded as `render` rounds.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

SCORE_VALUES = tuple(range(101))  # the integer scores the probability score ranges over


@dataclass(frozen=True)
class AnswerFormat:
    name: str
    decimals: int
    candidate_suffix: str  # appended to each integer candidate ("." for decimals, "" for whole numbers)
    candidate_eos: bool  # the candidates are complete answers (scored with eos appended)
    number_tokens: str  # how the tiny tokenizer splits numbers: "digits" (one per token) or "whole"
    describe: str  # the answer-format constraint of the question ("a real number between 0 and 100")

    def render(self, mos: float) -> str:
        """The answer text of a score (clipped to [0, 100]; rounded half away from zero)."""
        v = min(100.0, max(0.0, float(mos)))
        if self.decimals == 0:
            return str(int(v + 0.5))
        return f"{v:.{self.decimals}f}"

    def candidates(self) -> list[str]:
        """The candidate answer strings of the probability score, one per value of SCORE_VALUES."""
        return [f"{v}{self.candidate_suffix}" for v in SCORE_VALUES]

    def candidate_values(self) -> list[float]:
        return [float(v) for v in SCORE_VALUES]

    def _decimals_part(self, complete: bool) -> str:
        if self.decimals == 0:
            return "", ""
        n = "1" if complete else "0"
        return rf"(?:\.0{{{n},{self.decimals}}})?", rf"(?:\.[0-9]{{{n},{self.decimals}}})?"

    @property
    def complete_pattern(self) -> re.Pattern:
        """Regular expression of a complete answer: 0..100 with up to `decimals` decimals, no leading
        zeros, no bare or leading dot."""
        hundred, other = self._decimals_part(True)
        return re.compile(rf"(?:100{hundred}|[1-9]?[0-9]{other})")

    @property
    def prefix_pattern(self) -> re.Pattern:
        """Regular expression of a prefix of a complete answer (the empty text included)."""
        hundred, other = self._decimals_part(False)
        return re.compile(rf"(?:|100{hundred}|[1-9]?[0-9]{other})")


FORMATS = {
    "decimal3": AnswerFormat("decimal3", 3, ".", False, "digits", "a real number between 0 and 100"),
    "integer": AnswerFormat("integer", 0, "", True, "whole", "a whole number between 0 and 100"),
}
PAPER_FORMAT = "decimal3"


def answer_format(name: str | None) -> AnswerFormat:
    """The format of a name (None: the paper's, for model folders written before the setting)."""
    name = name or PAPER_FORMAT
    if name not in FORMATS:
        raise ValueError(f"unknown answer format '{name}' (one of {', '.join(FORMATS)})")
    return FORMATS[name]


def with_format(question: str, fmt: AnswerFormat) -> str:
    """A score question whose answer-format constraint names the format: the bank's `{answer}`
    placeholder, or the paper's wording ("a real number between 0 and 100") replaced."""
    if "{answer}" in question:
        return question.replace("{answer}", fmt.describe)
    return question.replace(FORMATS[PAPER_FORMAT].describe, fmt.describe)
