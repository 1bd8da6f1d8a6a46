"""Which weights a training run keeps (`training.select`).

* `last` (the paper): the weights after the final step.
* `best`: the weights at the evaluated step with the highest validation probability-score SRCC
  (`validation.prob_srcc` on the held-back training videos); the first of equal scores wins.
* `average`: the mean of the weights at the evaluated steps of the second half of training (a
  stochastic weight average along the decaying learning rate; needs no validation videos).

Steps are evaluated every `training.eval_every` optimizer steps (null: once per epoch) and at the
last step. The selector's state (best or running sum of weights, the validation curve) is saved in
every checkpoint, so a resumed run selects exactly as an uninterrupted one.
"""
from __future__ import annotations

import math

import torch

from pipeline.core.errors import UserError
from pipeline.training.checkpoints import trainable_state

MODES = ("last", "best", "average")


class WeightSelector:
    def __init__(self, mode: str, total_steps: int, steps_per_epoch: float, eval_every: int | None = None,
                 has_validation: bool = True):
        if mode not in MODES:
            raise UserError(f"training.select: unknown '{mode}' (one of {', '.join(MODES)})")
        if mode == "best" and not has_validation:
            raise UserError("training.select: best needs validation videos (training.val_fraction > 0)")
        self.mode, self.total = mode, int(total_steps)
        self.every = int(eval_every or max(1, math.ceil(steps_per_epoch)))
        self.curve: list[dict] = []  # {"step", "val_prob_srcc"} at evaluated steps
        self.best: dict | None = None  # {"step", "score"}
        self.weights: dict[str, torch.Tensor] | None = None  # best weights, or the running sum
        self.count = 0

    @property
    def needs_score(self) -> bool:
        return self.mode == "best"

    def due(self, step: int) -> bool:
        """Whether step `step` is evaluated (and, for `last`, never: nothing to choose)."""
        return self.mode != "last" and (step % self.every == 0 or step == self.total)

    def observe(self, step: int, model, score: float | None = None) -> None:
        if self.mode == "best":
            s = -math.inf if score is None or not math.isfinite(score) else float(score)
            self.curve.append({"step": step, "val_prob_srcc": score})
            if self.best is None or s > self.best["score"]:
                self.best = {"step": step, "score": s}
                self.weights = trainable_state(model)
        elif self.mode == "average" and step > self.total / 2:
            state = trainable_state(model)
            if self.weights is None:
                self.weights = {k: v.float() for k, v in state.items()}
            else:
                for k, v in state.items():
                    self.weights[k] += v.float()
            self.count += 1
            self.curve.append({"step": step})

    def apply(self, model) -> dict:
        """Load the selected weights into `model`; -> what was selected (for the model folder)."""
        info = {"mode": self.mode, "every": self.every, "curve": self.curve}
        chosen = None
        if self.mode == "best" and self.weights is not None:
            chosen = self.weights
            info.update(step=self.best["step"], val_prob_srcc=self.best["score"] if math.isfinite(self.best["score"]) else None)
        elif self.mode == "average" and self.count:
            chosen = {k: v / self.count for k, v in self.weights.items()}
            info.update(averaged_steps=[c["step"] for c in self.curve])
        if chosen is not None:
            params = dict(model.named_parameters())
            with torch.no_grad():
                for n, t in chosen.items():
                    params[n].copy_(t.to(params[n].device, params[n].dtype))
        return info

    # ---- checkpoints
    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {k: v.contiguous() for k, v in (self.weights or {}).items()}
        return tensors, {"curve": self.curve, "best": self.best, "count": self.count}

    def load(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.weights = dict(tensors) or None
        self.curve, self.best, self.count = list(meta["curve"]), meta["best"], int(meta["count"])
