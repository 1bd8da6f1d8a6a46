"""The quality adapter's own score as a prior blended into the model's expected score.

A quality adapter (`models.vision.adapted`, pipeline/features/encoding/quality_adapter.py) learns, without any
MOS, a score that orders synthetic variants of many contents by their full-reference label; its
embedding is the last `dim` columns of every stored vision token. Measured across content, that score
carries to unseen footage better than what a model trained on a few sources' MOS learns from the same
features (benchmarks/README.md, "Quality-aware encoder"). `training.quality_prior: w` keeps it:

* at training, the adapter's score of each training video (its linear head on the video's mean
  embedding over key frames and token positions) is mapped onto the MOS scale by a least-squares line
  fitted on the training videos' MOS: only a scale and an offset, so the order stays the adapter's;
* the model folder records that readout (head x line: one weight per embedding column + a bias), the
  adapter's hash, `w` and the training videos' level edges (33rd / 66th MOS percentiles);
* at prediction, `prob_score` = (1 - w) x the model's expected score + w x the prior's score (an
  ensemble of two scorers); the prediction rows also carry both parts (`lmm_prob_score`,
  `quality_score`), and the level answer is the level that blended score falls in by those edges, so
  the text, the level and the score a user reads say the same thing.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from pipeline.core.errors import UserError
from pipeline.core.levels import LEVELS


def adapter_record(features) -> dict | None:
    """The quality adapter a DatasetFeatures' stores were extracted with (file, hash, ...), or None."""
    stores = getattr(features, "stores", [features])
    return ((stores[0].attrs.get("vision") or {}).get("adapted")) if stores else None


def mean_embeddings(spatial: torch.Tensor, mask: torch.Tensor, dim: int) -> np.ndarray:
    """[B, K, T, W] key-frame tokens (mask [B, K]) -> [B, dim]: the mean of the last `dim` columns over the
    valid key frames and every token position."""
    e = spatial[..., -dim:].float().mean(2)  # over token positions
    m = mask.to(e.dtype)[..., None]
    return ((e * m).sum(1) / m.sum(1).clamp_min(1.0)).cpu().numpy()


def fit_prior(features: dict, samples: list[dict], weight: float) -> dict:
    """The prior of a run: its training videos' ((dataset, id) of `samples`, with their `mos`) adapter
    scores mapped onto their MOS by a least-squares line. Every training dataset must carry the same adapter."""
    from pipeline.features.encoding.quality_adapter import load_adapter
    from pipeline.features.stores.store_reader import collate_videos

    records = {d: adapter_record(f) for d, f in features.items()}
    if any(r is None for r in records.values()):
        plain = sorted(d for d, r in records.items() if r is None)
        raise UserError(f"training.quality_prior needs features of a quality-adapted vision encoder "
                        f"(models.vision.adapted); those of {', '.join(plain)} carry none")
    hashes = {r.get("hash") for r in records.values()}
    if len(hashes) > 1:
        which = ", ".join(f"{d}: {r.get('hash')}" for d, r in sorted(records.items()))
        raise UserError(f"training.quality_prior: the training datasets' features come from different quality "
                        f"adapters ({which})")
    record = next(iter(records.values()))
    with torch.random.fork_rng(devices=[]):  # building the adapter module must not move the run's seed
        adapter, _ = load_adapter(record["file"], record.get("hash"), record.get("base_hash"))
    mos = {}
    for s in samples:
        mos.setdefault((s["dataset"], s["id"]), float(s["mos"]))
    keys = sorted(mos)
    if len(keys) < 2:
        raise UserError(f"training.quality_prior needs at least 2 training videos, got {len(keys)}")
    emb = []
    for i in range(0, len(keys), 64):
        part = keys[i:i + 64]
        batch = collate_videos([(features[d].spatial(v), features[d].motion(v)) for d, v in part])
        emb.append(mean_embeddings(batch["spatial"], batch["spatial_mask"], adapter.dim))
    emb = np.concatenate(emb)
    head_w = adapter.head.weight.detach().double().numpy()[0]
    head_b = float(adapter.head.bias.detach().double())
    raw = emb @ head_w + head_b
    y = np.array([mos[k] for k in keys])
    slope, intercept = (np.polyfit(raw, y, 1) if np.ptp(raw) > 0 else (0.0, float(y.mean())))
    return {"weight": float(weight), "adapter": record.get("hash"), "dim": int(adapter.dim),
            "coef": [float(c) for c in slope * head_w], "bias": float(slope * head_b + intercept),
            "slope": float(slope), "n_videos": len(keys), "train_srcc": float(spearmanr(raw, y)[0]),
            "level_edges": level_edges(y)}


def level_edges(mos) -> list[float]:
    """The training videos' 33rd and 66th MOS percentiles: where `pipeline.core.levels.levels` cuts them
    into poor / fair / good."""
    return [float(v) for v in np.percentile(np.asarray(mos, dtype=float), [33, 66])]


def levels_by_edges(scores, edges) -> list[str]:
    """poor / fair / good of each score by the recorded edges, with the rule of `pipeline.core.levels.levels`
    (`<= p33` poor, `<= p66` fair), so an ensemble's score gets the level its training videos' MOS would."""
    p33, p66 = (float(e) for e in edges)
    poor, fair, good = LEVELS
    return [poor if v <= p33 else fair if v <= p66 else good for v in np.asarray(scores, dtype=float)]


def prior_scores(prior: dict, spatial: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """The prior's MOS-scale score of each video of a collated batch."""
    if spatial.shape[-1] <= int(prior["dim"]):
        raise UserError(f"the model's quality prior reads {prior['dim']} adapter columns, the features have "
                        f"{spatial.shape[-1]} columns in all")
    return mean_embeddings(spatial, mask, int(prior["dim"])) @ np.asarray(prior["coef"]) + float(prior["bias"])


def check_features(prior: dict | None, features, where: str | Path) -> None:
    """Features a model with a prior scores must come from the adapter it was trained with."""
    if not prior:
        return
    got = (adapter_record(features) or {}).get("hash")
    if got != prior.get("adapter"):
        raise UserError(f"{where}: the model's quality prior was fitted on quality adapter {prior.get('adapter')}, "
                        f"these features come from {got or 'no adapter'}: extract them with the model's settings")
