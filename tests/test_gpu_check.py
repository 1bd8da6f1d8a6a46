"""benchmarks/gpu_check.sh --small: the GPU proof script runs on CPU through the real workflow, so it
cannot rot where no GPU is lent; its JSON holds every stage's figures."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_gpu_check_small_runs_every_stage(tmp_path):
    out = tmp_path / "x.json"
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--small", "--out", str(out),
                           "--workdir", str(tmp_path / "work")],
                          capture_output=True, text=True, env=env, timeout=600)
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

    ev = res["evaluation"]
    assert 1 <= ev["n"] < 6  # the held-out fold of the 6 videos
    assert ev["job_wall_s"] > 0 and ev["metrics"]["invalid"] == 0

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
