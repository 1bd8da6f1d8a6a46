"""Training terms that know scores are ordered (`training.score_loss`), added to the text loss.

Plain cross-entropy over the answer tokens treats 55 for a true 60 as wrong as 5, and greedy argmax
then returns the most frequent values. Where every score 0..100 is one token (the `integer` answer
format with the tiny tokenizer, or a BPE vocabulary with whole-number tokens such as Llama-3's), the
distribution at the score answer's first position is a distribution over the scores themselves, and
two terms act on it (`number_ids`: the token of each score 0..100, in order):

* soft targets (`soft_weight`, `soft_sigma`): cross-entropy of the model's log-probabilities of the
  101 number tokens (over the whole vocabulary) against a Gaussian around the true MOS, so the
  neighbours of the true score are rewarded too;
* expected score (`expected_weight`): the squared error between the expected score under the
  distribution renormalised over the number tokens (what the probability score reports) and the MOS,
  in units of 10 MOS points.

The text cross-entropy stays: the model must still answer in words (and stop with eos).
"""
from __future__ import annotations

import torch

SCORE_LOSS_KEYS = ("soft_weight", "soft_sigma", "expected_weight")


def active(settings: dict | None) -> bool:
    """Whether a `training.score_loss` adds anything to the text loss."""
    s = settings or {}
    return bool(s.get("soft_weight") or s.get("expected_weight"))


def first_answer_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B, V] logits predicting each row's first answer token (logits [B, A, V] predict labels [B, A],
    which are -100 left of the answer)."""
    first = (labels != -100).float().argmax(1)  # index of the first answer token per row
    return logits[torch.arange(len(labels), device=logits.device), first]


def score_terms(first_logits: torch.Tensor, scores: torch.Tensor, number_ids: torch.Tensor, values: torch.Tensor,
                settings: dict) -> torch.Tensor:
    """The weighted ordinal terms, averaged over the rows with a score (scores NaN elsewhere): a scalar
    (0 when no row has one)."""
    rows = ~torch.isnan(scores)
    if not bool(rows.any()):
        return first_logits.sum() * 0.0
    lp = torch.log_softmax(first_logits[rows].float(), -1)[:, number_ids]  # [R, 101], over the whole vocabulary
    y = scores[rows].float()[:, None]
    total = first_logits.new_zeros((), dtype=torch.float32)
    if settings.get("soft_weight"):
        sigma = float(settings.get("soft_sigma") or 3.0)
        q = torch.softmax(-((values[None] - y) ** 2) / (2 * sigma ** 2), -1)
        total = total + float(settings["soft_weight"]) * -(q * lp).sum(-1).mean()
    if settings.get("expected_weight"):
        p = torch.softmax(lp, -1)  # renormalised over the number tokens
        expected = (p * values[None]).sum(-1)
        total = total + float(settings["expected_weight"]) * (((expected - y[:, 0]) / 10.0) ** 2).mean()
    return total
