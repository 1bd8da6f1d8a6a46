"""Quality levels: the three words, worst to best, and the rule that gives a video its level.

The one definition of both: the manifest assigns levels with `levels`, the prompts ask for them, the
model answers with one of `LEVELS` (the constrained-decoding grammar), and the metrics use `LEVELS`
as the confusion matrix's label order.
"""
from __future__ import annotations

import numpy as np

LEVELS = ("poor", "fair", "good")


def levels(mos) -> np.ndarray:
    """good / fair / poor by the 33rd / 66th percentiles (`mos <= p33` poor, `<= p66` fair); '' for NaN."""
    mos = np.asarray(mos, dtype=float)
    out = np.full(len(mos), "", dtype=object)
    ok = np.isfinite(mos)
    if not ok.any():
        return out
    p33, p66 = np.percentile(mos[ok], [33, 66])
    poor, fair, good = LEVELS
    out[ok] = np.where(mos[ok] <= p33, poor, np.where(mos[ok] <= p66, fair, good))
    return out
