"""Load and validate the workflow config; the JSON schema (YAML) holds every default."""
from __future__ import annotations

import copy
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators

from pipeline.core import paths
from pipeline.core.errors import UserError

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")
PRESETS_PATH = Path(__file__).with_name("presets.yaml")


@lru_cache(maxsize=1)
def schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


@lru_cache(maxsize=1)
def presets() -> dict:
    """The model presets (presets.yaml): per preset its models and its `recipe`."""
    return yaml.safe_load(PRESETS_PATH.read_text())


def _fill_missing(cfg: dict, defaults: dict) -> None:
    """Set in `cfg` (in place) every key of `defaults` that `cfg` does not have, recursively."""
    for k, v in defaults.items():
        if k not in cfg:
            cfg[k] = copy.deepcopy(v)
        elif isinstance(v, dict) and isinstance(cfg[k], dict):
            _fill_missing(cfg[k], v)


def apply_recipe(cfg: dict) -> None:
    """Fill the keys the config leaves unset from its preset's `recipe` (presets.yaml): the answer
    head's settings that differ by preset (a pretrained LLM keeps the paper's recipe, the schema's
    defaults; an LLM trained here gets the settings measured best for it). Keys the config sets win;
    the schema's defaults fill the rest afterwards."""
    models = cfg.get("models") if isinstance(cfg.get("models"), dict) else {}
    preset = models.get("preset", schema()["properties"]["models"]["properties"]["preset"]["default"])
    recipe = (presets().get(preset) or {}).get("recipe") if isinstance(preset, str) else None
    if recipe:
        _fill_missing(cfg, recipe)


def _with_defaults(validator_class):
    """A validator that also fills defaults, the way snakemake.utils.validate(set_default=True) does."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, sch):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "$ref" in sub:
                    sub = _resolve(sub["$ref"])
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, sch)

    return validators.extend(validator_class, {"properties": set_defaults})


def _resolve(ref: str) -> dict:
    assert ref.startswith("#/$defs/"), ref
    return schema()["$defs"][ref.split("/")[-1]]


_Validator = _with_defaults(Draft202012Validator)


def _error_line(err) -> str:
    where = ".".join(str(p) for p in err.absolute_path) or "<top level>"
    if err.validator == "additionalProperties":
        return f"config key error at '{where}': {err.message} (see pipeline/core/config.schema.yaml)"
    return f"config error at '{where}': {err.message}"


def validate(cfg: dict, source: str = "config") -> dict:
    """Validate in place, filling defaults (the preset's recipe first, then the schema's, twice:
    defaults of defaults). Raises UserError naming the key."""
    cfg = cfg if cfg is not None else {}
    if not isinstance(cfg, dict):
        raise UserError(f"{source}: the config must be a mapping, got {type(cfg).__name__}")
    apply_recipe(cfg)
    _synth_outputs(cfg, source)
    _split_schemes(cfg)
    _folder_videos(cfg)
    for _ in range(3):
        errors = sorted(_Validator(schema()).iter_errors(cfg), key=lambda e: list(e.absolute_path))
        if errors:
            raise UserError(f"{source}: " + _error_line(errors[0]))
    return cfg


# Formats whose dataset defines its own train / test split (LSVQ's label files); the others are k-folded.
OFFICIAL_SPLIT_FORMATS = ("lsvq",)


def default_split_scheme(fmt: str) -> str:
    """The split a dataset of this format gets when its config names none: official where the dataset
    defines one, else k-fold."""
    return "official" if fmt in OFFICIAL_SPLIT_FORMATS else "kfold"


def _split_schemes(cfg: dict) -> None:
    """Fill each dataset's `split.scheme` from its format where the config leaves it unset (the schema
    cannot: its default would be the same for every format)."""
    datasets = cfg.get("datasets")
    for ds in (datasets.values() if isinstance(datasets, dict) else ()):
        if isinstance(ds, dict) and isinstance(ds.get("format"), str):
            split = ds.setdefault("split", {})
            if isinstance(split, dict) and "scheme" not in split:
                split["scheme"] = default_split_scheme(ds["format"])


def _synth_outputs(cfg: dict, source: str) -> None:
    """A synth dataset's label file and videos folder are what its stage writes (pipeline/synth), so the
    rest of the workflow reads it like any generic dataset; its `synth` block gets the schema's defaults."""
    datasets = cfg.get("datasets")
    for name, ds in (datasets.items() if isinstance(datasets, dict) else ()):
        if not isinstance(ds, dict) or ds.get("format") != "synth":
            continue
        for key, path in (("labels", paths.synth_labels(name)), ("videos", paths.synth_videos(name))):
            if ds.get(key) not in (None, str(path)):
                raise UserError(f"{source}: config error at 'datasets.{name}.{key}': a synth dataset's {key} "
                                f"is written by the workflow ({path}); remove the key")
            ds[key] = str(path)
        if ds.get("generate") and Path(str(ds.get("references"))).name != "videos":
            raise UserError(f"{source}: config error at 'datasets.{name}.references': with `generate`, the demo "
                            "generator renders the references into a folder named `videos` (labels.csv beside it), "
                            f"got {ds.get('references')!r}")
        if ds.get("synth") is None:
            ds["synth"] = {}


def _folder_videos(cfg: dict) -> None:
    """A `folder` dataset's `labels` is its videos folder: `videos` defaults to it, so probing and
    extraction find the files as for any other format."""
    datasets = cfg.get("datasets")
    for ds in (datasets.values() if isinstance(datasets, dict) else ()):
        if isinstance(ds, dict) and ds.get("format") == "folder" and not ds.get("videos"):
            ds["videos"] = ds.get("labels")


def load_config(path: str | Path, overrides: dict | None = None) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"config file not found: {path}")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from None
    if overrides:
        cfg = deep_merge(cfg, overrides)
    return validate(cfg, str(path))


def deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def stable_hash(obj: Any, n: int = 10) -> str:
    """Short hash of a JSON-able value, independent of key order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]
