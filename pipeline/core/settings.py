"""The resolved plan's objects: typed, documented settings that the stages take.

`pipeline/core/resolve.py` builds them once from the validated config (the preset's recipe, then the
schema's defaults): a `Settings` holds the config's `datasets` (`Dataset`, with its `Split`), its
`experiments` (`Experiment`: selectors, folds, the `TrainingSettings` of each stage, ensemble, the
model it continues from), the `ModelSpec` of each role (preset + overrides, weights and the quality
`Adapter`), the `FeatureSettings` whose hash names the feature stores, and the `PromptSettings` and
`EvaluationSettings` of the run. Rules and commands resolve once and hand each stage the piece it needs.
A field's meaning and default live in the schema (config.schema.yaml): `field_help(cls, "name")`.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field

from pipeline.core import paths
from pipeline.core.config import schema
from pipeline.core.errors import UserError


FEATURE_FORMAT_VERSION = 1
SAMPLING_KEYS = ("keyframe_fps", "max_keyframes", "chunk_frames", "slow_stride", "max_seconds", "keyframe_mode",
                 "fragment_grid")
NATIVE_MAX_SHORT_SIDE = 540  # sampling.native_max_short_side when unset (keyframe_mode: native)
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

    def with_decode_deadline(self, base_s: float | None) -> "FeatureSettings":
        """These settings with `sampling.decode_deadline.base_s` = `base_s` (a command's
        --decode-deadline: it changes no feature, nor the hash); themselves when base_s is None."""
        if base_s is None:
            return self
        if not base_s > 0:
            raise UserError(f"--decode-deadline must be > 0 seconds, got {base_s}")
        deadline = dataclasses.replace(self.sampling.decode_deadline, base_s=float(base_s))
        return dataclasses.replace(self, sampling=dataclasses.replace(self.sampling, decode_deadline=deadline))

    def hashed(self) -> dict:
        """Everything that changes the numbers in a feature store."""
        return {"format": FEATURE_FORMAT_VERSION, "sampling": self.sampling.hashed(),
                "vision": self.vision.as_dict(), "motion": self.motion.as_dict(),
                "spatial_dtype": self.spatial_dtype, "motion_dtype": self.motion_dtype}


@dataclass(frozen=True)
class Split:
    SCHEMA: typing.ClassVar = ("datasets", "*", "split")
    scheme: str
    k: int
    seed: int
    group_by: str | None


@dataclass(frozen=True)
class Dataset:
    """One dataset of the config: where its labels and media are, how it is split."""
    SCHEMA: typing.ClassVar = ("datasets", "*")
    name: str
    format: str
    labels: str
    split: Split
    extra_labels: tuple
    videos: str | None
    mos_scale: str | None  # "0-100" or "1-5": the scale its label file rates on
    generate: dict | None
    references: str | None
    reference_labels: str | None
    synth: dict | None

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
        return self if base_s is None else dataclasses.replace(self, features=self.features.with_decode_deadline(base_s))


# ---------------------------------------------------------------------------------------------------
def check_experiments(experiments: dict, datasets: dict) -> None:
    """What no single experiment's block can say is wrong: a training selector of unrated videos, stage 1
    beside init_from, an ensemble that continues from another model, an `init_from` chain that is
    unknown, circular, or runs other folds."""
    for name, exp in experiments.items():
        for selector in exp.train:
            ds = datasets.get(selector.partition(":")[0])  # a 'DATASET:SUBSET' selector
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
