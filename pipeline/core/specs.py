"""Settings derived from the config: resolved model specs and the feature-settings hash.

The feature-settings hash names the feature stores, so changing a model or the sampling makes new
stores (and reruns extraction) while everything else about a dataset stays cached.
"""
from __future__ import annotations

import copy

from pipeline.core.config import deep_merge, presets, stable_hash

FEATURE_FORMAT_VERSION = 1


SAMPLING_KEYS = ("keyframe_fps", "max_keyframes", "chunk_frames", "slow_stride", "max_seconds", "keyframe_mode",
                 "fragment_grid")


def model_spec(cfg: dict, role: str) -> dict:
    """{'source': hub id / path / None, 'config': {...}, 'dtype': ..., ['arch', 'weights']} for role in
    vision|motion|llm. `arch` picks the model family (null = CLIP / SlowFast / Llama); `weights` names
    a packaged weight file and its sha256 (pipeline/features/weights.py)."""
    preset = copy.deepcopy(presets()[cfg["models"]["preset"]][role])
    override = cfg["models"].get(role) or {}
    if override.get("source"):
        preset["source"] = override["source"]
    if "sha256" in override and preset.get("weights"):
        preset["weights"]["sha256"] = override["sha256"]
    preset["config"] = deep_merge(preset.get("config") or {}, override.get("config") or {})
    preset["dtype"] = override.get("dtype")
    return preset


def trains_tokenizer(cfg: dict) -> bool:
    """Whether the LLM uses a tokenizer trained on the prompts (the tokenizer rule): an LLM built at
    random init has no `source` to bring its own. Training and the workflow both ask this."""
    return model_spec(cfg, "llm")["source"] is None


def feature_settings(cfg: dict) -> dict:
    """Everything that changes the numbers in a feature store."""
    f = cfg["features"]
    return {
        "format": FEATURE_FORMAT_VERSION,
        "sampling": {k: cfg["sampling"][k] for k in SAMPLING_KEYS},
        "vision": model_spec(cfg, "vision"),
        "motion": model_spec(cfg, "motion"),
        "spatial_dtype": f["spatial_dtype"],
        "motion_dtype": f["motion_dtype"],
    }


def feature_settings_hash(cfg: dict) -> str:
    return stable_hash(feature_settings(cfg))
