"""`lmmvqa plan`: jobs per stage, disk per store and GPU memory per stage, from the config; the training
memory estimate checked against the tiny preset's measured peak on the CPU."""
from __future__ import annotations

import importlib.util
import json

import pytest
import yaml
from conftest import REPO

from pipeline import plan
from pipeline.cli import main as cli_main
from pipeline.core import paths, resolve

PAPER = REPO / "config" / "paper-lsvq.yaml"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_plan", REPO / "benchmarks" / "bench_plan.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("lora, checkpointing", [(False, False), (True, True)])
def test_training_estimate_is_within_30_percent_of_the_measured_peak(lora, checkpointing):
    bench = _bench()
    row = bench.compare(layers=2, batch=16, lora=lora, checkpointing=checkpointing)
    assert row["trainable_params"][0] == row["trainable_params"][1]  # the plan counts the same parameters
    assert 0.7 <= row["ratio"] <= 1.3, (row["measured"]["total"], row["estimate"]["total"])


def test_paper_plan_jobs_and_memory_per_stage(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no manifests or label files here: videos unknown, shapes from the table
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    p = plan.plan(resolve.load(PAPER))
    sh = p["shapes"]
    assert (sh["vision"]["tokens"], sh["vision"]["width"], sh["motion"]["dim"]) == (257, 1024, 2304)
    assert 8.0e9 < sh["llm"]["params"] < 8.1e9 and 300e6 < sh["vision"]["params"] < 310e6
    assert p["sequence"]["visual"] == 258
    assert sh["projector_activations"] == 14 * 1024  # the paper's projector: one layer at the vision width
    jobs = p["jobs"]
    assert (jobs["train (stage 1)"], jobs["train"], jobs["evaluate"], jobs["aggregate"]) == (1, 1, 5, 0)
    assert jobs["extract"] is None  # label files absent: said, not guessed
    runs = {(t["stage"], t["checkpointing"]): t for t in p["training"]}
    assert set(runs) == {(1, False), (1, True), (2, False), (2, True)}
    s1, s2 = runs[(1, False)], runs[(2, False)]
    assert s1["mode"] == "frozen LLM" and s2["mode"] == "LoRA"
    gib = 2 ** 30
    assert 14.5 * gib < s1["parts"]["weights"] < 15.5 * gib  # 8B in bf16
    # LoRA r=16 on q, k, v, o of 32 layers (k, v: 8 KV heads of 128 = 1024 wide)
    assert s2["trainable_params"] - s1["trainable_params"] == 32 * 16 * (2 * (4096 + 4096) + 2 * (4096 + 1024))
    for stage in (1, 2):
        assert runs[(stage, True)]["total"] < runs[(stage, False)]["total"]
    assert runs[(2, False)]["configured"] and not runs[(2, True)]["configured"]
    assert p["evaluation"]["parts"]["kv_cache"] > 0 and p["extraction"]["total"] < p["evaluation"]["total"]


def test_jobs_and_disk_from_the_manifest_and_probe_tables(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    s = resolve.resolve({"datasets": {"d": {"format": "generic", "labels": "l.csv", "split": {"k": 2}}},
                         "models": {"preset": "tiny"}, "features": {"shard_size": 2},
                         "sampling": {"max_keyframes": 4, "max_seconds": 3},
                         "experiments": {"cv": {"train": ["d:train"], "test": ["d:test", "d:all"], "folds": "all",
                                                "allow_test_overlap": True, "stage1": {"max_steps": 1}}}})
    m = paths.manifest("d")
    m.parent.mkdir(parents=True)
    m.write_text("id,shard\na,0\nb,0\nc,1\n")
    probe = paths.probe("d", 0)
    probe.parent.mkdir(parents=True)
    probe.write_text("id,duration\na,2.5\nb,10.0\nc,1.0\n")
    p = plan.plan(s, text=20, vocab=300)
    jobs = p["jobs"]
    assert (jobs["probe"], jobs["extract"]) == (2, 2)
    # folds: all, k=2: each fold + the model on every fold, both stages; 2 selectors x 2 folds; 2 aggregates
    assert (jobs["train (stage 1)"], jobs["train"], jobs["evaluate"], jobs["aggregate"]) == (3, 3, 4, 2)
    # key frames: ceil(2.5)=3, min(4, 10)=4, 1 -> 8 x 197 tokens x 128 x 2 bytes; motion 3 + 3 + 1 seconds x 576 x 2
    assert p["disk"]["d"]["spatial"] == 8 * 197 * 128 * 2 and p["disk"]["d"]["motion"] == 7 * 576 * 2
    assert p["sequence"]["total"] == 198 + 20


def test_plan_command_prints_and_writes_json(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(yaml.safe_load(PAPER.read_text())))
    assert cli_main(["plan", "--config", "c.yaml", "--json", "p.json"]) == 0
    out = capsys.readouterr().out
    assert "train (stage 1)" in out and "checkpointing on" in out and "checkpointing off" in out
    assert json.loads((tmp_path / "p.json").read_text())["jobs"]["evaluate"] == 5
    # what each rule family's jobs ask a cluster for: the table the rules read (pipeline/core/resources.py)
    cluster = {f["family"]: f for f in json.loads((tmp_path / "p.json").read_text())["cluster"]}
    assert {k: cluster["train"][k] for k in ("partition", "gpu", "threads", "mem_mb", "runtime")} == {
        "partition": "gpu", "gpu": 1, "threads": 8, "mem_mb": 64000, "runtime": 1440}
    assert "train_stage1_fold" in cluster["train"]["rules"] and cluster["light"]["partition"] == "cpu"
    assert "  train     gpu partition, 1 GPU, 8 threads, 64000 MB, 1440 min: train_stage1, " in out


def test_training_runs_count_the_projector_their_recipe_builds():
    """The offline recipe's projector is 256 wide with dropout: a run trains its parameters beside the small
    LLM's (the plan counted the paper's projector, as wide as the vision tokens, before)."""
    from pipeline.core.config import load_config
    from pipeline.core.settings import as_dict
    from pipeline.model.projector import Projector, projector_settings

    s = resolve.of(load_config(str(REPO / "config.yaml")))
    p = plan.plan(s)
    sh = p["shapes"]
    built = sum(t.numel() for t in Projector(sh["vision"]["width"], sh["motion"]["dim"], sh["llm"]["hidden"],
                                             settings=projector_settings(as_dict(s.training))).parameters())
    paper = sum(t.numel() for t in Projector(sh["vision"]["width"], sh["motion"]["dim"], sh["llm"]["hidden"]).parameters())
    assert projector_settings(as_dict(s.training))["width"] == 256 and built < paper
    assert [t["mode"] for t in p["training"]] == ["full LLM"] * 2  # checkpointing off / on
    assert all(t["trainable_params"] == built + sh["llm"]["params"] for t in p["training"])
    assert sh["projector_params"] == built
    # its activations too: 2W inputs, the 256-wide Linear, (4 + 2 m) 256 per layer (the paper's would be 14W)
    ps = projector_settings(as_dict(s.training))
    w = sh["vision"]["width"]
    assert sh["projector_activations"] == 2 * w + 256 + ps["layers"] * int((4 + 2 * ps["mlp_ratio"]) * 256) < 14 * w


def test_plan_before_the_tokenizer_is_trained_reads_no_hub(monkeypatch, tmp_path):
    """No tokenizer folder yet: the plan takes a few hundred tokens, and never hands the missing folder's name
    to the hub, which looked it up online as a repository id (46 s of retries without a network)."""
    from pipeline.core.config import load_config
    from pipeline.model import tokenizer

    s = resolve.of(load_config(str(REPO / "config.yaml")))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    looked_up = []

    def lookup(source):
        looked_up.append(str(source))
        raise OSError(f"{source} is not a local folder or a hub repository")  # what transformers says, after retries
    monkeypatch.setattr(tokenizer, "load_tokenizer", lookup)
    assert plan.model_shapes(s.models, s.features.sampling)["llm"]["vocab"] == 512 and looked_up == []
    trained = tmp_path / paths.tokenizer_dir()
    trained.mkdir(parents=True)
    monkeypatch.setattr(tokenizer, "load_tokenizer", lambda source: ["token"] * 300)
    assert plan.model_shapes(s.models, s.features.sampling)["llm"]["vocab"] == 300
