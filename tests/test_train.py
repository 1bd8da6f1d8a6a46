"""Training from synthetic feature stores: overfit, save/load, kill-and-resume, DDP, the CLI outputs.

`make_workspace` (also used by tests/test_lmm.py and benchmarks) writes, under a working folder, a
manifest, prompt shards, a tiny tokenizer and Zarr feature stores whose features carry a known
quality signal (the MOS is a linear function of a direction added to every token).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

SMALL_LLM = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
             "num_key_value_heads": 2}


def synthetic_features(rng, q: float, T: int, W: int, M: int, direction_s, direction_m, n_kf=None, n_sec=None):
    n_kf = n_kf or int(rng.integers(2, 5))
    n_sec = n_sec or int(rng.integers(2, 5))
    spatial = rng.normal(size=(n_kf, T, W)) + 2.0 * (q - 0.5) * direction_s
    motion = rng.normal(size=(n_sec, M)) + 2.0 * (q - 0.5) * direction_m
    return spatial.astype(np.float16), motion.astype(np.float16)


def make_workspace(root: Path, n_videos: int = 20, T: int = 8, W: int = 32, M: int = 24, shard_size: int = 12,
                   training: dict | None = None, llm: dict | None = None, k: int = 5, seed: int = 0,
                   missing: int = 0, chunk_mb: float = 0.05) -> dict:
    """Write results/manifest, results/prompts, results/tokenizer and cache/features under `root`
    (paths are relative: run with cwd = root). Returns the validated config."""
    from pipeline.core import paths, resolve
    from pipeline.core.config import validate
    from pipeline.core import resolve
    from pipeline.features.stores.store_writer import StoreWriter
    from pipeline.model.tokenizer import train_tokenizer, write_tokenizer
    from pipeline.prompts.shards import build_prompts, read_prompts

    root = Path(root)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        cfg = validate({
            "datasets": {"syn": {"format": "generic", "labels": "labels.csv", "split": {"scheme": "kfold", "k": k, "seed": 0}}},
            "features": {"shard_size": shard_size},
            "models": {"preset": "tiny", "llm": {"config": dict(llm if llm is not None else SMALL_LLM)}},
            "training": dict(training or {}),
            "experiments": {"exp": {"train": ["syn:train"], "test": ["syn:test"], "holdout_fold": 0}},
        })
        rng = np.random.default_rng(seed)
        q = rng.uniform(0.02, 0.98, size=n_videos)
        mos = 100 * q
        p33, p66 = np.percentile(mos, [33, 66])
        ids = [f"vid{i:03d}" for i in range(n_videos)]
        manifest = pd.DataFrame({
            "id": ids, "path": [f"{v}.mp4" for v in ids], "row": np.arange(1, n_videos + 1), "mos_raw": mos, "mos": mos,
            "level": ["poor" if m <= p33 else "fair" if m <= p66 else "good" for m in mos],
            "split": "kfold", "fold": [i % k for i in range(n_videos)], "shard": [i // shard_size for i in range(n_videos)],
            "size_bytes": 1000, "fingerprint": "x"})
        paths.manifest("syn").parent.mkdir(parents=True, exist_ok=True)
        manifest.to_csv(paths.manifest("syn"), index=False)
        build_prompts(resolve.of(cfg).prompts, resolve.of(cfg).dataset("syn"), paths.manifest("syn"),
                      paths.prompts_dir("syn"))
        write_tokenizer(train_tokenizer(read_prompts([paths.prompts_dir("syn")]), cfg["prompts"]["answer_format"]),
                        paths.tokenizer_dir())
        settings = resolve.of(cfg).features.hash
        ds = rng.normal(size=(T, W)) * 0.5 + 1.0
        dm = rng.normal(size=M)
        for shard in sorted(manifest["shard"].unique()):
            rows = manifest[manifest["shard"] == shard]
            attrs = {"vision": {"source": None, "config": {}, "tokens": T, "width": W},
                     "motion": {"source": None, "config": {}, "dim": M}}
            with StoreWriter(paths.store("syn", settings, shard), (T, W), M, attrs=attrs, chunk_mb=chunk_mb) as w:
                for i, vid in zip(rows.index, rows["id"]):
                    if 1 <= i <= missing:  # fold 1: a training video
                        w.add_failure(vid, f"{vid}.mp4", "decode", "synthetic failure")
                        continue
                    s, m = synthetic_features(rng, q[i], T, W, M, ds, dm)
                    w.add(vid, s, m)
        return cfg
    finally:
        os.chdir(cwd)


def _weights(folder: Path) -> dict:
    out = {f"projector.{k}": v for k, v in load_file(str(folder / "projector.safetensors")).items()}
    if (folder / "llm" / "model.safetensors").exists():
        out.update({f"llm.{k}": v for k, v in load_file(str(folder / "llm" / "model.safetensors")).items()})
    return out


def _same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    cfg = make_workspace(tmp_path, training={"batch_size": 4, "checkpoint_every": 2, "val_fraction": 0.2,
                                             "epochs": 1, "lr": 0.003}, missing=1)
    monkeypatch.chdir(tmp_path)
    return cfg


def test_split_validation_is_seeded_and_by_video():
    from pipeline.training.data import split_validation

    samples = [{"dataset": "d", "id": f"v{i}", "type": t} for i in range(20) for t in ("score", "level")]
    tr1, va1 = split_validation(samples, 0.2, 0)
    tr2, va2 = split_validation(samples, 0.2, 0)
    assert va1 == va2 and len({s["id"] for s in va1}) == 4 and len(va1) == 8
    assert not {s["id"] for s in tr1} & {s["id"] for s in va1}
    assert split_validation(samples, 0.2, 1)[1] != va1


def test_epoch_batches_cover_and_split_across_ranks():
    from pipeline.training.data import epoch_batches

    one = [i for b in epoch_batches(10, 3, 0, 0) for i in b]
    assert sorted(one) == list(range(10))
    r0 = epoch_batches(11, 2, 0, 1, rank=0, world=2)
    r1 = epoch_batches(11, 2, 0, 1, rank=1, world=2)
    assert len(r0) == len(r1)
    assert set(i for b in r0 + r1 for i in b) == set(range(11))
    assert epoch_batches(10, 3, 0, 0) != epoch_batches(10, 3, 0, 1)


def test_train_writes_model_folder_and_skips_failed(workspace, tmp_path):
    from pipeline.core import paths
    from pipeline.model.lmm import LMMVQA
    from pipeline.core import resolve
    from pipeline.training.train import train

    res = train(resolve.of(workspace), "exp", tmp_path / "model", max_steps=3, progress=False)
    out = tmp_path / "model"
    for name in ("lmmvqa.json", "projector.safetensors", "llm/config.json", "tokenizer/tokenizer.json",
                 "train_log.csv", "loss.png", "README.md"):
        assert (out / name).exists(), name
    log = pd.read_csv(out / "train_log.csv")
    assert list(log.columns) == ["step", "loss", "lr", "samples_per_s"] and list(log["step"]) == [1, 2, 3]
    meta = json.loads((out / "lmmvqa.json").read_text())
    assert meta["vision_tokens"] == 8 and meta["vision_width"] == 32 and meta["motion_dim"] == 24
    assert meta["llm_weights"] == "llm" and meta["train_llm"] is True  # auto: random-init LLM trains
    assert "validation" in meta and res["validation"]["n_videos"] >= 1
    # the records hold the config's blocks as written (what `lmmvqa score` rebuilds inputs from)
    assert meta["extraction"] == {k: workspace[k] for k in ("models", "sampling", "features")}
    assert meta["evaluation"] == workspace["evaluation"] and meta["prompts_seed"] == workspace["prompts"]["seed"]
    assert meta["training"] == {k: v for k, v in workspace["training"].items() if k != "lora"}
    card = (out / "README.md").read_text()
    assert "skipped" in card and '"syn": 1' in card  # the failed video is counted
    assert "- LLM: Llama-architecture LLM (width 64, 1 layer): trained from scratch here (random init from the " \
           "preset's config (seed 0))" in card
    assert "- vision: not recorded" in card  # these synthetic stores carry no provenance records
    assert meta["provenance"]["llm"] == {"arch": "llama", "detail": "width 64, 1 layer", "trained": "all",
                                         "weights": {"kind": "random_init", "seed": 0}, "continued_from": None}
    # checkpoints were written in cache/checkpoints/<exp>
    assert list(paths.checkpoint_dir("exp").glob("step-*"))
    model = LMMVQA.from_pretrained(out)
    assert model.config["llm_weights"] == "llm"


def test_kill_and_resume_equals_uninterrupted(workspace, tmp_path):
    from pipeline.core import resolve
    from pipeline.training.train import train

    full = train(resolve.of(workspace), "exp", tmp_path / "a", max_steps=5, checkpoint_dir=tmp_path / "ck_a",
                 progress=False)
    part = train(resolve.of(workspace), "exp", tmp_path / "b", max_steps=5, checkpoint_dir=tmp_path / "ck_b",
                 stop_after=4, progress=False)
    assert part["stopped"] and not (tmp_path / "b").exists()
    # the "killed" run left checkpoints at steps 2 and 4; pretend it died before step 4 was saved
    import shutil

    shutil.rmtree(tmp_path / "ck_b" / "step-0000004")
    resumed = train(resolve.of(workspace), "exp", tmp_path / "b", max_steps=5, checkpoint_dir=tmp_path / "ck_b",
                    resume=True, progress=False)
    assert resumed["digest"] == full["digest"]
    assert _same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    la = pd.read_csv(tmp_path / "a" / "train_log.csv")
    lb = pd.read_csv(tmp_path / "b" / "train_log.csv")
    assert list(la["step"]) == list(lb["step"]) and np.allclose(la["loss"], lb["loss"])


def test_resume_ignores_checkpoints_of_another_run(workspace, tmp_path, capsys):
    """The workflow always passes --resume; a checkpoint left by a run with other settings must not
    be continued (it would silently mix two trainings)."""
    import copy

    from pipeline.core import resolve
    from pipeline.training.train import train

    part = train(resolve.of(workspace), "exp", tmp_path / "x", max_steps=5, checkpoint_dir=tmp_path / "ck",
                 stop_after=4, progress=False)
    assert part["stopped"]
    other = copy.deepcopy(workspace)
    other["training"]["lr"] = workspace["training"]["lr"] * 2
    fresh = train(resolve.of(other), "exp", tmp_path / "y", max_steps=5, checkpoint_dir=tmp_path / "ck2",
                  progress=False)
    resumed = train(resolve.of(other), "exp", tmp_path / "z", max_steps=5, checkpoint_dir=tmp_path / "ck", resume=True,
                    progress=False)
    assert "belong to another run" in capsys.readouterr().out
    assert resumed["digest"] == fresh["digest"]


def test_train_cli(workspace, tmp_path):
    from pipeline.cli import main

    (tmp_path / "cfg.yaml").write_text(json.dumps(workspace))
    assert main(["train", "--config", "cfg.yaml", "--experiment", "exp", "--out", "results/models/exp",
                 "--max-steps", "1", "--no-progress"]) == 0
    assert (tmp_path / "results/models/exp/lmmvqa.json").exists()
    assert main(["train", "--config", "cfg.yaml", "--experiment", "nope", "--out", "x", "--max-steps", "1"]) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_equal_weights(workspace, tmp_path):
    (tmp_path / "cfg.yaml").write_text(json.dumps(workspace))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [PY, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "pipeline.cli", "train", "--config", "cfg.yaml",
           "--experiment", "exp", "--out", "results/models/ddp", "--max-steps", "2", "--no-progress"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import re

    found = re.findall(r"rank (\d)/2: step 2, final weights sha1 ([0-9a-f]{16})", proc.stdout + proc.stderr)
    digests = dict(found)
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"], digests
    assert (tmp_path / "results/models/ddp/lmmvqa.json").exists()


# ------------------------------------------------------------------ the pieces of a run

class _Answers:
    """A stand-in model whose greedy answers are given per question."""

    def __init__(self, answers: dict):
        self.answers = answers

    def generate(self, videos, questions, max_new_tokens):
        assert videos["spatial"].shape[0] == len(questions)
        return [self.answers[q] for q in questions]

    def prob_scores(self, videos, questions):  # the probability score: the answer's number, or 50
        assert videos["spatial"].shape[0] == len(questions)
        return np.array([float(self.answers[q]) if self.answers[q][0].isdigit() else 50.0 for q in questions])


class _Features:
    def spatial(self, vid):
        return np.zeros((2, 3, 4), np.float32)

    def motion(self, vid):
        return np.zeros((2, 5), np.float32)


def test_validate_reports_the_metrics_module_numbers():
    """SRCC / PLCC (raw) of the valid score answers as scipy computes them (through pipeline.core.metrics),
    invalid answers counted, level accuracy; null when undefined."""
    from scipy import stats

    from pipeline.training.validation import validate

    rng = np.random.default_rng(0)
    mos = rng.uniform(0, 100, 12).round(3)
    pred = (mos + rng.normal(0, 20, 12)).clip(0, 100).round(3)
    samples = [{"dataset": "d", "id": f"v{i}", "type": "score", "question": f"q{i}", "mos": m}
               for i, m in enumerate(mos)]
    samples += [{"dataset": "d", "id": "v0", "type": "level", "question": "l0", "level": "good"},
                {"dataset": "d", "id": "v1", "type": "level", "question": "l1", "level": "poor"},
                {"dataset": "d", "id": "bad", "type": "score", "question": "qx", "mos": 50.0}]
    answers = {f"q{i}": f"{p:.3f}" for i, p in enumerate(pred)} | {"l0": "good", "l1": "fair", "qx": "n/a"}
    out = validate(_Answers(answers), samples, {"d": _Features()}, batch_size=5)
    assert out["srcc"] == float(stats.spearmanr(pred, mos)[0])
    assert out["plcc_raw"] == float(stats.pearsonr(pred, mos)[0])
    assert (out["n_videos"], out["score_valid"], out["score_invalid"], out["level_accuracy"]) == (13, 12, 1, 0.5)
    # the probability score of every score question, the unparsable one included
    assert out["prob_srcc"] == pytest.approx(float(stats.spearmanr([*pred, 50.0], [*mos, 50.0])[0]))
    flat = validate(_Answers({f"q{i}": "50" for i in range(12)}), samples[:12], {"d": _Features()})
    assert flat["srcc"] is None and flat["plcc_raw"] is None and flat["level_accuracy"] is None
    assert validate(None, [], {})["n_videos"] == 0


def test_checkpoint_round_trip(tmp_path):
    """save_checkpoint -> latest_checkpoint -> load_checkpoint restores weights, optimizer, step,
    log rows and the RNG states; a folder without a complete state is skipped."""
    import random

    import torch

    from pipeline.training.checkpoints import checkpoint_run, latest_checkpoint, load_checkpoint, save_checkpoint
    from pipeline.training.train import lr_lambda

    def parts(seed):
        torch.manual_seed(seed)
        lin = torch.nn.Linear(3, 2)
        opt = torch.optim.AdamW(lin.parameters(), lr=0.1)
        return lin, opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(10, 2))

    lin, opt, sched = parts(0)
    lin(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, lin, opt, sched, [{"step": step}])
    draws = (torch.rand(1).item(), np.random.rand(), random.random())
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-0000002", "step-0000003"]  # keep 2
    (tmp_path / "step-0000004").mkdir()  # a step folder without state.json (killed mid-write)
    last = latest_checkpoint(tmp_path)
    assert last.name == "step-0000003" and checkpoint_run(tmp_path) is None
    lin2, opt2, sched2 = parts(1)
    assert load_checkpoint(last, lin2, opt2, sched2) == (3, [{"step": 3}])
    assert torch.equal(lin2.weight, lin.weight) and sched2.last_epoch == sched.last_epoch
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert (torch.rand(1).item(), np.random.rand(), random.random()) == draws


def test_model_folder_loss_plot_is_the_report_figure(tmp_path):
    """loss.png of a model folder is the report's training-loss figure of the same log, byte for
    byte; an empty log still gives a figure."""
    import io

    from pipeline.training.model_folder import plot_loss, write_log
    from pipeline.training.plots import loss_figure

    rows = [{"step": i + 1, "loss": 3.0 / (i + 1) + 0.01 * (i % 3), "lr": 1e-3, "samples_per_s": 9.5}
            for i in range(30)]
    plot_loss(rows, tmp_path / "loss.png", "exp: training loss")
    write_log(rows, tmp_path / "train_log.csv")
    buf = io.BytesIO()
    loss_figure(pd.read_csv(tmp_path / "train_log.csv"), "exp: training loss").savefig(buf, format="png")
    assert (tmp_path / "loss.png").read_bytes() == buf.getvalue()
    plot_loss([], tmp_path / "empty.png", "no steps")
    assert (tmp_path / "empty.png").read_bytes()[:4] == b"\x89PNG"


def test_training_reads_the_stores_it_is_given(tmp_path, monkeypatch):
    """The train rule hands its declared stores to the command (--stores): each dataset reads the ones
    in its store folder, the same data as finding them from the manifest; stores of no training
    dataset are an error naming the folder expected."""
    from pipeline.core import paths, resolve
    from pipeline.core.errors import UserError
    from pipeline.training.data import experiment_data

    s = resolve.of(make_workspace(tmp_path, n_videos=20, shard_size=8))
    monkeypatch.chdir(tmp_path)
    folder = paths.store_dir("syn", s.features.hash)
    stores = sorted(str(p) for p in folder.glob("shard-*.zarr"))
    assert len(stores) == 3

    def data(given=None):
        return experiment_data(s.experiment("exp"), s.datasets, s.features.hash, given)

    found, given = data(), data(stores)
    assert given["stores"] == found["stores"] == {"syn": stores}
    assert given["samples"] == found["samples"] and len(given["samples"]) > 0
    one = data(stores[:1])  # only what was declared is read
    assert one["stores"] == {"syn": stores[:1]} and len(one["samples"]) < len(found["samples"])
    with pytest.raises(UserError, match=str(folder)):
        data(["cache/features/other/abc/shard-00000.zarr"])


def test_training_leaves_out_videos_sharing_content_with_the_test_fold(tmp_path, monkeypatch):
    """exclude_shared: source drops exactly the training videos whose source a test video has, and the
    model card counts them."""
    from pipeline.core import paths, resolve
    from pipeline.training.data import experiment_data

    cfg = make_workspace(tmp_path, n_videos=20)
    monkeypatch.chdir(tmp_path)
    manifest = pd.read_csv(paths.manifest("syn"))
    manifest["source"] = [f"s{i // 2}" for i in range(20)]  # test fold 0 = videos 0, 5, 10, 15
    manifest.to_csv(paths.manifest("syn"), index=False)

    def experiment_data_of(cfg):
        s = resolve.resolve(cfg)
        return experiment_data(s.experiment("exp"), s.datasets, s.features.hash)

    before = {s["id"] for s in experiment_data_of(cfg)["samples"]}
    cfg["experiments"]["exp"]["exclude_shared"] = "source"
    data = experiment_data_of(cfg)
    after = {s["id"] for s in data["samples"]}
    assert before - after == {"vid001", "vid004", "vid011", "vid014"}  # sources s0, s2, s5, s7
    assert data["excluded_shared"] == {"column": "source", "videos": 4, "values": ["s0", "s2", "s5", "s7"]}
