"""The spatiotemporal projector: cached frozen features of a video -> the LLM's visual embeddings.

Per video (../shared/SPEC.md step 3): key-frame tokens `spatial [B, K, T, Wv]` and motion vectors
`motion [B, S, M]` (ragged K / S handled by masks) are standardised with the training videos'
per-channel moments, then

* motion (`motion_pooling`): `per_second` (the paper) projects each second (Linear(M -> Wv) +
  LayerNorm) and pools the tokens over time like the key frames; `stats` pools first, keeping the
  spread over seconds (mean, std and max of each channel -> Linear(3M -> Wv) + LayerNorm): either
  way one motion token;
* key-frame tokens are pooled over time per token position (`pooling`: masked mean, or max);
* the T + 1 tokens go through `layers` Transformer encoder layers (the paper: one, at the vision
  width) at `width` (null = the vision width; else a Linear(Wv -> width) in front, so a wide
  vision tower does not dictate an 11M-parameter layer in front of a small LLM), with `dropout`,
  then Linear(-> LLM width) + LayerNorm.

The settings travel in the model folder (`lmmvqa.json` `projector`); folders written before they
existed hold the paper's (`PAPER_SETTINGS`).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

PAPER_SETTINGS = {"layers": 1, "width": None, "dropout": 0.0, "mlp_ratio": 4, "motion_pooling": "per_second"}
MOTION_POOLINGS = ("per_second", "stats")


def pool_time(x: torch.Tensor, mask: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """Pool x [B, N, ...] over N where mask [B, N] is True."""
    m = mask.view(*mask.shape, *([1] * (x.dim() - 2))).to(x.dtype)
    if mode == "mean":
        return (x * m).sum(1) / m.sum(1).clamp_min(1.0)
    if mode == "max":
        out = x.masked_fill(m == 0, torch.finfo(x.dtype).min).amax(1)
        return torch.where(m.sum(1) > 0, out, torch.zeros_like(out))  # a video without any step: 0
    if mode == "std":
        mean = pool_time(x, mask, "mean")
        var = (((x - mean.unsqueeze(1)) ** 2) * m).sum(1) / m.sum(1).clamp_min(1.0)
        return var.clamp_min(0).sqrt()
    raise ValueError(f"unknown pooling '{mode}' (mean, max or std)")


def _heads(width: int) -> int:
    for h in (16, 8, 4, 2):
        if width % h == 0 and width // h >= 32:
            return h
    return 1


def projector_settings(training: dict | None) -> dict:
    """The projector settings of a run (`training.projector` + `training.motion_pooling`), or of a
    model folder's recorded `projector` (None: written before they existed = the paper's)."""
    if training is None:
        return dict(PAPER_SETTINGS)
    if "layers" in training:  # already a projector settings dict (lmmvqa.json)
        return {**PAPER_SETTINGS, **training}
    p = training.get("projector") or {}
    out = {**PAPER_SETTINGS, **{k: v for k, v in p.items() if k in PAPER_SETTINGS}}
    out["motion_pooling"] = training.get("motion_pooling", PAPER_SETTINGS["motion_pooling"])
    return out


class Projector(nn.Module):
    """Motion projector + time pooling + spatial projector -> [B, T + 1, llm_width]."""

    def __init__(self, vision_width: int, motion_dim: int, llm_width: int, pooling: str = "mean",
                 settings: dict | None = None):
        super().__init__()
        s = {**PAPER_SETTINGS, **(settings or {})}
        if s["motion_pooling"] not in MOTION_POOLINGS:
            raise ValueError(f"unknown motion pooling '{s['motion_pooling']}' (one of {', '.join(MOTION_POOLINGS)})")
        self.pooling = pooling
        self.settings = s
        # per-channel standardisation of the frozen features (identity until set from training data):
        # CNN statistics and temporal statistics come in very different scales
        self.register_buffer("spatial_shift", torch.zeros(vision_width))
        self.register_buffer("spatial_scale", torch.ones(vision_width))
        self.register_buffer("motion_shift", torch.zeros(motion_dim))
        self.register_buffer("motion_scale", torch.ones(motion_dim))
        motion_in = motion_dim * (3 if s["motion_pooling"] == "stats" else 1)
        self.motion_proj = nn.Sequential(nn.Linear(motion_in, vision_width), nn.LayerNorm(vision_width))
        width = int(s["width"] or vision_width)
        # the paper's state-dict names are kept when its settings are (older folders load unchanged)
        self.down = nn.Linear(vision_width, width) if width != vision_width else None
        layers = [nn.TransformerEncoderLayer(width, _heads(width), int(s["mlp_ratio"]) * width,
                                             dropout=float(s["dropout"]), batch_first=True)
                  for _ in range(int(s["layers"]))]
        if len(layers) == 1:
            self.encoder = layers[0]
        elif layers:
            self.encoder = nn.Sequential(*layers)
        else:
            self.encoder = None
        self.drop = nn.Dropout(float(s["dropout"])) if s["dropout"] else None
        self.proj = nn.Linear(width, llm_width)
        self.norm = nn.LayerNorm(llm_width)

    def set_standardization(self, moments: dict[str, np.ndarray]) -> None:
        """moments: {spatial_mean, spatial_std, motion_mean, motion_std} of the training features."""
        for role in ("spatial", "motion"):
            mean = torch.as_tensor(np.asarray(moments[f"{role}_mean"]), dtype=torch.float32)
            std = torch.as_tensor(np.asarray(moments[f"{role}_std"]), dtype=torch.float32)
            floor = 1e-2 * float(std.median()) + 1e-6  # constant channels stay ~0 instead of blowing up
            getattr(self, f"{role}_shift").copy_(mean)
            getattr(self, f"{role}_scale").copy_(std.clamp_min(floor))

    def motion_token(self, motion: torch.Tensor, motion_mask: torch.Tensor) -> torch.Tensor:
        """[B, Wv]: one token for the motion of each video."""
        if self.settings["motion_pooling"] == "stats":
            stats = torch.cat([pool_time(motion, motion_mask, m) for m in ("mean", "std", "max")], dim=-1)
            return self.motion_proj(stats)
        return pool_time(self.motion_proj(motion), motion_mask, self.pooling)  # one token per second, pooled

    def forward(self, spatial, spatial_mask, motion, motion_mask) -> torch.Tensor:
        spatial = (spatial - self.spatial_shift) / self.spatial_scale
        motion = (motion - self.motion_shift) / self.motion_scale
        s = pool_time(spatial, spatial_mask, self.pooling)  # [B, T, Wv]
        m = self.motion_token(motion, motion_mask)  # [B, Wv]
        tokens = torch.cat([s, m[:, None]], dim=1)  # [B, T + 1, Wv]
        if self.down is not None:
            tokens = self.down(tokens)
        if self.drop is not None:
            tokens = self.drop(tokens)
        if self.encoder is not None:
            tokens = self.encoder(tokens)
        return self.norm(self.proj(tokens))
