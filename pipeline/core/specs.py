"""Config-dict spellings of the resolved settings (pipeline/core/settings.py) for callers that still
hold a config dict; each answers from `settings.of(cfg)`."""
from __future__ import annotations

from pathlib import Path

from pipeline.core import settings
from pipeline.core.config import stable_hash
from pipeline.core.settings import (ADAPTER_SETTINGS, CNN_VISION, FEATURE_FORMAT_VERSION,  # noqa: F401
                                    NATIVE_MAX_SHORT_SIDE, SAMPLING_KEYS, base_vision)


def sampling_settings(cfg) -> dict:
    return settings.of(cfg).features.sampling.hashed()


def model_spec(cfg, role: str) -> dict:
    return settings.of(cfg).models[role].as_dict()


def base_vision_hash(cfg: dict) -> str:
    return stable_hash(base_vision(cfg))


def adapter_hash(cfg) -> str | None:
    a = settings.of(cfg).adapter
    return None if a is None else (a.hash or a.sha256)


def adapter_file(cfg):
    a = settings.of(cfg).adapter
    return Path(a.file) if a.hash else a.file


def trains_tokenizer(cfg) -> bool:
    return settings.of(cfg).trains_tokenizer


def feature_settings(cfg) -> dict:
    return settings.of(cfg).features.hashed()


def feature_settings_hash(cfg) -> str:
    return settings.of(cfg).features.hash
