"""Encoders: tiny shapes + determinism; loading CLIP / SlowFast weights from local files == in-memory model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.core.config import presets
from pipeline.features.encoding.encoders import encode_chunks, encode_keyframes, load_motion, load_vision

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiny():
    return presets()["tiny"]


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(3, 224, 224, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def chunks(tiny):
    size = tiny["motion"]["config"]["input_size"]
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(2, 32, size, size, 3), dtype=np.uint8)


def test_vision_tiny_shapes_and_seeded(tiny, frames):
    state = torch.random.get_rng_state()
    model, info = load_vision(tiny["vision"], "cpu")
    assert torch.equal(state, torch.random.get_rng_state())  # seeded build leaves the global RNG alone
    out = encode_keyframes(model, frames, batch_size=2)
    assert out.shape == (3, info["tokens"], info["width"]) == (3, 197, 128) and out.dtype == np.float32
    again = encode_keyframes(load_vision(tiny["vision"], "cpu")[0], frames, batch_size=3)
    np.testing.assert_array_equal(out, again)
    assert np.isfinite(out).all() and out.std() > 0.1
    with pytest.raises(ValueError):
        encode_keyframes(model, frames[:, :100])


def test_vision_from_saved_folder(tiny, frames, tmp_path):
    model, info = load_vision(tiny["vision"], "cpu")
    model.save_pretrained(tmp_path / "clip")
    loaded, info2 = load_vision({"source": str(tmp_path / "clip"), "config": {}}, "cpu")
    assert (info2["tokens"], info2["width"]) == (info["tokens"], info["width"])
    np.testing.assert_array_equal(encode_keyframes(model, frames), encode_keyframes(loaded, frames))


def test_motion_tiny_shapes_and_seeded(tiny, chunks):
    model, info = load_motion(tiny["motion"], "cpu", slow_stride=4)
    out = encode_chunks(model, chunks, 4, batch_size=1)
    assert out.shape == (2, info["dim"]) and info["dim"] == info["slow_dim"] + info["fast_dim"]
    again = load_motion(tiny["motion"], "cpu")[0]
    np.testing.assert_array_equal(out, encode_chunks(again, chunks, 4, batch_size=1))  # same batching: bit-exact
    # another batch size may change the last bits (conv algorithms), not the features
    np.testing.assert_allclose(out, encode_chunks(again, chunks, 4, batch_size=2), rtol=1e-4, atol=1e-5)
    assert np.isfinite(out).all() and out.std() > 0
    with pytest.raises(ValueError):
        encode_chunks(model, chunks[:, :30], 4)


@pytest.mark.parametrize("fmt", ["hub", "plain", "trunk"])
def test_motion_from_checkpoint(tiny, chunks, tmp_path, fmt):
    model, info = load_motion(tiny["motion"], "cpu")
    state = {"hub": {"model_state": model.net.state_dict()}, "plain": model.net.state_dict(), "trunk": model.state_dict()}[fmt]
    torch.save(state, tmp_path / "sf.pyth")
    loaded, info2 = load_motion({"source": str(tmp_path / "sf.pyth"), "config": tiny["motion"]["config"]}, "cpu", seed=99)
    assert info2["dim"] == info["dim"]
    np.testing.assert_array_equal(encode_chunks(model, chunks), encode_chunks(loaded, chunks))


def test_paper_sized_slowfast_r50_dims_and_hub_checkpoint(tmp_path):
    """slowfast_r50 architecture (create_slowfast defaults): 2048 + 256 = 2304, loads a hub-format checkpoint."""
    model, info = load_motion({"source": None, "config": {"input_size": 224, "model_depth": 50}}, "cpu")
    assert (info["slow_dim"], info["fast_dim"], info["dim"]) == (2048, 256, 2304)
    torch.save({"model_state": model.net.state_dict()}, tmp_path / "SLOWFAST_8x8_R50.pyth")
    loaded, info2 = load_motion({"source": str(tmp_path / "SLOWFAST_8x8_R50.pyth"), "config": {"input_size": 224}}, "cpu")
    assert info2["dim"] == 2304
    x = np.random.default_rng(2).integers(0, 256, size=(1, 8, 64, 64, 3), dtype=np.uint8)  # small input: fast
    a, b = encode_chunks(model, x), encode_chunks(loaded, x)
    assert a.shape == (1, 2304)
    np.testing.assert_array_equal(a, b)
