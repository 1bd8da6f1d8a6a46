"""A light quality adapter on top of the frozen vision encoder's tokens, learned without MOS.

ImageNet statistics carry content as much as quality. The adapter is a small MLP applied to every
vision token (standardised with the training tokens' mean / std): token -> `dim`-d embedding; a
video's score is a linear head on the mean embedding over its key frames and tokens. It is trained on
synthetic variants labelled by a full-reference metric (VMAF, pipeline/synth), with pairs taken
*across* references (DipIQ-style: a batch mixes contents, so the order must hold between clips, not
only between levels of one clip). Objectives (`OBJECTIVES`):

* `rank`     pairwise hinge whose margin grows with the label gap (m * |dy| / 100), so it does not
             saturate once the order is right;
* `listwise` ListNet: cross-entropy between softmax(labels / T) and softmax(scores) over the batch;
* `rank_reg` `rank` + mean squared error of the score against label / 100;
* `reg`      mean squared error only.

With an adapter, the vision role's tokens become base token ++ embedding (`AdaptedVision`), so the
answer head and a ridge readout see both. Weights are saved as safetensors with the settings and
hashes in the metadata (`save_adapter` / `load_adapter`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.core import atomic
from pipeline.core.errors import UserError

OBJECTIVES = ("rank", "listwise", "rank_reg", "reg")
DEFAULTS = {"objective": "listwise", "dim": 16, "hidden": 128, "steps": 400, "lr": 1e-3, "weight_decay": 1e-2,
            "batch_videos": 64, "margin": 1.0, "min_gap": 2.0, "temperature": 2.5, "seed": 0}


class QualityAdapter(nn.Module):
    """tokens [..., width] -> embedding [..., dim]; `score` of one video = head(mean embedding)."""

    def __init__(self, width: int, dim: int = 16, hidden: int = 128):
        super().__init__()
        self.width, self.dim, self.hidden = int(width), int(dim), int(hidden)
        self.register_buffer("mean", torch.zeros(self.width))
        self.register_buffer("std", torch.ones(self.width))
        self.net = nn.Sequential(nn.Linear(self.width, self.hidden), nn.GELU(), nn.Linear(self.hidden, self.dim))
        self.head = nn.Linear(self.dim, 1)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net((tokens.float() - self.mean) / self.std)

    def video_scores(self, tokens: torch.Tensor, video: torch.Tensor, n_videos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat tokens [N, width] of several videos (`video` [N]: the index of each token's video) ->
        (scores [n_videos], mean embeddings [n_videos, dim])."""
        e = self.embed(tokens)
        sums = torch.zeros(n_videos, self.dim, dtype=e.dtype).index_add_(0, video, e)
        counts = torch.bincount(video, minlength=n_videos).clamp_min(1).to(e.dtype)[:, None]
        mean = sums / counts
        return self.head(mean).squeeze(1), mean


class AdaptedVision(nn.Module):
    """A frozen vision model (CNNStats or CLIP) whose tokens get the adapter's embedding appended:
    [n, tokens, width] -> [n, tokens, width + dim]."""

    def __init__(self, base: nn.Module, adapter: QualityAdapter):
        super().__init__()
        self.base, self.adapter = base, adapter
        cnn = hasattr(base, "tokens")
        self.tokens = base.tokens if cnn else (base.config.image_size // base.config.patch_size) ** 2 + 1
        self.width = (base.width if cnn else base.config.hidden_size) + adapter.dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x) if hasattr(self.base, "tokens") else self.base(pixel_values=x).last_hidden_state
        return torch.cat([h, self.adapter.embed(h).to(h.dtype)], -1)


# ------------------------------------------------------------------ training

def pack(token_arrays: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-video token arrays [frames, tokens, width] -> flat tokens [N, width] float32 + video index [N]."""
    flat = [np.asarray(t, np.float32).reshape(-1, np.shape(t)[-1]) for t in token_arrays]
    video = np.concatenate([np.full(len(f), i, np.int64) for i, f in enumerate(flat)])
    return torch.from_numpy(np.concatenate(flat)), torch.from_numpy(video)


def objective_loss(objective: str, scores: torch.Tensor, labels: torch.Tensor, settings: dict) -> torch.Tensor:
    """Loss of one batch of video scores against their full-reference labels (0-100, higher = better)."""
    if objective not in OBJECTIVES:
        raise UserError(f"unknown adapter objective {objective!r} (one of {', '.join(OBJECTIVES)})")
    settings = {**DEFAULTS, **settings}
    loss = scores.new_zeros(())
    if objective in ("rank", "rank_reg"):
        dy = labels[:, None] - labels[None, :]  # > 0: i better than j
        ds = scores[:, None] - scores[None, :]
        pairs = dy > float(settings["min_gap"])
        if pairs.any():
            margin = float(settings["margin"]) * dy[pairs] / 100.0
            loss = loss + torch.relu(margin - ds[pairs]).mean()
    if objective == "listwise":
        target = torch.softmax(labels / float(settings["temperature"]), 0)
        loss = loss - (target * torch.log_softmax(scores, 0)).sum()
    if objective in ("reg", "rank_reg"):
        loss = loss + ((scores - labels / 100.0) ** 2).mean()
    return loss


def evaluate_loss(adapter: QualityAdapter, token_arrays, labels, settings: dict) -> float:
    """The objective's loss over a whole held-out set (one batch)."""
    tokens, video = pack(token_arrays)
    with torch.no_grad():
        scores, _ = adapter.video_scores(tokens, video, len(token_arrays))
        return float(objective_loss(settings["objective"], scores, torch.as_tensor(labels, dtype=torch.float32), settings))


def train_adapter(token_arrays: list[np.ndarray], labels, settings: dict | None = None, log=None) -> tuple[QualityAdapter, list[dict]]:
    """Fit an adapter on videos' frozen tokens and their full-reference labels; deterministic per
    `settings.seed` (CPU). Returns (adapter in eval mode, history [{step, loss}])."""
    s = {**DEFAULTS, **(settings or {})}
    if s["objective"] not in OBJECTIVES:
        raise UserError(f"unknown adapter objective {s['objective']!r} (one of {', '.join(OBJECTIVES)})")
    if len(token_arrays) < 2:
        raise UserError(f"the adapter needs at least 2 labelled videos, got {len(token_arrays)}")
    labels = np.asarray(labels, np.float32)
    rng = np.random.default_rng(int(s["seed"]))
    width = int(np.shape(token_arrays[0])[-1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(s["seed"]))
        adapter = QualityAdapter(width, s["dim"], s["hidden"])
    tokens, video = pack(token_arrays)
    adapter.mean.copy_(tokens.mean(0))
    adapter.std.copy_(tokens.std(0).clamp_min(1e-4))
    starts = np.concatenate([[0], np.cumsum(np.bincount(video.numpy(), minlength=len(token_arrays)))])
    opt = torch.optim.AdamW(adapter.parameters(), lr=float(s["lr"]), weight_decay=float(s["weight_decay"]))
    history = []
    n_batch = min(int(s["batch_videos"]), len(token_arrays))
    adapter.train()
    for step in range(int(s["steps"])):
        pick = rng.choice(len(token_arrays), n_batch, replace=False)
        rows = torch.from_numpy(np.concatenate([np.arange(starts[i], starts[i + 1]) for i in pick]))
        local = torch.from_numpy(np.concatenate([np.full(starts[i + 1] - starts[i], j) for j, i in enumerate(pick)]))
        scores, _ = adapter.video_scores(tokens[rows], local, n_batch)
        loss = objective_loss(s["objective"], scores, torch.from_numpy(labels[pick]), s)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({"step": step + 1, "loss": float(loss.detach())})
        if log and (step + 1) % max(1, int(s["steps"]) // 10) == 0:
            log(f"step {step + 1}/{s['steps']}: loss {float(loss.detach()):.4f}")
    return adapter.eval().requires_grad_(False), history


def video_embeddings(adapter: QualityAdapter, token_arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(scores [n], mean embeddings [n, dim]) of videos' frozen tokens."""
    out_s, out_e = [], []
    for i in range(0, len(token_arrays), 64):
        part = token_arrays[i:i + 64]
        tokens, video = pack(part)
        with torch.no_grad():
            s, e = adapter.video_scores(tokens, video, len(part))
        out_s.append(s.numpy())
        out_e.append(e.numpy())
    return np.concatenate(out_s), np.concatenate(out_e)


# ------------------------------------------------------------------ file

def save_adapter(path, adapter: QualityAdapter, meta: dict) -> Path:
    """Weights as safetensors with `meta` (settings, hashes; JSON values) in the header, written atomically."""
    from safetensors.torch import save_file

    header = {"adapter": json.dumps({"width": adapter.width, "dim": adapter.dim, "hidden": adapter.hidden,
                                     **meta}, sort_keys=True)}

    def write(tmp: Path) -> None:
        save_file({k: v.contiguous() for k, v in adapter.state_dict().items()}, str(tmp), metadata=header)
        atomic.readable_by_all(tmp)  # readable like the other outputs (safetensors writes the file private)

    return atomic.write_file(path, write)


def read_meta(path) -> dict:
    """The settings and hashes stored in an adapter file's header."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {})["adapter"])


def load_adapter(path, expected_hash: str | None = None, base_hash: str | None = None) -> tuple[QualityAdapter, dict]:
    """-> (adapter in eval mode, its metadata). A missing, truncated or foreign file, or one made for
    other settings (`expected_hash`) or another base encoder (`base_hash`), fails naming the file and
    both hashes."""
    from safetensors.torch import load_file

    path = Path(path)
    want = f"expected adapter hash {expected_hash or 'any'}, base vision hash {base_hash or 'any'}"
    if not path.is_file():
        raise UserError(f"{path}: adapter file not found ({want}): run `lmmvqa adapt-encoder` or fix "
                        "models.vision.adapted")
    try:
        meta = read_meta(path)
        state = load_file(str(path))
    except Exception as e:  # truncated / not safetensors / no adapter header
        raise UserError(f"{path}: not a readable adapter file ({type(e).__name__}: {e}; {want}, "
                        "file hash unknown)") from None
    got, got_base = meta.get("hash"), meta.get("base_hash")
    if (expected_hash and got != expected_hash) or (base_hash and got_base != base_hash):
        raise UserError(f"{path}: adapter hash {got} (base vision hash {got_base}) does not match the "
                        f"config's: {want}; rerun `lmmvqa adapt-encoder`")
    adapter = QualityAdapter(meta["width"], meta["dim"], meta["hidden"])
    try:
        adapter.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"{path}: adapter weights do not fit its header ({e}; {want}, file hash {got})") from None
    return adapter.eval().requires_grad_(False), meta
