"""Config validation: defaults filled from the schema, unknown keys and wrong types named."""
import copy

import pytest
import yaml
from conftest import REPO

from pipeline.core.config import load_config, stable_hash, validate
from pipeline.core.errors import UserError
from pipeline.core import resolve


def default_cfg():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_default_config_fills_defaults():
    cfg = load_config(REPO / "config.yaml")
    assert cfg["sampling"]["keyframe_fps"] == 1.0
    assert cfg["training"]["lora"]["enabled"] is False
    assert cfg["models"]["vision"]["source"] is None
    assert cfg["datasets"]["demo"]["split"] == {"scheme": "kfold", "k": 5, "seed": 0, "group_by": None}


@pytest.mark.parametrize(
    "patch, needle",
    [
        ({"sampling": {"keyframe_fsp": 1}}, "keyframe_fsp"),
        ({"sampling": {"keyframe_fps": "fast"}}, "sampling.keyframe_fps"),
        ({"trainig": {}}, "trainig"),
        ({"models": {"preset": "huge"}}, "models.preset"),
        ({"device": "gpu"}, "device"),
        ({"features": {"shard_size": 0}}, "features.shard_size"),
    ],
)
def test_bad_keys_are_named(patch, needle):
    cfg = default_cfg()
    for section, value in patch.items():
        if isinstance(value, dict) and isinstance(cfg.get(section), dict):
            cfg[section].update(value)
        else:
            cfg[section] = value
    with pytest.raises(UserError) as err:
        validate(cfg, "my.yaml")
    assert needle in str(err.value) and "my.yaml" in str(err.value)
    assert "\n" not in str(err.value)


def test_dataset_format_typo_is_named():
    cfg = default_cfg()
    cfg["datasets"]["demo"]["format"] = "konvid1k"
    with pytest.raises(UserError, match=r"datasets\.demo\.format"):
        validate(cfg)


def feature_settings_hash(cfg) -> str:
    return resolve.of(cfg).features.hash


def model_spec(cfg, role) -> dict:
    return resolve.of(cfg).models[role].as_dict()


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_feature_hash_changes_only_with_feature_settings():
    base = load_config(REPO / "config.yaml")
    h = feature_settings_hash(base)
    other = copy.deepcopy(base)
    other["training"]["lr"] = 0.5
    assert feature_settings_hash(other) == h
    other["sampling"]["keyframe_fps"] = 2.0
    assert feature_settings_hash(other) != h


def test_model_spec_merges_overrides():
    cfg = load_config(REPO / "config.yaml")
    cfg["models"]["preset"] = "tiny"
    cfg["models"]["vision"]["config"] = {"num_hidden_layers": 3}
    spec = model_spec(cfg, "vision")
    assert spec["source"] is None and spec["config"]["num_hidden_layers"] == 3
    assert spec["config"]["hidden_size"] == 128
    cfg["models"]["preset"] = "paper"
    cfg["models"]["vision"]["source"] = "/models/clip"
    assert model_spec(cfg, "vision")["source"] == "/models/clip"


def test_stable_hash_ignores_key_order():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})


def test_preset_recipe_fills_only_unset_keys(monkeypatch):
    """A preset's `recipe` (presets.yaml) sits between the schema's defaults and the config: keys the
    config leaves out take it, keys it sets win, other presets keep the schema's (the paper's) values."""
    from pipeline.core import config as config_module

    presets = copy.deepcopy(config_module.presets())
    presets["tiny"]["recipe"] = {"prompts": {"answer_format": "integer"},
                                 "training": {"projector": {"width": 64}, "epochs": 3}}
    monkeypatch.setattr(config_module, "presets", lambda: presets)
    base = {"datasets": {"d": {"format": "generic", "labels": "l.csv"}}}
    cfg = validate({**copy.deepcopy(base), "models": {"preset": "tiny"}})
    assert cfg["prompts"]["answer_format"] == "integer" and cfg["training"]["epochs"] == 3
    assert cfg["training"]["projector"] == {"layers": 1, "width": 64, "dropout": 0.0, "mlp_ratio": 4}
    mine = validate({**copy.deepcopy(base), "models": {"preset": "tiny"},
                     "training": {"epochs": 7, "projector": {"dropout": 0.2}}})
    assert mine["training"]["epochs"] == 7 and mine["training"]["projector"]["width"] == 64
    assert mine["training"]["projector"]["dropout"] == 0.2
    paper = validate({**copy.deepcopy(base), "models": {"preset": "paper"}})
    assert paper["prompts"]["answer_format"] == "decimal3" and paper["training"]["projector"]["width"] is None
    assert validate(copy.deepcopy(cfg)) == cfg  # a resolved config reads back the same


def test_paper_preset_keeps_the_paper_recipe():
    cfg = validate({"datasets": {"d": {"format": "generic", "labels": "l.csv"}}, "models": {"preset": "paper"}})
    assert cfg["prompts"]["answer_format"] == "decimal3"
    assert cfg["training"]["projector"] == {"layers": 1, "width": None, "dropout": 0.0, "mlp_ratio": 4}
    assert cfg["training"]["motion_pooling"] == "per_second" and cfg["training"]["select"] == "last"
    assert cfg["training"]["score_loss"] == {"soft_weight": 0.0, "soft_sigma": 3.0, "expected_weight": 0.0}


def test_offline_preset_trains_with_its_measured_recipe():
    """The default preset's LLM is trained here from scratch: whole-number answers, a small projector with
    dropout, motion statistics, lr 3e-4 and averaged weights unless the config says otherwise."""
    base = {"datasets": {"d": {"format": "generic", "labels": "l.csv"}}}
    cfg = validate(copy.deepcopy(base))
    assert cfg["models"]["preset"] == "offline" and cfg["prompts"]["answer_format"] == "integer"
    tr = cfg["training"]
    assert (tr["lr"], tr["select"], tr["motion_pooling"]) == (3.0e-4, "average", "stats")
    assert tr["projector"] == {"layers": 1, "width": 256, "dropout": 0.1, "mlp_ratio": 4}
    mine = validate({**copy.deepcopy(base), "prompts": {"answer_format": "decimal3"}, "training": {"lr": 1.0e-3}})
    assert mine["prompts"]["answer_format"] == "decimal3" and mine["training"]["lr"] == 1.0e-3
