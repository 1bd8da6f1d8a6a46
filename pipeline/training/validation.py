"""Validation of a model on the held-back training videos (`data.split_validation`): greedy answers to
their questions, SRCC and PLCC (raw) of the parsed score answers against MOS (`metrics.score_metrics`,
the same numbers evaluation reports), level accuracy, and the SRCC of the probability score
(`prob_srcc`, also what `training.select: best` picks steps by). Reported in the model card and in
`lmmvqa.json` (`validation`)."""
from __future__ import annotations

import torch

from pipeline.core.metrics import score_metrics
from pipeline.features.stores.store_reader import collate_videos
from pipeline.model.answers import parse_level, parse_score


def _videos(samples: list[dict], features: dict):
    return collate_videos([(features[s["dataset"]].spatial(s["id"]), features[s["dataset"]].motion(s["id"]))
                           for s in samples])


@torch.no_grad()
def prob_srcc(model, samples: list[dict], features: dict, batch_size: int = 16) -> float | None:
    """SRCC of the probability score against MOS on the score questions of `samples` (None when
    undefined: fewer than 3 videos or constant scores)."""
    score = [s for s in samples if s["type"] == "score"]
    preds = []
    for i in range(0, len(score), batch_size):
        chunk = score[i:i + batch_size]
        preds += model.prob_scores(_videos(chunk, features), [s["question"] for s in chunk]).tolist()
    return score_metrics(preds, [float(s["mos"]) for s in score], bootstrap=0)["srcc"]


@torch.no_grad()
def validate(model, samples: list[dict], features: dict, batch_size: int = 16, max_new_tokens: int = 8) -> dict:
    """Greedy answers on the validation samples: SRCC / PLCC of the parsed score answers, level accuracy."""
    if not samples:
        return {"n_videos": 0, "note": "no validation split (training.val_fraction = 0)"}
    preds, mos, lv_ok, lv_n, invalid = [], [], 0, 0, 0
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        videos = _videos(chunk, features)
        texts = model.generate(videos, [s["question"] for s in chunk], max_new_tokens)
        for s, t in zip(chunk, texts):
            if s["type"] == "score":
                v, _ = parse_score(t)
                if v is None:
                    invalid += 1
                else:
                    preds.append(v)
                    mos.append(float(s["mos"]))
            else:
                lv, _ = parse_level(t)
                lv_n += 1
                lv_ok += int(lv == s["level"])
    m = score_metrics(preds, mos, bootstrap=0)  # srcc / plcc_raw None when undefined (< 3 or constant)
    return {"n_videos": len({(s["dataset"], s["id"]) for s in samples}), "score_valid": len(preds),
            "score_invalid": invalid, "srcc": m["srcc"], "plcc_raw": m["plcc_raw"],
            "prob_srcc": prob_srcc(model, samples, features, batch_size),
            "level_accuracy": (lv_ok / lv_n) if lv_n else None}
