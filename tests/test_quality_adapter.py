"""The quality adapter (pipeline/features/encoding/quality_adapter.py) and its stage `lmmvqa adapt-encoder`."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import write_synth_variants
from pipeline.core import resolve
from pipeline.core.config import validate
from pipeline.core.errors import UserError
from pipeline.features.encoding import adapt_encoder, encoders
from pipeline.features.encoding import quality_adapter as qa


def toy_set(n, seed, width=12, frames=3, tokens=5):
    """Videos whose label (0-100) is carried by a noisy direction of their tokens, beside content noise."""
    rng = np.random.default_rng(seed)
    labels = rng.uniform(0, 100, n)
    direction = np.linspace(-1, 1, width)
    arrays = [rng.normal(0, 1, (frames, tokens, width)) + (y / 50 - 1) * direction for y in labels]
    return [a.astype(np.float32) for a in arrays], labels


@pytest.mark.parametrize("objective,factor", [("rank", 0.6), ("listwise", 0.75), ("rank_reg", 0.6)])
def test_a_few_steps_lower_the_held_out_loss(objective, factor):  # listwise: the target's entropy is a floor
    train, ytr = toy_set(64, 0)
    held, yte = toy_set(32, 1)
    s = {"objective": objective, "steps": 1, "dim": 4, "hidden": 16, "batch_videos": 32, "lr": 1e-2, "seed": 0}
    before = qa.evaluate_loss(qa.train_adapter(train, ytr, s)[0], held, yte, s)
    after_model, hist = qa.train_adapter(train, ytr, {**s, "steps": 40})
    after = qa.evaluate_loss(after_model, held, yte, s)
    assert after < factor * before, (before, after)
    scores, emb = qa.video_embeddings(after_model, held)
    assert emb.shape == (32, 4)
    assert pd.Series(scores).corr(pd.Series(yte), method="spearman") > 0.8


def test_training_is_deterministic_per_seed():
    x, y = toy_set(20, 0)
    s = {"steps": 5, "dim": 3, "hidden": 8, "batch_videos": 8}
    a, _ = qa.train_adapter(x, y, s)
    b, _ = qa.train_adapter(x, y, s)
    c, _ = qa.train_adapter(x, y, {**s, "seed": 1})
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.net[0].weight, c.net[0].weight)


def test_file_round_trip_and_errors(tmp_path):
    x, y = toy_set(10, 0)
    adapter, _ = qa.train_adapter(x, y, {"steps": 2, "dim": 3, "hidden": 8})
    path = qa.save_adapter(tmp_path / "a.safetensors", adapter, {"hash": "aaaaaaaaaa", "base_hash": "bbbbbbbbbb",
                                                                "objective": "rank_reg"})
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]  # no temporary left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not private, like the other outputs
    loaded, meta = qa.load_adapter(path, "aaaaaaaaaa", "bbbbbbbbbb")
    assert meta["hash"] == "aaaaaaaaaa" and meta["dim"] == 3
    t = torch.from_numpy(x[0])
    assert torch.allclose(loaded.embed(t), adapter.embed(t))
    with pytest.raises(UserError, match=r"a\.safetensors.*adapter hash aaaaaaaaaa.*expected adapter hash cccccccccc"):
        qa.load_adapter(path, "cccccccccc", "bbbbbbbbbb")
    with pytest.raises(UserError, match=r"a\.safetensors.*base vision hash bbbbbbbbbb.*base vision hash dddddddddd"):
        qa.load_adapter(path, "aaaaaaaaaa", "dddddddddd")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match=r"cut\.safetensors: not a readable adapter file.*expected adapter hash aaaaaaaaaa"):
        qa.load_adapter(cut, "aaaaaaaaaa", "bbbbbbbbbb")
    with pytest.raises(UserError, match=r"missing\.safetensors: adapter file not found"):
        qa.load_adapter(tmp_path / "missing.safetensors", "aaaaaaaaaa")


def _config(**adapted):
    return resolve.resolve(validate({
        "models": {"preset": "tiny", "vision": {"adapted": {"datasets": ["syn"], "steps": 3, "dim": 4, "hidden": 8,
                                                            "batch_videos": 4, **adapted}}},
        "datasets": {"syn": {"format": "synth", "references": "refs", "synth": {"families": {"x264": {"levels": 1}}}}},
        "sampling": {"max_keyframes": 2, "max_seconds": 1, "chunk_frames": 8, "slow_stride": 4},
    }))


def test_feature_settings_hash_follows_the_adapter():
    plain = resolve.resolve(validate({"models": {"preset": "tiny"}, "sampling": _config().config["sampling"]}))
    s = _config()
    assert s.features.hash != plain.features.hash
    assert adapt_encoder.plain_features(s.features).hash == plain.features.hash  # what the adapter sits on
    assert _config(dim=5).features.hash != s.features.hash
    assert _config(objective="rank").adapter.hash != s.adapter.hash
    assert s.adapter.hash == _config().adapter.hash
    assert s.models["vision"].as_dict()["adapted"]["file"] == f"cache/encoders/adapter-{s.adapter.hash}.safetensors"


def test_stage_writes_once_and_extraction_wraps_the_base(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_synth_variants(tmp_path)
    s = _config()
    out = adapt_encoder.adapt(s.adapter, s.features, log=lambda m: None)
    assert out == Path(s.adapter.file) and out.is_file()
    meta = qa.read_meta(out)
    assert meta["hash"] == s.adapter.hash and meta["n_videos"] == 6 and meta["steps"] == 3
    assert meta["base_hash"] == s.adapter.base_hash
    mtime = out.stat().st_mtime_ns
    monkeypatch.setattr(adapt_encoder, "base_tokens", lambda *a, **k: pytest.fail("a rerun recomputed"))
    assert adapt_encoder.adapt(s.adapter, s.features, log=lambda m: None) == out and out.stat().st_mtime_ns == mtime

    spec = s.models["vision"].as_dict()
    model, info = encoders.load_vision(spec)
    base, base_info = encoders.load_vision({k: v for k, v in spec.items() if k != "adapted"})
    assert info["width"] == base_info["width"] + 4 and info["adapted"]["hash"] == s.adapter.hash
    size = info["image_size"]
    frames = np.random.default_rng(0).integers(0, 255, (2, size, size, 3), dtype=np.uint8)
    got, want = encoders.encode_keyframes(model, frames), encoders.encode_keyframes(base, frames)
    assert got.shape == (2, info["tokens"], info["width"])
    np.testing.assert_allclose(got[..., : base_info["width"]], want, rtol=1e-5, atol=1e-5)

    other = _config(dim=5)  # the config asks for another adapter than the file holds
    spec = other.models["vision"].as_dict()
    spec["adapted"]["file"] = str(out)
    with pytest.raises(UserError, match=rf"adapter hash {s.adapter.hash}.*expected adapter hash {other.adapter.hash}"):
        encoders.load_vision(spec)
