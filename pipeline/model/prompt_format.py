"""Prompt formatting: token ids of a question (+ its answer) with the video placeholder expanded to
the model's visual token count, batched with left padding.

The tiny tokenizer (no chat template) uses plain text `"<video> {question} Answer:"` (`<s>` first)
followed by the answer tokens and eos; a tokenizer with a chat template (paper: Llama-3-8B-Instruct)
gets the user turn `"<video>\\n{question}"` through `apply_chat_template(..., add_generation_prompt=True)`
followed by the answer and its eos. The placeholder is `tokenizer.video_token` (`<video>`, or a
reserved special token of the tokenizer); `ANSWER_PREFIX` and the special tokens live with the
tokenizer (pipeline/model/tokenizer.py), whose vocabulary must hold them.
"""
from __future__ import annotations

from typing import Sequence

import torch

from pipeline.model.tokenizer import ANSWER_PREFIX, video_token


class PromptFormatter:
    """Token ids of prompts (+ answers) with the placeholder expanded to the visual token count.
    Picklable (DataLoader workers tokenize in the collate function)."""

    def __init__(self, tokenizer, n_visual: int, placeholder: str | None = None):
        self.tokenizer = tokenizer
        self.n_visual = int(n_visual)
        self.placeholder = placeholder or video_token(tokenizer)
        self.video_id = tokenizer.convert_tokens_to_ids(self.placeholder)
        if self.video_id is None or self.video_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {self.placeholder} token")
        self.style = "chat" if getattr(tokenizer, "chat_template", None) else "plain"
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self._cache: dict[str, list[int]] = {}

    def prompt_text(self, question: str) -> str:
        if self.style == "chat":
            return self.tokenizer.apply_chat_template([{"role": "user", "content": f"{self.placeholder}\n{question}"}],
                                                      add_generation_prompt=True, tokenize=False)
        return f"{self.placeholder} {question} {ANSWER_PREFIX}"

    def prompt_ids(self, question: str) -> list[int]:
        ids = self._cache.get(question)
        if ids is None:
            ids = self.tokenizer(self.prompt_text(question), add_special_tokens=False)["input_ids"]
            if self.style == "plain" and self.tokenizer.bos_token_id is not None:
                ids = [self.tokenizer.bos_token_id] + ids
            if ids.count(self.video_id) != 1:
                raise ValueError(f"prompt must hold exactly one {self.placeholder}: {question!r}")
            p = ids.index(self.video_id)
            ids = ids[:p] + [self.video_id] * self.n_visual + ids[p + 1:]
            if len(self._cache) < 10000:
                self._cache[question] = ids
        return list(ids)

    def answer_ids(self, answer: str, eos: bool = True) -> list[int]:
        ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        return ids + [self.eos_id] if eos else ids

    def batch(self, questions: Sequence[str], answers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Left-padded input_ids / attention_mask (+ answer_ids [B, A] padded with -100 on the left,
        aligned with the last A positions)."""
        prompts = [self.prompt_ids(q) for q in questions]
        ans = [self.answer_ids(a) for a in answers] if answers is not None else [[] for _ in prompts]
        seqs = [p + a for p, a in zip(prompts, ans)]
        L = max(map(len, seqs))
        ids = torch.full((len(seqs), L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), L), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, L - len(s):] = torch.tensor(s)
            mask[i, L - len(s):] = 1
        out = {"input_ids": ids, "attention_mask": mask}
        if answers is not None:
            A = max(map(len, ans))
            labels = torch.full((len(seqs), A), -100, dtype=torch.long)
            for i, a in enumerate(ans):
                labels[i, A - len(a):] = torch.tensor(a)
            out["labels"] = labels
        return out
