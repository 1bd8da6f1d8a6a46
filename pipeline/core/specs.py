"""Config-dict spellings of the resolved settings (pipeline/core/settings.py) for callers that still
hold a config dict; each answers from `resolve.of(cfg)`."""
from __future__ import annotations

from pathlib import Path

from pipeline.core import resolve
from pipeline.core.config import stable_hash
from pipeline.core.resolve import ADAPTER_SETTINGS, CNN_VISION, base_vision  # noqa: F401
from pipeline.core.settings import (FEATURE_FORMAT_VERSION,  # noqa: F401
                                    NATIVE_MAX_SHORT_SIDE, SAMPLING_KEYS)


def sampling_settings(cfg) -> dict:
    return resolve.of(cfg).features.sampling.hashed()


def model_spec(cfg, role: str) -> dict:
    return resolve.of(cfg).models[role].as_dict()


def base_vision_hash(cfg: dict) -> str:
    return stable_hash(base_vision(cfg))


def adapter_hash(cfg) -> str | None:
    a = resolve.of(cfg).adapter
    return None if a is None else (a.hash or a.sha256)


def adapter_file(cfg):
    a = resolve.of(cfg).adapter
    return Path(a.file) if a.hash else a.file


def trains_tokenizer(cfg) -> bool:
    return resolve.of(cfg).trains_tokenizer


def feature_settings(cfg) -> dict:
    return resolve.of(cfg).features.hashed()


def feature_settings_hash(cfg) -> str:
    return resolve.of(cfg).features.hash
