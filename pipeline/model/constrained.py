"""Constrained greedy decoding: answers that are always a valid score or a valid level word.

At each greedy step of `LMMVQA.generate(..., constrain="score"|"level")` the logits of every token
that cannot continue a valid answer are set to -inf before the argmax:

* score answers: a number in [0, 100] with at most the answer format's decimals and no leading
  zeros (`decimal3`: `0`, `7`, `63`, `63.2`, `63.215`, `100`, `100.000`; not `.5`, `063`, `63.`,
  `101`, `63.2151`; `integer`: `0` .. `100`). This is a sub-language of what `answers.parse_score`
  accepts, so every such answer parses (the grammars: pipeline/model/answers.py, `grammar_for`).
* level answers: exactly one of the words `poor`, `fair`, `good` (lowercase, as training spells them),
  in however many tokens the tokenizer splits it.

Whitespace is allowed only before the first character of the answer (so Llama-3-style tokens with a
leading space, `" 63"`, are usable); `eos` only once the text so far is a complete answer. A token is
allowed only if the answer can still be completed within the steps left (`max_new_tokens`), so the
greedy text is valid even when it stops at the token limit instead of at eos. The answer text of a
constrained row is the concatenation of its tokens' decoded pieces, exactly the strings the
constraint checked.

The allowed-token sets are built from the tokenizer's vocabulary: every token id is decoded once
(`batch_decode` of single ids), and the pieces, the candidate tokens per grammar and the allowed ids
per (state, steps left) are cached per tokenizer object. This works for word-level tokenizers (the
trained tokenizer's one digit per token) and for byte-level BPE vocabularies (Llama-3: multi-digit tokens
such as `"63"`, `" 63"`, `".2"`; partial UTF-8 bytes decode to U+FFFD and are never candidates).
"""
from __future__ import annotations

import weakref
from typing import Sequence

import torch

from pipeline.model.answers import grammar_for

INF = 1 << 30

_PIECES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_CONSTRAINTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def token_pieces(tokenizer) -> list[str]:
    """The decoded text of every token id of the tokenizer (decoded once, cached per tokenizer)."""
    n = len(tokenizer)
    cached = _PIECES.get(tokenizer)
    if cached is None or len(cached) != n:
        cached = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False,
                                        clean_up_tokenization_spaces=False)
        _PIECES[tokenizer] = cached
    return cached


class TokenConstraint:
    """Allowed next tokens of one grammar over one tokenizer's vocabulary.

    A row's state is its answer text so far without leading whitespace. `allowed(state, steps_left)`
    -> LongTensor of token ids (eos ids included when `state` is a complete answer) such that the
    answer can still be completed within the remaining steps after this one.
    """

    def __init__(self, tokenizer, grammar, eos_ids: Sequence[int], n_logits: int | None = None):
        self.grammar = grammar
        self.eos_ids = sorted({int(e) for e in eos_ids})
        self.pieces = token_pieces(tokenizer)
        limit = len(self.pieces) if n_logits is None else min(n_logits, len(self.pieces))
        special = set(tokenizer.all_special_ids) | set(self.eos_ids)
        # (id, has leading whitespace, the piece without it)
        self.candidates: list[tuple[int, bool, str]] = []
        for i in range(limit):
            piece = self.pieces[i]
            if i in special or not piece:
                continue
            core = piece.lstrip()
            if set(core) <= grammar.alphabet:
                self.candidates.append((i, core != piece, core))
        self._need: dict[str, int] = {}
        self._allowed: dict[tuple[str, int], torch.Tensor] = {}

    def need(self, state: str) -> int:
        """Fewest tokens that turn the valid prefix `state` into a complete answer (INF if none)."""
        got = self._need.get(state)
        if got is not None:
            return got
        if self.grammar.is_complete(state):
            best = 0
        else:
            best = INF
            for _, ws, core in self.candidates:
                if not core or (ws and state):
                    continue
                new = state + core
                if self.grammar.is_prefix(new):
                    best = min(best, 1 + self.need(new))  # `new` is longer: the recursion ends
                    if best == 1:
                        break
        self._need[state] = best
        return best

    def allowed(self, state: str, steps_left: int) -> torch.Tensor:
        """Token ids allowed at `state` when `steps_left` tokens (this one included) may still be made."""
        budget = steps_left - 1
        key = (state, budget)
        ids = self._allowed.get(key)
        if ids is None:
            out = []
            for i, ws, core in self.candidates:
                if ws and state:
                    continue  # whitespace only before the answer's first character
                new = state + core
                if self.grammar.is_prefix(new) and self.need(new) <= budget:
                    out.append(i)
            if self.grammar.is_complete(state):
                out += self.eos_ids
            if not out:
                raise RuntimeError(f"constrained decoding ({self.grammar.name}): no token can continue "
                                   f"{state!r} within {steps_left} step(s)")
            ids = torch.tensor(sorted(out), dtype=torch.long)
            self._allowed[key] = ids
        return ids

    def check_reachable(self, max_new_tokens: int) -> None:
        """A ValueError when no valid answer can be spelled within max_new_tokens tokens."""
        n = self.need("")
        if n >= INF:
            raise ValueError(f"constrained decoding: the tokenizer's vocabulary cannot spell any "
                             f"{self.grammar.name} answer")
        if n > max_new_tokens:
            raise ValueError(f"constrained decoding: a {self.grammar.name} answer takes at least {n} token(s) "
                             f"but max_new_tokens is {max_new_tokens}")

    def advance(self, text: str, token_id: int) -> str:
        """The answer text after appending a (non-eos) token."""
        return text + self.pieces[token_id]


def constraint_for(tokenizer, kind: str, eos_ids: Sequence[int], n_logits: int | None = None,
                   answer_format=None) -> TokenConstraint:
    """The cached TokenConstraint of `kind` ("score" | "level") for this tokenizer, under an answer
    format (pipeline/prompts/answer_format.py; None = the paper's)."""
    grammar = grammar_for(kind, answer_format)
    per_tok = _CONSTRAINTS.setdefault(tokenizer, {})
    key = (kind, getattr(grammar, "format", None), tuple(sorted(eos_ids)), n_logits, len(tokenizer))
    c = per_tok.get(key)
    if c is None:
        c = per_tok[key] = TokenConstraint(tokenizer, grammar, eos_ids, n_logits)
    return c


def row_kinds(constrain, batch: int) -> list[str | None]:
    """`constrain` (None, one kind for every row, or one kind / None per row) -> a kind per row."""
    if constrain is None or isinstance(constrain, str):
        return [constrain] * batch
    kinds = list(constrain)
    if len(kinds) != batch:
        raise ValueError(f"constrain has {len(kinds)} entries for {batch} questions")
    return kinds


def mask_logits(logits: torch.Tensor, allowed: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """logits [B, V] with every token outside allowed[b] set to -inf (rows with None untouched);
    the mask is built by one scatter on the logits' device."""
    rows = [b for b, ids in enumerate(allowed) if ids is not None]
    if not rows:
        return logits
    dev = logits.device
    keep = torch.ones(logits.shape, dtype=torch.bool, device=dev)
    keep[torch.tensor(rows, device=dev)] = False
    r = torch.cat([torch.full((len(allowed[b]),), b, dtype=torch.long) for b in rows]).to(dev)
    c = torch.cat([allowed[b] for b in rows]).to(dev)
    keep[r, c] = True
    return logits.masked_fill(~keep, float("-inf"))
