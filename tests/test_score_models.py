"""`lmmvqa score` with the models a user trains, through the commands the workflow runs: a model on
features of a quality-adapted encoder (with a quality prior), an ensemble, and evaluation settings changed
after training. Each test scores videos as a user does and compares with what `lmmvqa evaluate` gave."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import write_synth_variants, write_video
from pipeline.cli import main
from pipeline.core import paths, resolve
from pipeline.core.config import load_config

SMALL_LLM = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
             "num_key_value_heads": 2}
CONFIG = {
    "datasets": {
        # the adapter's training videos (synth variants; their labels written below)
        "syn": {"format": "synth", "references": "refs", "synth": {"families": {"x264": {"levels": 1}}}},
        "d": {"format": "generic", "labels": "labels.csv", "videos": "videos"},
    },
    "models": {"preset": "tiny", "llm": {"config": SMALL_LLM},
               "vision": {"adapted": {"datasets": ["syn"], "steps": 3, "dim": 4, "hidden": 8, "batch_videos": 4}}},
    "sampling": {"max_keyframes": 2, "max_seconds": 1, "chunk_frames": 8, "slow_stride": 4},
    "features": {"decode_workers": 1},
    "training": {"quality_prior": 0.5, "batch_size": 4, "val_fraction": 0.2},
    "experiments": {"ens": {"train": ["d:train"], "test": ["d:test"], "holdout_fold": 0, "ensemble": 2}},
}
N_VIDEOS = 12


def run(*argv) -> None:
    assert main([str(a) for a in argv]) == 0, argv


def score(*argv, capsys) -> tuple[int, list[dict], str]:
    """`lmmvqa score ARGV` -> (exit code, its JSON lines, its stderr)."""
    capsys.readouterr()
    rc = main(["score", *map(str, argv)])
    out = capsys.readouterr()
    return rc, [json.loads(line) for line in out.out.splitlines() if line.strip()], out.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run folder where the workflow's commands made: the quality adapter, the dataset's manifest,
    feature stores, prompts and tokenizer, the two members of the ensemble (quality prior 0.5) and their
    evaluation on the held-out fold."""
    work = tmp_path_factory.mktemp("run")
    cwd = Path.cwd()
    import os

    os.chdir(work)
    try:
        write_synth_variants(work, prefix="s")  # the adapter's synth videos and their full-reference labels
        vids = [f"v{i:02d}.mp4" for i in range(N_VIDEOS)]
        for i, name in enumerate(vids):
            write_video(work / "videos" / name, n_frames=25, size=(64, 48), seed=100 + i,
                        options={"crf": str(8 + 3 * i)})
        pd.DataFrame({"name": vids, "mos": [90 - 6 * i for i in range(N_VIDEOS)]}).to_csv(work / "labels.csv",
                                                                                          index=False)
        (work / "config.yaml").write_text(yaml.safe_dump(CONFIG))
        cfg = load_config(work / "config.yaml")
        run("adapt-encoder", "--config", "config.yaml")
        run("manifest", "--format", "generic", "--labels", "labels.csv", "--videos", "videos",
            "--out", paths.manifest("d"), "--shard-size", 64, "--k", 4)
        run("extract", "--config", "config.yaml", "--dataset", "d", "--manifest", paths.manifest("d"),
            "--videos", "videos", "--shard", 0, "--out", paths.store("d", resolve.of(cfg).features.hash, 0),
            "--threads", 1, "--no-progress")
        run("prompts", "--config", "config.yaml", "--dataset", "d", "--manifest", paths.manifest("d"),
            "--out-dir", paths.prompts_dir("d"))
        run("tokenizer", "--prompts", paths.prompts_dir("d"), "--out", paths.tokenizer_dir(),
            "--answer-format", cfg["prompts"]["answer_format"])
        members = [paths.model_dir("ens"), paths.model_dir("ens.member1")]
        for member, folder in enumerate(members):
            run("train", "--config", "config.yaml", "--experiment", "ens", "--out", folder, "--max-steps", 2,
                "--no-progress", "--member", member)
        run("evaluate", "--config", "config.yaml", "--experiment", "ens", "--test", "d:test",
            "--out", paths.predictions("ens", "d:test"), "--model", *members)
        manifest = pd.read_csv(paths.manifest("d"), dtype={"id": str}).set_index("id")
        preds = pd.read_csv(paths.predictions("ens", "d:test"), dtype={"id": str})
        test_videos = [work / "videos" / manifest.loc[v, "path"] for v in preds["id"]]
        return {"work": work, "members": [work / m for m in members], "preds": preds, "videos": test_videos}
    finally:
        os.chdir(cwd)


def test_adapted_model_scores_from_another_folder_after_a_code_change(trained, tmp_path, monkeypatch, capsys):
    """The model folder holds the adapter its features are made with: scored from another working folder
    (no cache/, no config), with another code version (which renames the config's adapter file), it
    gives the scores evaluation gave, with the blend's two parts; without the copy, the error names it."""
    member = trained["members"][0]
    meta = json.loads((member / "lmmvqa.json").read_text())
    held = member / meta["quality_adapter"]["file"]
    assert held.is_file() and held.stat().st_mode & 0o044 == 0o044  # readable by others
    # what member 0 alone gives from the run's cached features
    monkeypatch.chdir(trained["work"])
    run("evaluate", "--config", "config.yaml", "--experiment", "ens", "--test", "d:test", "--out",
        tmp_path / "one.csv", "--model", member)
    alone = pd.read_csv(tmp_path / "one.csv", dtype={"id": str}).iloc[0]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    from pipeline.core import versions

    monkeypatch.setattr(versions, "code_version", lambda stage: "another-code-version")
    rc, lines, err = score(trained["videos"][0], "--model", member, capsys=capsys)
    assert rc == 0, err
    line = lines[0]
    assert line["prob_score"] == pytest.approx(alone["prob_score"], abs=1e-3)
    assert line["lmm_prob_score"] == pytest.approx(alone["lmm_prob_score"], abs=1e-3)
    assert line["quality_score"] == pytest.approx(alone["quality_score"], abs=1e-3)
    assert line["prob_score"] == pytest.approx(0.5 * line["lmm_prob_score"] + 0.5 * line["quality_score"], abs=1e-3)
    assert line["quality_prior"] == 0.5
    assert "evaluation settings (recorded in the model folder)" in err

    copy = tmp_path / "copy"
    shutil.copytree(member, copy)
    (copy / meta["quality_adapter"]["file"]).unlink()
    monkeypatch.chdir(elsewhere)
    rc, lines, err = score(trained["videos"][0], "--model", copy, capsys=capsys)
    assert rc == 2 and lines == []
    assert f"{copy / 'quality_adapter.safetensors'}: the model's quality adapter file is missing" in err


def test_an_ensemble_scores_with_the_mean_its_evaluation_uses(trained, monkeypatch, capsys):
    """Without --model, the config's ensemble experiment scores with all its members, averaged as
    `lmmvqa evaluate` averages them: its scores equal the evaluation's, and the mean of each member's own."""
    monkeypatch.chdir(trained["work"])
    videos = trained["videos"][:2]
    rc, lines, err = score(*videos, capsys=capsys)
    assert rc == 0, err
    preds = trained["preds"].set_index("id")
    for line, vid in zip(lines, preds.index):
        assert line["prob_score"] == pytest.approx(preds.loc[vid, "prob_score"], abs=1e-3)
        assert line["lmm_prob_score"] == pytest.approx(preds.loc[vid, "lmm_prob_score"], abs=1e-3)
        assert line["p_good"] == pytest.approx(preds.loc[vid, "p_good"], abs=1e-3)
    assert "ensemble of 2 models" in err
    each = [score(*videos, "--model", m, capsys=capsys)[1] for m in trained["members"]]
    for i, line in enumerate(lines):
        assert line["lmm_prob_score"] == pytest.approx((each[0][i]["lmm_prob_score"] + each[1][i]["lmm_prob_score"]) / 2,
                                                       abs=2e-4)
    assert any(abs(a["lmm_prob_score"] - b["lmm_prob_score"]) > 1e-3 for a, b in zip(*each)), "members must differ"
    # the same ensemble named by its folders
    rc, again, _ = score(*videos, "--model", trained["members"][0], "--model", trained["members"][1], capsys=capsys)
    assert rc == 0 and [x["prob_score"] for x in again] == [x["prob_score"] for x in lines]


def test_score_follows_the_configs_evaluation_settings(trained, tmp_path, monkeypatch, capsys):
    """After `evaluation.*` changes in the config, `lmmvqa evaluate` and `lmmvqa score --config` answer
    with the same (new) settings, so they give the same prediction for a video."""
    monkeypatch.chdir(trained["work"])
    raw = yaml.safe_load(Path("config.yaml").read_text())
    raw["evaluation"] = {"templates_per_video": 3, "decoding": "free", "max_new_tokens": 4}
    Path("changed.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "preds.csv"
    run("evaluate", "--config", "changed.yaml", "--experiment", "ens", "--test", "d:test", "--out", out,
        "--model", *trained["members"])
    preds = pd.read_csv(out, dtype={"id": str}, keep_default_na=False)
    video = trained["videos"][0]
    rc, lines, err = score(video, "--config", "changed.yaml", capsys=capsys)
    assert rc == 0, err
    row, line = preds.iloc[0], lines[0]
    assert line["prob_score"] == pytest.approx(float(row["prob_score"]), abs=1e-3)
    assert line["text"] == row["text"] and line["text"].count(" | ") == 2 * 3 - 1  # 2 members x 3 templates
    assert line["decoding"] == "free"
    assert "evaluation settings (the config): decoding free, templates_per_video 3, max_new_tokens 4" in err
    # a bare --model DIR: the settings recorded in the model folder at training (the defaults here)
    rc, bare, err = score(video, "--model", trained["members"][0], capsys=capsys)
    assert "evaluation settings (recorded in the model folder): decoding constrained, templates_per_video 1" in err
    assert " | " not in bare[0]["text"]


def test_score_decoding_mbr(trained, monkeypatch, capsys):
    """`lmmvqa score --decoding mbr`: the text is the weighted median of the model's own score candidates,
    written in its answer format, and parses; with the quality prior (this model has one) the level is the
    level of the blended score by the training videos' MOS edges, as the text is the blend's."""
    from pipeline.model.answers import parse_score

    monkeypatch.chdir(trained["work"])
    rc, lines, err = score(trained["videos"][0], "--model", trained["members"][0], "--decoding", "mbr", capsys=capsys)
    assert rc == 0, err
    line = lines[0]
    value, reason = parse_score(line["text"])
    assert reason == "ok" and not line["invalid"] and line["score"] == value and line["decoding"] == "mbr"
    assert line["text"] == f"{value:.3f}"  # the tiny preset answers in the paper's format, decimal3
    p33, p66 = json.loads((Path(trained["members"][0]) / "lmmvqa.json").read_text())["quality_prior"]["level_edges"]
    assert line["level"] == ("poor" if line["prob_score"] <= p33 else "fair" if line["prob_score"] <= p66 else "good")
    assert "evaluation settings (recorded in the model folder): decoding mbr" in err


def test_an_older_model_folder_falls_back_to_the_adapter_its_features_recorded(tmp_path, monkeypatch):
    """A folder written before model folders held the adapter: its features' adapter file, where it still
    is with the recorded hash, else an error naming both places."""
    import torch

    from pipeline.core.errors import UserError
    from pipeline.features.encoding import quality_adapter as qa
    from pipeline.model.model_files import scoring_extraction

    monkeypatch.chdir(tmp_path)
    with torch.random.fork_rng(devices=[]):
        qa.save_adapter(tmp_path / "cache/encoders/adapter-aaaaaaaaaa.safetensors", qa.QualityAdapter(10, 3, 8),
                        {"hash": "aaaaaaaaaa", "base_hash": "bbbbbbbbbb", "objective": "listwise"})
    old = {"extraction": {"models": {"preset": "tiny", "vision": {"adapted": {"datasets": ["syn"]}}}},
           "vision": {"adapted": {"file": "cache/encoders/adapter-aaaaaaaaaa.safetensors", "hash": "aaaaaaaaaa"}},
           "quality_prior": {"adapter": "aaaaaaaaaa"}}
    got = scoring_extraction(tmp_path / "model", old)
    assert got["models"]["vision"]["adapted"] == str(tmp_path / "cache/encoders/adapter-aaaaaaaaaa.safetensors")
    other = {**old, "quality_prior": {"adapter": "cccccccccc"}}
    with pytest.raises(UserError, match="quality adapter aaaaaaaaaa, its quality prior was fitted on adapter cccccccccc"):
        scoring_extraction(tmp_path / "model", other)
    monkeypatch.chdir(tmp_path / "cache")
    with pytest.raises(UserError, match=r"holds no copy of it \(.*model/quality_adapter.safetensors\), and the adapter "
                                        r"file its features recorded \(cache/encoders/adapter-aaaaaaaaaa.safetensors\)"):
        scoring_extraction(tmp_path / "model", old)
