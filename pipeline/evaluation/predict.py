"""Ask a trained model the quality questions for a batch of videos and turn its answers into scores.

Per video:
* `text`, `score`, `invalid`: the method's own output, a greedy answer to the score question,
  parsed strictly (pipeline.model.answers). `decoding` (config `evaluation.decoding`): `constrained`
  masks the logits at each greedy step so the text is always a number in [0, 100] in the model's
  answer format (and the level answer one of good / fair / poor; pipeline.model.constrained), `free` is
  plain greedy text, which may be invalid. `mbr` generates nothing: the text is the candidate answer
  with the least expected absolute error under the very log-probabilities `prob_score` is computed from
  (their weighted median, pipeline.model.answers.mbr_score), written in the answer format, so it agrees
  with `prob_score` (with a quality prior it is the ensemble's: (1 - w) x the median + w x the adapter's
  score, written in the answer format, as `prob_score` blends the expected score). Either way the answer is parsed and
  `invalid` counted.
  With K templates (evaluation.templates_per_video) the valid parsed answers are averaged; the
  video is invalid only when none of the K answers parses.
* `prob_score`: the expected score under the model's distribution over integer answers: the
  log-probability of each candidate of the model's answer format (pipeline/prompts/answer_format.py:
  `decimal3`: "0." ... "100." as the start of the answer, the trailing "." keeping "6" from also
  counting "63"; `integer`: "0" ... "100" as complete answers), renormalised over the 101
  candidates, averaged over the K templates. Always defined, and it uses the whole distribution
  instead of the single greedy path.
* With a quality prior (`training.quality_prior` w > 0, recorded in the model folder;
  pipeline/model/quality_prior.py): `prob_score` = (1 - w) x the model's expected score + w x the
  quality adapter's calibrated score, an ensemble of the two scorers (its metrics say so and measure
  `lmm_prob_score` beside it); `lmm_prob_score` and `quality_score` hold the two parts. Without one,
  `lmm_prob_score` = `prob_score` and `quality_score` is empty. The `level` answer is then the
  ensemble's as well: the level `prob_score` falls in by the training videos' 33rd / 66th MOS
  percentiles (the rule that gave the training levels; recorded with the prior), so text, level and
  score agree; `level_text` and `p_good` / `p_fair` / `p_poor` stay the answer head's.
* `level` (greedy answer to the level question, parsed; under `mbr` the most probable level word of the
  averaged probabilities, `level_text` that of each template's) and `p_good`, `p_fair`, `p_poor` (the
  three level words scored as complete answers, renormalised); with K templates the level question
  is asked K times too: the probabilities are averaged and `level` is the most frequent answer.
* An ensemble (a list of models, `experiments.<E>.ensemble`): every member answers every template;
  `prob_score`, the level probabilities and the parsed text score are averaged over all of them, the
  level is the most frequent answer, and `text` / `level_text` join the answers with " | ".
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from pipeline.core.levels import LEVELS
from pipeline.model.answers import (LEVEL_PROB_COLUMNS, expected_score, level_probabilities, mbr_score,
                                    most_probable_level, parse_level, parse_score)
from pipeline.model.quality_prior import levels_by_edges, prior_scores
from pipeline.prompts.answer_format import answer_format
from pipeline.prompts.shards import question_for

# the paper format's candidates (a model's own are `model.answer_format.candidates()`)
SCORE_CANDIDATES = answer_format("decimal3").candidates()
DECODINGS = ("constrained", "free", "mbr")


def _answer(model, videos, questions, kind, constrained, max_new_tokens, parse, texts, values) -> None:
    """Generate one answer per video to `questions` and append it (and what it parses to, when it
    parses) to each video's list in `texts` / `values`."""
    for i, text in enumerate(model.generate(videos, questions, max_new_tokens, constrain=kind if constrained else None)):
        texts[i].append(text)
        value, _ = parse(text)
        if value is not None:
            values[i].append(value)


def _mbr_answers(model, videos, questions, texts, values, prior=None) -> np.ndarray:
    """The `mbr` text answer per video (appended to `texts` / `values` as `_answer` does) and the
    probability scores, both from one scoring of the answer format's candidates. `prior` (weight w,
    the quality adapter's scores): the answer is the ensemble's, (1 - w) x the median + w x the adapter's
    score, as the probability score blends the expected score."""
    rows = model.score_logprobs(videos, questions)
    for i, row in enumerate(rows):
        median = mbr_score(row)
        if prior is not None:
            median = (1.0 - prior[0]) * median + prior[0] * float(prior[1][i])
        text = model.answer_format.render(median)
        texts[i].append(text)
        values[i].append(parse_score(text)[0])  # a rendered answer always parses
    return np.array([expected_score(row) for row in rows])


def predict_batch(model, videos: dict, ids: Sequence[str], *, bank: dict, seed: int = 0, templates: int = 1,
                  max_new_tokens: int = 8, decoding: str = "constrained", media: Sequence[str] | None = None) -> list[dict]:
    """Prediction rows (see module docstring) for one collated batch of videos. `model` may be a list of
    models (an ensemble): every (model, template) pair answers, and the rows average them. `media`: video
    or image per item (default all video): an image is asked about as an image."""
    media = list(media) if media is not None else ["video"] * len(ids)
    if decoding not in DECODINGS:
        raise ValueError(f"unknown decoding '{decoding}' (one of: {', '.join(DECODINGS)})")
    constrained, mbr = decoding == "constrained", decoding == "mbr"
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    n = len(ids)
    texts = [[] for _ in range(n)]
    parsed = [[] for _ in range(n)]
    level_texts = [[] for _ in range(n)]
    levels = [[] for _ in range(n)]
    prob, lmm_prob = np.zeros(n), np.zeros(n)
    quality, with_prior = np.zeros(n), 0
    level_p = np.zeros((n, len(LEVELS)))
    passes = 0
    for m in models:
        prior = m.config.get("quality_prior")
        q = prior_scores(prior, videos["spatial"], videos["spatial_mask"]) if prior else None
        for k in range(templates):
            questions = [question_for(vid, "score", seed, bank, k, media=kind)[1] for vid, kind in zip(ids, media)]
            if mbr:
                p = _mbr_answers(m, videos, questions, texts, parsed,
                                 prior=(float(prior["weight"]), q) if q is not None else None)
            else:
                _answer(m, videos, questions, "score", constrained, max_new_tokens, parse_score, texts, parsed)
                p = np.asarray(m.prob_scores(videos, questions), dtype=float)
            lmm_prob += p
            if q is not None:
                w = float(prior["weight"])
                p = (1.0 - w) * p + w * q
                quality += q
                with_prior += 1
            prob += p
            level_questions = [question_for(vid, "level", seed, bank, k, media=kind)[1] for vid, kind in zip(ids, media)]
            if not mbr:
                _answer(m, videos, level_questions, "level", constrained, max_new_tokens, parse_level, level_texts, levels)
            lp = m.candidate_logprobs(videos, level_questions, list(LEVELS), append_eos=True)
            pass_p = [level_probabilities({lv: float(v) for lv, v in zip(LEVELS, row)}) for row in lp]
            level_p += np.array([[probs[lv] for lv in LEVELS] for probs in pass_p])
            if mbr:
                for i, probs in enumerate(pass_p):
                    level_texts[i].append(most_probable_level(probs))
            passes += 1
    prob /= passes
    lmm_prob /= passes
    level_p /= passes
    ensemble_levels = _prior_levels(models, prob)
    rows = []
    for i, vid in enumerate(ids):
        p = dict(zip(LEVELS, level_p[i]))
        rows.append({
            "id": vid,
            "text": " | ".join(texts[i]),
            "score": float(np.mean(parsed[i])) if parsed[i] else None,
            "invalid": not parsed[i],
            "prob_score": float(prob[i]),
            "lmm_prob_score": float(lmm_prob[i]),
            "quality_score": float(quality[i] / with_prior) if with_prior else None,
            "level_text": " | ".join(level_texts[i]),
            "level": (ensemble_levels[i] if ensemble_levels is not None
                      else most_probable_level(p) if mbr else majority_level(levels[i], p)),
            **{col: float(p[lv]) for lv, col in LEVEL_PROB_COLUMNS.items()},
        })
    return rows


def _prior_levels(models, prob: np.ndarray) -> list[str] | None:
    """The level of each blended probability score by the training level edges its quality prior recorded
    (an ensemble of models: their edges averaged); None when a model has no prior or no recorded edges
    (a model folder written before they were recorded keeps the answer head's level)."""
    edges = [(m.config.get("quality_prior") or {}).get("level_edges") for m in models]
    if not edges or any(e is None for e in edges):
        return None
    return levels_by_edges(prob, np.mean(np.asarray(edges, dtype=float), axis=0))


def majority_level(answers: Sequence[str], probabilities: dict[str, float]) -> str:
    """The most frequent parsed level answer (ties: the one with the higher averaged probability);
    '' when no answer parsed."""
    if not answers:
        return ""
    counts = {lv: answers.count(lv) for lv in set(answers)}
    return max(counts, key=lambda lv: (counts[lv], probabilities[lv]))
