"""Quality levels: the three words, worst to best, and the rule that gives a video its level.

The one definition of both: the manifest assigns levels with `levels`, the prompts ask for them, the
model answers with one of `LEVELS` (the constrained-decoding grammar), and the metrics use `LEVELS`
as the confusion matrix's label order.
"""
from __future__ import annotations

import numpy as np

LEVELS = ("poor", "fair", "good")


def level_edges(mos) -> tuple[float, float]:
    """The 33rd and 66th percentiles of the finite values of `mos`: the two edges `levels` cuts at."""
    mos = np.asarray(mos, dtype=float)
    p33, p66 = np.percentile(mos[np.isfinite(mos)], [33, 66])
    return float(p33), float(p66)


def levels(mos, edges: tuple[float, float] | None = None) -> np.ndarray:
    """good / fair / poor by the 33rd / 66th percentiles (`mos <= p33` poor, `<= p66` fair); '' for NaN.
    `edges`: cut at these (p33, p66) instead, e.g. a training set's, to give scores of other videos the
    level the training videos' rule would."""
    mos = np.asarray(mos, dtype=float)
    out = np.full(len(mos), "", dtype=object)
    ok = np.isfinite(mos)
    if not ok.any():
        return out
    p33, p66 = level_edges(mos) if edges is None else edges
    poor, fair, good = LEVELS
    out[ok] = np.where(mos[ok] <= p33, poor, np.where(mos[ok] <= p66, fair, good))
    return out
