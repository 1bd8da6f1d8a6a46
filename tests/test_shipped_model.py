"""The model committed in the repository (models/lmmvqa-offline): `lmmvqa ship` writes it from a trained
experiment with its record and card; `lmmvqa score` scores photos and videos with it, and uses it without
`--model` when no trained experiment model is at hand, saying so."""
from __future__ import annotations

import json
import os
import stat
import subprocess

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.evaluation.ship import SHIPPED_MODEL, ship, shipped_summary, weight_hashes

CARD = """---
title: test model
datasets:
  photos: photos rated by people
---
## When not to trust it

Never.
"""


def _trained_experiment(root):
    """The files a `folds: all` experiment leaves behind, as ship reads them: manifest, aggregate metrics
    and a model folder on every fold (its weights written 0600, as safetensors writes them)."""
    cfg = {"datasets": {"photos": {"format": "image", "labels": "l.csv", "split": {"scheme": "kfold", "k": 2}}},
           "experiments": {"cv": {"train": ["photos:train"], "test": ["photos:test"], "folds": "all"}}}
    (root / "c.yaml").write_text(yaml.safe_dump(cfg))
    (root / "card.md").write_text(CARD)
    paths.manifest("photos").parent.mkdir(parents=True)
    paths.manifest("photos").write_text(
        "id,path,row,mos_raw,mos,level,split,fold,shard,size_bytes,fingerprint\n"
        + "".join(f"p{i},p{i}.jpg,{i + 1},50,50,fair,kfold,{i % 2},0,100,x{i}\n" for i in range(6)))
    metrics = paths.metrics("cv", "photos:test")
    metrics.parent.mkdir(parents=True)
    metrics.write_text(json.dumps({"n": 6, "folds": 2, "ensemble": 1, "methods": {"prob": {"srcc": 0.61, "plcc": 0.64}},
                                   "aggregate": {"prob": {"srcc": {"std": 0.05}, "plcc": {"std": 0.02}}},
                                   "fold_metrics": [{"methods": {"prob": {"srcc": 0.56}}},
                                                    {"methods": {"prob": {"srcc": 0.66}}}]}))
    model = paths.model_dir("cv", "all")
    (model / "tokenizer").mkdir(parents=True)
    (model / "tokenizer" / "tokenizer.json").write_text("{}")
    (model / "lmmvqa.json").write_text(json.dumps({"experiment": "cv"}))
    save_file({"w": torch.arange(4.0)}, str(model / "projector.safetensors"))
    (model / "train_log.csv").write_text("step,loss\n")
    return model


def test_ship_copies_the_model_with_its_record_card_and_readable_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = _trained_experiment(tmp_path)
    assert stat.S_IMODE((model / "projector.safetensors").stat().st_mode) == 0o600  # as safetensors writes it
    old = os.umask(0o022)
    try:
        record = ship("c.yaml", "card.md", "out/m")
    finally:
        os.umask(old)
    out = tmp_path / "out/m"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "README.md", "lmmvqa.json", "projector.safetensors", "tokenizer", "tokenizer/tokenizer.json"]
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in out.rglob("*") if p.is_file()} == {
        n: "0o644" for n in ("README.md", "lmmvqa.json", "projector.safetensors", "tokenizer.json")}
    saved = json.loads((out / "lmmvqa.json").read_text())
    assert saved["experiment"] == "cv" and saved["shipped"] == record
    assert record["trained_on"] == [{"dataset": "photos", "kind": "photos rated by people", "format": "image", "items": 6}]
    (fig,) = record["figures"]
    assert (fig["test"], fig["srcc"], fig["srcc_std"], fig["plcc"], fig["fold_srcc"], fig["n"]) == (
        "photos:test", 0.61, 0.05, 0.64, [0.56, 0.66], 6)
    assert "ensemble" not in fig  # one member model, no quality prior: not an ensemble
    assert record["weights_sha256"] == weight_hashes(model) and list(record["weights_sha256"]) == ["projector.safetensors"]
    card = (out / "README.md").read_text()
    assert "| photos rated by people | photos:test | 2 folds | 6 | 0.610 ± 0.050 | 0.640 ± 0.020 | 0.560, 0.660 |" in card
    assert record["weights_sha256"]["projector.safetensors"] in card and card.endswith("Never.\n")
    assert "lmmvqa ship --config c.yaml --card card.md --out out/m" in card
    line = shipped_summary(out)
    assert "trained on photos (6 photos rated by people)" in line and "SRCC 0.610 ± 0.050" in line


def test_ship_names_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _trained_experiment(tmp_path)
    (tmp_path / "bare.md").write_text("no front matter\n")
    with pytest.raises(UserError, match="bare.md: a card template starts with a YAML front matter"):
        ship("c.yaml", "bare.md", "out/m")
    paths.metrics("cv", "photos:test").unlink()
    with pytest.raises(UserError, match="metrics.json not found: run the workflow first"):
        ship("c.yaml", "card.md", "out/m")


def test_without_a_trained_model_score_falls_back_to_the_shipped_model_unless_a_config_is_named(tmp_path, monkeypatch):
    from pipeline.evaluation.score_files import model_to_use

    monkeypatch.chdir(tmp_path)
    folders, worth, from_config = model_to_use(None, None)
    assert folders == [SHIPPED_MODEL] and not from_config and "no config.yaml here" in worth
    raw = {"datasets": {"demo": {"format": "generic", "labels": "l.csv"}},
           "experiments": {"demo": {"train": ["demo:train"], "test": ["demo:test"]}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    folders, worth, _ = model_to_use(None, None)
    assert folders == [SHIPPED_MODEL] and "config.yaml's experiment has no trained model yet" in worth
    with pytest.raises(UserError, match="no trained model in results/models/demo"):
        model_to_use("config.yaml", None)  # a config named on the command line: its model, or the error
    (tmp_path / "results/models/demo").mkdir(parents=True)
    (tmp_path / "results/models/demo/lmmvqa.json").write_text("{}")
    folders, _, from_config = model_to_use(None, None)
    assert [str(f) for f in folders] == ["results/models/demo"] and from_config


def _photo_and_video(tmp_path):
    from PIL import Image, ImageFilter
    from conftest import write_video

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(1)).save(
        tmp_path / "photo.jpg", quality=90)
    return tmp_path / "photo.jpg", write_video(tmp_path / "clip.mp4", n_frames=50, size=(160, 120), fps=25)


def _lmmvqa(*args, cwd):
    from workflow_run import BIN

    return subprocess.run([str(BIN / "lmmvqa"), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600)


def _check_line(line, media):
    assert line["media"] == media and "error" not in line
    assert 0 <= line["prob_score"] <= 100 and (line["score"] is None or 0 <= line["score"] <= 100)
    assert line["level"] in ("good", "fair", "poor") and line["invalid"] is False
    assert sum(line[f"p_{w}"] for w in ("good", "fair", "poor")) == pytest.approx(1, abs=0.01)
    assert line["decoding"] == "mbr" and line["seconds"] > 0


@pytest.mark.slow
def test_shipped_model_scores_a_photo_and_a_video(tmp_path):
    photo, video = _photo_and_video(tmp_path)
    proc = _lmmvqa("score", "--model", SHIPPED_MODEL, photo, video, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [x["video"] for x in lines] == [str(photo), str(video)]
    _check_line(lines[0], "image")
    _check_line(lines[1], "video")
    assert lines[1]["duration"] == pytest.approx(2.0, abs=0.1)


@pytest.mark.slow
def test_score_without_a_model_in_an_empty_folder_uses_the_shipped_model_and_says_so(tmp_path):
    photo, _ = _photo_and_video(tmp_path)
    work = tmp_path / "empty"
    work.mkdir()
    proc = _lmmvqa("score", photo, cwd=work)
    assert proc.returncode == 0, proc.stderr
    _check_line(json.loads(proc.stdout), "image")
    said = proc.stderr.splitlines()[0]
    assert said.startswith(f"lmmvqa score: the shipped model {SHIPPED_MODEL} (no config.yaml here")
    assert "trained on clive-dev (310 photos rated by people" in said and "realset-dev (150 real footage" in said
    assert "photos rated by people (human MOS): SRCC 0." in said and "real footage rated by VMAF" in said


def test_a_model_with_the_quality_prior_ships_as_an_ensemble(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _trained_experiment(tmp_path)
    metrics = paths.metrics("cv", "photos:test")
    m = json.loads(metrics.read_text())
    m["prob_ensemble"] = {"method": "prob", "alone": "lmm_prob"}
    m["methods"]["lmm_prob"] = {"srcc": 0.52, "plcc": 0.55}
    metrics.write_text(json.dumps(m))
    record = ship("c.yaml", "card.md", "out/m")
    (fig,) = record["figures"]
    assert fig["ensemble"] is True and fig["alone_srcc"] == 0.52 and fig["srcc"] == 0.61
    card = (tmp_path / "out/m/README.md").read_text()
    assert ("photos:test: the probability score is an ensemble of the answer head and the quality adapter's score "
            "(the quality prior); the answer head alone: SRCC 0.520.") in card
