"""Validation of a trained model on the held-back training videos (`train_data.split_validation`):
greedy answers to their questions; SRCC and PLCC (raw) of the parsed score answers against MOS
(`metrics.score_metrics`, the same numbers evaluation reports), level accuracy. Reported in the
model card and in `lmmvqa.json` (`validation`)."""
from __future__ import annotations

import torch

from pipeline.core.metrics import score_metrics
from pipeline.features.store_reader import collate_videos
from pipeline.model.answers import parse_level, parse_score


@torch.no_grad()
def validate(model, samples: list[dict], features: dict, batch_size: int = 16, max_new_tokens: int = 8) -> dict:
    """Greedy answers on the validation samples: SRCC / PLCC of the parsed score answers, level accuracy."""
    if not samples:
        return {"n_videos": 0, "note": "no validation split (training.val_fraction = 0)"}
    preds, mos, lv_ok, lv_n, invalid = [], [], 0, 0, 0
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        videos = collate_videos([(features[s["dataset"]].spatial(s["id"]), features[s["dataset"]].motion(s["id"]))
                                 for s in chunk])
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
            "level_accuracy": (lv_ok / lv_n) if lv_n else None}
