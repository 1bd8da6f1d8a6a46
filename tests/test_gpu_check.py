"""benchmarks/gpu_check.sh --small: the GPU proof script runs on CPU through the real workflow, so it
cannot rot where no GPU is lent; its JSON holds every stage's figures."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO


@pytest.mark.slow
def test_gpu_check_small_runs_every_stage(tmp_path):
    out = tmp_path / "x.json"
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--small", "--out", str(out),
                           "--workdir", str(tmp_path / "work")],
                          capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    res = json.loads(out.read_text())
    assert res["mode"] == "small" and res["device"] == "cpu" and res["videos"] == 6
    assert set(res) >= {"extraction", "stage1", "stage2", "evaluation", "score"}

    ex = res["extraction"]
    assert ex["videos"] == 6 and ex["shards"] == 1
    assert ex["total_s"] > 0 and ex["videos_per_s"] > 0 and ex["videos_per_s_loop"] >= ex["videos_per_s"]
    assert 0 <= ex["decode_wait_fraction"] and 0 < ex["encoder_busy_fraction"]
    assert ex["decode_bound"] == (ex["decode_wait_s"] > ex["encode_s"])
    assert ex["peak_gpu_gib"] is None and ex["peak_rss_gib"] > 0  # CPU run: peak RSS, no GPU figure

    s1, s2 = res["stage1"], res["stage2"]
    assert (s1["steps"], s2["steps"]) == (3, 3)  # the --small defaults
    assert s1["batch_size"] == s2["batch_size"] == 4
    assert not s1["lora"] and s2["lora"]
    assert s2["trainable_params"] > s1["trainable_params"]  # stage 2 adds the LoRA weights
    for s in (s1, s2):
        assert s["s_per_step_median"] > 0 and s["train_loop_s"] > 0 and s["job_wall_s"] >= s["train_loop_s"]
        assert s["peak_rss_gib"] > 0 and s["dtype"] == "float32" and s["device"] == "cpu"
    assert s1["init_from"] is None
    assert s2["init_from"]["path"].endswith("results/models/gpucheck.stage1")
    assert s2["continued_from_stage1"] is True  # its init projector is stage 1's file (sha1)

    # two selectors of one dataset, each evaluated on its own and reported in its own row
    ev = res["evaluation"]
    assert list(ev) == ["demo:test", "demo:train"] and [e["test"] for e in ev.values()] == list(ev)
    assert 1 <= ev["demo:test"]["n"] < 6 and ev["demo:test"]["n"] + ev["demo:train"]["n"] == 6  # the 2 folds
    assert all(e["job_wall_s"] > 0 and e["metrics"]["invalid"] == 0 for e in ev.values())
    assert res["report_sections"] == ["demo:test", "demo:train"]
    # the paper recipe (config/paper-lsvq.yaml): its stage learning rates, and the plan's estimate beside each stage
    gc = _gpu_check_module()
    _, paper_stage1, paper_stage2 = gc.paper_recipe()
    assert s1["lr"] == paper_stage1["lr"] and s2["lr"] == paper_stage2["lr"]
    assert s1["plan_estimate_gib"] > 0 and s2["plan_estimate_gib"] > 0 and res["evaluation_plan_estimate_gib"] > 0

    sc = res["score"]
    assert len(sc["lines"]) == 1
    line = sc["lines"][0]
    assert Path(line["video"]).name == Path(sc["video"]).name and "error" not in line
    assert 0 <= line["score"] <= 100 and line["level"] in ("good", "fair", "poor")
    assert abs(line["p_good"] + line["p_fair"] + line["p_poor"] - 1) < 0.01
    assert sc["job_wall_s"] > 0

    commands = [c["command"] for c in res["commands"]]
    for c in ("demo-data", "manifest", "extract", "prompts", "tokenizer", "train", "launch", "evaluate", "score"):
        assert c in commands
    assert all(c["rc"] == 0 for c in res["commands"])
    assert "stage 2 (LoRA)" in proc.stdout and str(out) in proc.stdout


def _gpu_check_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_run_config_is_paper_shaped_two_stage_and_valid():
    """The GPU run's config (not run here): valid against the schema, paper shapes, bf16 on CUDA, batch 16."""
    from pipeline.core.config import validate
    from pipeline.core import resolve
    from pipeline.core import resolve
    from pipeline.core.settings import as_dict
    from pipeline.training.runs import continues_from

    gc = _gpu_check_module()
    cfg = validate(gc.make_config(gc.parse_args([])), "gpu_check")
    assert cfg["device"] == "cuda" and cfg["models"]["preset"] == "tiny"
    vision, motion, llm = (resolve.of(cfg).models[r].as_dict() for r in ("vision", "motion", "llm"))
    assert vision["config"]["hidden_size"] == 1024 and vision["config"]["num_hidden_layers"] == 24
    assert vision["config"]["patch_size"] == 14 and vision["config"]["projection_dim"] == 768
    assert motion["config"]["model_depth"] == 50 and motion["config"]["input_size"] == 224
    assert (llm["config"]["hidden_size"], llm["config"]["intermediate_size"], llm["config"]["num_hidden_layers"],
            llm["config"]["num_key_value_heads"]) == (4096, 14336, 32, 8)
    assert llm["source"] is None and llm["dtype"] == "bfloat16"
    assert cfg["features"]["decode_workers"] >= 2  # decoders feeding the GPU, not the default 2 threads only
    plan = resolve.resolve(cfg)
    exp = plan.experiment(gc.EXPERIMENT)
    s1, s2 = as_dict(exp.run_training(1)), as_dict(exp.run_training())
    assert not s1["lora"]["enabled"] and s2["lora"]["enabled"]
    paper = yaml.safe_load((REPO / "config" / "paper-lsvq.yaml").read_text())
    assert (s1["lr"], s2["lr"], s2["llm_lr"]) == (1.0e-3, 2.0e-5, 2.0e-4) == (
        paper["experiments"]["lsvq_cross"]["stage1"]["lr"], paper["experiments"]["lsvq_cross"]["training"]["lr"],
        paper["experiments"]["lsvq_cross"]["training"]["llm_lr"])
    assert s2["lora"]["r"] == paper["training"]["lora"]["r"] and cfg["experiments"][gc.EXPERIMENT]["test"] == list(gc.TESTS)
    assert s1["batch_size"] == s2["batch_size"] == 16 and s1["dtype"] == "bfloat16" and not s2["train_llm"]
    assert str(continues_from(exp, plan.experiments)).endswith(f"{gc.EXPERIMENT}.stage1")
    assert gc.make_config(gc.parse_args(["--llm-layers", "4"]))["models"]["llm"]["config"]["num_hidden_layers"] == 4
