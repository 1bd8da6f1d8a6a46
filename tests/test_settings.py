"""The resolved plan (pipeline/core/resolve.py, pipeline/core/settings.py): typed settings built once from
the validated config, field for field the schema's keys, reading back as the config they came from."""
from __future__ import annotations

import dataclasses

import pytest
from conftest import REPO

from pipeline.core import paths, resolve, settings
from pipeline.core.config import load_config, schema, validate
from pipeline.core.errors import UserError

# settings class -> its fields that are not keys of its schema block (computed by the resolver)
CLASSES = {
    settings.TrainingSettings: set(), settings.Projector: set(), settings.ScoreLoss: set(), settings.Lora: set(),
    settings.EvaluationSettings: set(), settings.PromptSettings: set(), settings.Sampling: set(),
    settings.DecodeDeadlineSettings: set(), settings.Split: set(),
    settings.FeatureSettings: {"sampling", "vision", "motion", "hash"},
    settings.Dataset: {"name"}, settings.Experiment: {"name", "block"},
}


@pytest.mark.parametrize("cls", list(CLASSES), ids=lambda c: c.__name__)
def test_each_settings_class_has_the_keys_of_its_schema_block(cls):
    node = settings._schema_node(cls.SCHEMA)
    fields = {f.name for f in dataclasses.fields(cls)}
    assert fields - CLASSES[cls] == set(node["properties"]), cls.__name__
    for name in node["properties"]:  # what a field means is the schema's text
        assert settings.field_help(cls, name) or "default" not in node["properties"][name], (cls.__name__, name)
    # the schema holds the defaults: no config field defaults in the class (but the resolver's own)
    assert [f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING
            and f.name not in CLASSES[cls] and f.name != "native_max_short_side"] == []


def test_field_help_is_the_schema_description_and_default():
    text = settings.field_help(settings.Split, "seed")
    assert text == "seed of the fold assignment (default: 0)"
    assert schema()["properties"]["training"]["properties"]["lr"]["default"] == 1e-3
    assert settings.field_help(settings.TrainingSettings, "lr").endswith("(default: 0.001)")


def test_the_default_config_resolves_to_its_blocks_as_written():
    cfg = load_config(REPO / "config.yaml")
    s = resolve.resolve(cfg, validated=True)
    for block, piece in (("training", s.training), ("evaluation", s.evaluation), ("prompts", s.prompts)):
        assert settings.as_dict(piece) == cfg[block], block
    assert s.training.projector.layers == cfg["training"]["projector"]["layers"]
    assert s.training.lora.target_modules == tuple(cfg["training"]["lora"]["target_modules"])
    # the default feature stores keep their name: a changed hash would re-extract every user's features
    assert s.features.hash == "14811b43bd"
    assert s.features.vision.as_dict()["source"] is None and s.models["vision"] is s.features.vision
    demo = s.datasets["demo"]
    assert demo.rated and demo.split.scheme == "kfold" and demo.label_files == [demo.labels]
    exp = s.experiment("demo")
    assert exp.folds is None and exp.holdout_fold == cfg["experiments"]["demo"]["holdout_fold"]
    assert settings.as_dict(exp.run_training()) == cfg["training"]


def test_experiments_runs_and_holdouts_are_typed():
    cfg = validate({
        "datasets": {"d": {"format": "generic", "labels": "d.csv", "split": {"k": 4}},
                     "new": {"format": "folder", "labels": "clips"}},
        "training": {"lr": 1e-3, "seed": 7},
        "experiments": {"cv": {"train": ["d:train"], "test": ["d:test", "new:all"], "folds": "all", "ensemble": 3,
                               "training": {"epochs": 2}},
                        "two": {"train": ["d:train"], "test": ["d:test"], "stage1": {"lr": 0.5},
                                "training": {"lora": {"enabled": True}}}}})
    s = resolve.resolve(cfg, validated=True)
    cv, two = s.experiment("cv"), s.experiment("two")
    assert cv.folds == [0, 1, 2, 3] and cv.every_fold and cv.members == [1, 2]
    assert cv.training.epochs == 2 and s.training.epochs == 10  # the experiment's override, the top level's
    assert cv.run_training(member=2).seed == 9 and cv.run_training().seed == 7
    assert two.stage1.lr == 0.5 and not two.stage1.lora.enabled and two.training.lora.enabled
    assert not s.datasets["new"].rated and s.datasets["d"].split.k == 4
    held = s.with_holdout("cv", 2)
    assert held.experiment("cv").holdout_fold == 2 and held.config["experiments"]["cv"]["holdout_fold"] == 2
    assert s.experiment("cv").holdout_fold == 0 and cfg["experiments"]["cv"]["holdout_fold"] == 0  # untouched
    assert s.with_holdout("cv", paths.FULL_MODEL).experiment("cv").holdout_fold is None
    with pytest.raises(UserError, match="--fold needs folds: all"):
        s.with_holdout("two", 0)
    with pytest.raises(UserError, match=r"unknown experiment 'nope' \(config has: cv, two\)"):
        s.experiment("nope")
    with pytest.raises(UserError, match="has no stage 1"):
        cv.run_training(1)
    with pytest.raises(UserError, match="must be > 0 seconds"):
        s.with_decode_deadline(0)
    assert s.with_decode_deadline(5).features.sampling.decode_deadline.base_s == 5.0
    assert s.with_decode_deadline(5).features.hash == s.features.hash  # a deadline changes no feature


def test_of_resolves_a_dict_once_and_passes_settings_through():
    cfg = load_config(REPO / "config.yaml")
    s = resolve.of(cfg)
    assert resolve.of(cfg) is s and resolve.of(s) is s
