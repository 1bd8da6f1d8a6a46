"""Stage 1 -> stage 2: per-experiment training overrides, `init_from`, and one
experiment running both stages (`stage1:`), stage 2 starting from stage 1's weights."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from test_train import make_workspace

from pipeline.core import resolve
from pipeline.core.config import validate
from pipeline.core.errors import UserError
from pipeline.core.settings import as_dict
from pipeline.training.runs import continues_from, run_name

LORA = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}


def _cfg(experiments, **training):
    return validate({"datasets": {"d": {"format": "generic", "labels": "l.csv"}},
                     "training": {"lr": 1e-3, **training}, "experiments": experiments})


def experiment_training(cfg, name, stage=None) -> dict:
    """A run's resolved training settings, as the config block they read as."""
    return as_dict(resolve.of(cfg).experiment(name).run_training(stage))


def init_model_dir(cfg, name, stage=None, fold=None):
    s = resolve.of(cfg)
    return continues_from(s.experiment(name), s.experiments, stage, fold)


def check_experiments(cfg) -> None:
    resolve.resolve(cfg).check_experiments()


def test_experiment_training_merges_overrides():
    cfg = _cfg({"e": {"train": ["d:train"], "test": ["d:test"], "training": {"lora": {"enabled": True}, "lr": 2e-5},
                      "stage1": {"epochs": 1, "lr": 3e-3}},
                "plain": {"train": ["d:train"], "test": ["d:test"]}})
    two = experiment_training(cfg, "e")
    assert two["lr"] == 2e-5 and two["lora"]["enabled"] is True and two["lora"]["r"] == 16  # merged key by key
    one = experiment_training(cfg, "e", 1)
    assert one["lr"] == 3e-3 and one["epochs"] == 1 and one["lora"]["enabled"] is False  # stage 1: LoRA off
    assert experiment_training(cfg, "plain") == cfg["training"]
    assert init_model_dir(cfg, "e") == init_model_dir(cfg, "e", None)
    assert str(init_model_dir(cfg, "e")) == "results/models/e.stage1" and init_model_dir(cfg, "e", 1) is None
    assert init_model_dir(cfg, "plain") is None and run_name("e", 1) == "e.stage1"
    with pytest.raises(UserError, match="experiment 'plain' has no stage 1"):
        experiment_training(cfg, "plain", 1)


def test_bad_overrides_and_chains_are_named():
    base = {"train": ["d:train"], "test": ["d:test"]}
    with pytest.raises(UserError, match=r"experiments\.e\.training.*'lrr' was unexpected"):
        check_experiments(_cfg({"e": {**base, "training": {"lrr": 1}}}))
    with pytest.raises(UserError, match=r"'experiments\.e\.stage1\.epochs'"):
        check_experiments(_cfg({"e": {**base, "stage1": {"epochs": "one"}}}))
    with pytest.raises(UserError, match=r"experiments\.e\.init_from: unknown experiment 'nope'"):
        check_experiments(_cfg({"e": {**base, "init_from": "nope"}}))
    with pytest.raises(UserError, match=r"a cycle \(a -> b -> a\)"):
        check_experiments(_cfg({"a": {**base, "init_from": "b"}, "b": {**base, "init_from": "a"}}))
    with pytest.raises(UserError, match="either stage1 or init_from"):
        check_experiments(_cfg({"a": base, "b": {**base, "init_from": "a", "stage1": {}}}))
    with pytest.raises(UserError, match="experiments.e"):
        _cfg({"e": {**base, "init": "x"}})  # unknown experiment key
    ok = _cfg({"a": base, "b": {**base, "init_from": "a", "training": {"lora": LORA}}})
    check_experiments(ok)
    assert str(init_model_dir(ok, "b")) == "results/models/a"


@pytest.fixture
def two_stage(tmp_path, monkeypatch):
    cfg = make_workspace(tmp_path, training={"batch_size": 4, "checkpoint_every": 100, "val_fraction": 0.0,
                                            "lr": 0.003})
    cfg["experiments"]["exp"].update(stage1={"lr": 0.01}, training={"train_llm": False, "lora": LORA})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text(json.dumps(cfg))
    return cfg


def test_stage2_continues_from_stage1(two_stage, tmp_path):
    from pipeline.cli import main
    from pipeline.core import paths
    from pipeline.features.stores.store_reader import dataset_features, feature_info
    from pipeline.model.lmm import LMMVQA
    from pipeline.training.data import load_training_tokenizer
    from pipeline.training.train import train

    cfg = resolve.of(two_stage)
    with pytest.raises(UserError, match="exp.stage1, which is not a trained model folder"):
        train(cfg, "exp", "results/models/exp", max_steps=1, progress=False)
    # stage 1 (the rule train_stage1's command): projector + the random-init LLM train, LoRA off
    assert main(["train", "--config", "cfg.yaml", "--experiment", "exp", "--stage1", "--out", "results/models/exp.stage1",
                 "--max-steps", "2", "--no-progress"]) == 0
    s1 = paths.model_dir("exp.stage1")
    meta1 = json.loads((s1 / "lmmvqa.json").read_text())
    assert meta1["stage"] == 1 and meta1["lora"] is None and meta1["llm_weights"] == "llm"
    assert meta1["training"]["lr"] == 0.01
    assert (paths.checkpoint_dir("exp.stage1") / "run.json").exists()
    proj1 = load_file(str(s1 / "projector.safetensors"))
    llm1 = load_file(str(s1 / "llm" / "model.safetensors"))

    # stage 2 is built from stage 1: its projector and LLM start equal to stage 1's
    feats, _ = dataset_features(cfg.features.hash, "syn")
    llm, stage2 = cfg.models["llm"], cfg.experiment("exp").run_training()
    tok = load_training_tokenizer(llm)
    model = LMMVQA.build(llm, stage2, cfg.prompts, tok, feature_info(feats), init=s1)
    assert model.projector.state_dict().keys() == proj1.keys()
    assert all(torch.equal(v, proj1[k]) for k, v in model.projector.state_dict().items())
    base = {k.replace(".base_layer.", "."): v for k, v in model.base_llm().state_dict().items() if "lora_" not in k}
    assert all(torch.equal(base[k], v) for k, v in llm1.items())
    fresh = LMMVQA.build(llm, stage2, cfg.prompts, tok, feature_info(feats))  # without init: a random projector
    assert not torch.equal(fresh.projector.proj.weight, proj1["proj.weight"])

    res = train(cfg, "exp", "results/models/exp", max_steps=2, progress=False)
    assert res["step"] == 2
    out = paths.model_dir("exp")
    meta = json.loads((out / "lmmvqa.json").read_text())
    assert meta["init_from"]["path"] == str(s1) and meta["stage"] == "final"
    assert meta["lora"]["r"] == 4 and meta["train_llm"] is False and meta["llm_weights"] == "llm+adapter"
    assert "continued from `results/models/exp.stage1`" in (out / "README.md").read_text()
    llm2 = load_file(str(out / "llm" / "model.safetensors"))
    assert llm2.keys() == llm1.keys() and all(torch.equal(llm2[k], llm1[k]) for k in llm1)  # frozen under LoRA
    proj2 = load_file(str(out / "projector.safetensors"))
    assert not torch.equal(proj2["proj.weight"], proj1["proj.weight"])  # and stage 2 trained it further
    again = LMMVQA.from_pretrained(out)
    assert [n for n, _ in again.llm.named_parameters() if "lora_" in n]
    assert all(torch.equal(again.projector.state_dict()[k], v) for k, v in proj2.items())


def test_retrained_stage1_restarts_stage2_checkpoints(two_stage, tmp_path):
    from pipeline.training.checkpoints import run_fingerprint

    a, b = tmp_path / "a", tmp_path / "b"
    for d, text in ((a, '{"x": 1}'), (b, '{"x": 2}')):
        d.mkdir()
        (d / "lmmvqa.json").write_text(text)
    s = resolve.of(two_stage)
    exp = s.experiment("exp")
    ids = {run_fingerprint(exp.run_training(), exp, s.models["llm"], [], 5, 1, init) for init in (None, a, b)}
    assert len(ids) == 3


def test_stage1_with_every_fold_runs_per_fold():
    """folds: all + stage1: each fold's stage 2 continues from that fold's stage 1, the model on every fold
    from the stage 1 on every fold; init_from a folds: all experiment goes fold by fold (same k)."""
    from pipeline.core import paths

    base = {"train": ["d:train"], "test": ["d:test"], "folds": "all"}
    cfg = _cfg({"cv": {**base, "stage1": {"max_steps": 1}}, "next": {**base, "init_from": "cv"},
                "one": {"train": ["d:train"], "test": ["d:test"], "init_from": "cv"}})
    assert str(init_model_dir(cfg, "cv", None, 3)) == "results/models/cv.stage1/fold3"
    assert str(init_model_dir(cfg, "cv", None, paths.FULL_MODEL)) == "results/models/cv.stage1/all"
    assert init_model_dir(cfg, "cv", 1, 3) is None
    assert str(init_model_dir(cfg, "next", None, 2)) == "results/models/cv/fold2"
    with pytest.raises(UserError, match=r"experiments\.one\.init_from: 'cv' runs every fold .*must run the same folds"):
        check_experiments(cfg)
    del cfg["experiments"]["one"]
    check_experiments(cfg)


def test_overlapping_test_selectors_are_an_error_unless_asked_for():
    from pipeline.prompts import selectors

    def test_selectors(cfg, name):
        return selectors.test_selectors(resolve.of(cfg).experiment(name))

    def unseen_tests(cfg, name):
        s = resolve.of(cfg)
        return selectors.unseen_tests(s.experiment(name), s.datasets)

    base = {"train": ["d:train"]}
    cfg = _cfg({"e": {**base, "test": ["d:test", "d:all"]}, "dup": {**base, "test": ["d:test", "d:test"]},
                "ok": {**base, "test": ["d:test", "d:all"], "allow_test_overlap": True},
                "apart": {**base, "test": ["d:test", "d:train"]}})
    with pytest.raises(UserError, match=r"'d:test' and 'd:all' share videos; set experiments\.e\.allow_test_overlap"):
        test_selectors(cfg, "e")
    with pytest.raises(UserError, match="'d:test' is listed twice"):
        test_selectors(cfg, "dup")
    assert test_selectors(cfg, "ok") == ["d:test", "d:all"] and test_selectors(cfg, "apart") == ["d:test", "d:train"]
    assert unseen_tests(cfg, "ok") == ["d:test"]  # d:all holds training videos: not what the model is worth
