"""Ask a trained model the quality questions for a batch of videos and turn its answers into scores.

Per video:
* `text`, `score`, `invalid`: the method's own output, a greedy answer to the score question,
  parsed strictly (pipeline.model.answers). `decoding` (config `evaluation.decoding`): `constrained`
  masks the logits at each greedy step so the text is always a number in [0, 100] with at most
  three decimals (and the level answer one of good / fair / poor; pipeline.model.constrained), `free` is
  plain greedy text, which may be invalid. Either way the answer is parsed and `invalid` counted.
  With K templates (evaluation.templates_per_video) the valid parsed answers are averaged; the
  video is invalid only when none of the K answers parses.
* `prob_score`: the expected score under the model's distribution over integer answers: the
  log-probability of each candidate "0." ... "100." as the start of the answer, renormalised over
  the 101 candidates, averaged over the K templates. Always defined, and it uses the whole
  distribution instead of the single greedy path (the trailing "." keeps "6" from also counting
  "63").
* `level` (greedy answer to the level question, parsed) and `p_good`, `p_fair`, `p_poor` (the
  three level words scored as complete answers, renormalised).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from pipeline.core.levels import LEVELS
from pipeline.model.answers import LEVEL_PROB_COLUMNS, expected_score, level_probabilities, parse_level, parse_score
from pipeline.prompts.shards import question_for

SCORE_CANDIDATES = [f"{i}." for i in range(101)]
DECODINGS = ("constrained", "free")


def predict_batch(model, videos: dict, ids: Sequence[str], *, bank: dict, seed: int = 0, templates: int = 1,
                  max_new_tokens: int = 8, decoding: str = "constrained") -> list[dict]:
    """Prediction rows (see module docstring) for one collated batch of videos."""
    if decoding not in DECODINGS:
        raise ValueError(f"unknown decoding '{decoding}' (one of: {', '.join(DECODINGS)})")
    constrained = decoding == "constrained"
    n = len(ids)
    texts = [[] for _ in range(n)]
    parsed = [[] for _ in range(n)]
    prob = np.zeros(n)
    for k in range(templates):
        questions = [question_for(vid, "score", seed, bank, k)[1] for vid in ids]
        for i, text in enumerate(model.generate(videos, questions, max_new_tokens,
                                                 constrain="score" if constrained else None)):
            texts[i].append(text)
            value, _ = parse_score(text)
            if value is not None:
                parsed[i].append(value)
        lp = model.candidate_logprobs(videos, questions, SCORE_CANDIDATES)
        prob += np.array([expected_score({c[:-1]: float(v) for c, v in zip(SCORE_CANDIDATES, row)}) for row in lp])
    prob /= templates

    level_questions = [question_for(vid, "level", seed, bank)[1] for vid in ids]
    level_texts = model.generate(videos, level_questions, max_new_tokens, constrain="level" if constrained else None)
    level_lp = model.candidate_logprobs(videos, level_questions, list(LEVELS), append_eos=True)
    rows = []
    for i, vid in enumerate(ids):
        level, _ = parse_level(level_texts[i])
        p = level_probabilities({lv: float(v) for lv, v in zip(LEVELS, level_lp[i])})
        rows.append({
            "id": vid,
            "text": " | ".join(texts[i]),
            "score": float(np.mean(parsed[i])) if parsed[i] else None,
            "invalid": not parsed[i],
            "prob_score": float(prob[i]),
            "level_text": level_texts[i],
            "level": level or "",
            **{col: p[lv] for lv, col in LEVEL_PROB_COLUMNS.items()},
        })
    return rows
