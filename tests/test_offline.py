"""The offline preset: packaged ImageNet weights (verified), CNN statistics tokens, fragment / crop
sampling and the temporal-statistics motion role."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from conftest import REPO, write_video

from pipeline.core import resolve
from pipeline.core.config import load_config
from pipeline.core.errors import UserError
from pipeline.features.encoding import encoders, statistics_encoders, weights
from pipeline.features.decoding.decode import sample_video
from pipeline.features.decoding.views import centre_crop, fragments, spatial_view

MOBILENET_SHA = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"


def offline_cfg(**sampling):
    cfg = load_config(REPO / "config.yaml")
    cfg["models"]["preset"] = "offline"
    cfg["sampling"].update({"keyframe_mode": "stretch", **sampling})
    return cfg


# ------------------------------------------------------------------ weights

def test_packaged_weights_resolve_and_verify():
    spec = resolve.of(offline_cfg()).models["vision"].as_dict()
    path = weights.resolve(spec)
    assert path.name == "mobilenet_v2-b0353104.pth"
    assert weights.sha256_of(path) == MOBILENET_SHA


def test_wrong_hash_fails_with_the_file_and_both_hashes():
    spec = resolve.of(offline_cfg()).models["vision"].as_dict()
    spec["weights"]["sha256"] = "0" * 64
    with pytest.raises(weights.WeightsError, match=r"mobilenet_v2-b0353104\.pth: sha256 b0353104.* does not match"):
        encoders.load_vision(spec)


def test_missing_package_and_missing_file_are_clear():
    with pytest.raises(weights.WeightsError, match="'no_such_weights_pkg' is not installed"):
        weights.resolve({"weights": {"package": "no_such_weights_pkg", "file": "x.pth"}})
    with pytest.raises(weights.WeightsError, match="weight file not found"):
        weights.resolve({"source": "/nonexistent/w.pth", "weights": {}})


def test_local_weights_load_through_the_same_loader(tmp_path):
    """A model saved locally loads through load_vision (source = local path), and its tokens are the
    per-block statistics of exactly those weights."""
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v2(weights=None).eval()
    path = tmp_path / "mine.pth"
    torch.save(net.state_dict(), path)
    cfg = offline_cfg()
    cfg["models"]["vision"] = {"source": str(path), "sha256": None, "config": {"grid": 7}, "dtype": None}
    model, info = encoders.load_vision(resolve.of(cfg).models["vision"].as_dict())
    assert info["source"] == str(path) and info["tokens"] == 50 and info["width"] == 2 * (16 + 24 + 32 + 96 + 320)
    frames = np.random.default_rng(0).integers(0, 255, (2, 224, 224, 3), dtype=np.uint8)
    tokens = encoders.encode_keyframes(model, frames)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(statistics_encoders.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(statistics_encoders.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        h = net.features[:2](x)  # block 1 output: the first 16 + 16 values of the global token
    np.testing.assert_allclose(tokens[:, 0, :16], h.mean((2, 3)).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(tokens[:, 0, 16:32], h.std((2, 3)).numpy(), rtol=1e-4, atol=1e-5)
    # a cell token = statistics of its 1/7 x 1/7 region of the map (112 px map -> 16 px cells)
    cell = h[:, :, :16, 16:32]
    np.testing.assert_allclose(tokens[:, 2, :16], cell.mean((2, 3)).numpy(), rtol=1e-4, atol=1e-5)


def test_weights_of_another_architecture_fail_with_key_names(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    cfg = offline_cfg()
    cfg["models"]["vision"] = {"source": str(path), "sha256": None, "config": {}, "dtype": None}
    with pytest.raises(UserError, match=r"resnet\.pth \(mobilenet_v2\): \d+ weight\(s\) missing from the checkpoint: "
                                        r"classifier\.1\.bias, classifier\.1\.weight, features\.0\.0\.weight"):
        encoders.load_vision(resolve.of(cfg).models["vision"].as_dict())


# ------------------------------------------------------------------ sampling

def coordinate_frame(h, w):
    """A frame whose pixel (y, x) holds y // 4 in R, x // 4 in G and (y + x) % 256 in B."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([y // 4, x // 4, (y + x) % 256], -1).astype(np.uint8)[None]


def test_fragments_cut_native_patches_at_cell_centres():
    frame = coordinate_frame(700, 980)
    out = fragments(frame, 224, 7)[0]
    assert out.shape == (224, 224, 3)
    for i, j in [(0, 0), (3, 4), (6, 6)]:
        y0 = round((i + 0.5) * 100 - 16)
        x0 = round((j + 0.5) * 140 - 16)
        np.testing.assert_array_equal(out[i * 32:(i + 1) * 32, j * 32:(j + 1) * 32], frame[0, y0:y0 + 32, x0:x0 + 32])


def test_fragments_of_a_small_frame_upscale_just_enough():
    out = fragments(coordinate_frame(120, 160), 224, 7)
    assert out.shape == (1, 224, 224, 3)
    with pytest.raises(ValueError, match="not a multiple of the grid"):
        fragments(coordinate_frame(300, 300), 224, 5)


def test_crop_keeps_the_centre_square_and_stretch_the_whole_frame():
    frame = coordinate_frame(224, 448)
    crop = centre_crop(frame, 224)[0]
    np.testing.assert_array_equal(crop, frame[0, :, 112:336])
    stretched = spatial_view(frame, 224, "stretch")[0]
    assert stretched[:, -1, 1].max() > 100  # the right edge of the frame (x // 4 ~ 111) is still there


def test_sample_video_modes(tmp_path):
    video = write_video(tmp_path / "v.mp4", n_frames=50, size=(320, 240), fps=25)
    kw = dict(keyframe_fps=1.0, max_keyframes=4, chunk_frames=32, max_seconds=4, key_size=224, chunk_size=64)
    base = sample_video(video, **kw)
    frag = sample_video(video, keyframe_mode="fragments", **kw)
    crop = sample_video(video, keyframe_mode="crop", **kw)
    pyav = sample_video(video, keyframe_mode="fragments", backend="pyav", **kw)
    assert base.keyframes.shape == frag.keyframes.shape == crop.keyframes.shape == (2, 224, 224, 3)
    assert not np.array_equal(base.keyframes, frag.keyframes)
    # decord and PyAV agree on fragments up to decoder rounding
    assert np.abs(frag.keyframes.astype(int) - pyav.keyframes.astype(int)).mean() < 3
    # 25 fps resampled to 32 frames per chunk: 25 distinct source frames in the first chunk
    assert len(np.unique(base.chunk_ids[0])) == 25 and np.array_equal(base.chunk_ids, pyav.chunk_ids)


def test_keyframe_mode_and_preset_change_the_feature_settings_hash():
    tiny = load_config(REPO / "config.yaml")
    tiny["models"]["preset"] = "tiny"
    hashes = {resolve.of(tiny).features.hash, resolve.of(offline_cfg()).features.hash,
              resolve.of(offline_cfg(keyframe_mode="fragments")).features.hash,
              resolve.of(offline_cfg(keyframe_mode="crop")).features.hash}
    assert len(hashes) == 4


# ------------------------------------------------------------------ temporal statistics

def moving_chunks(hold: int, n: int = 32, seed: int = 0):
    """One chunk of a texture moving 3 px per source frame; every source frame held `hold` times."""
    rng = np.random.default_rng(seed)
    tex = rng.integers(0, 255, (64, 400, 3), dtype=np.uint8)
    src = np.arange(n) // hold
    frames = np.stack([tex[:, 3 * s:3 * s + 64] for s in src])
    return frames[None], src[None]


def test_temporal_stats_see_stutter():
    model, info = encoders.load_motion({"arch": "temporal_stats", "config": {"input_size": 64}})
    assert info["dim"] == 10
    smooth = encoders.encode_chunks(model, *moving_chunks(1)[:1])
    stutter = encoders.encode_chunks(model, *moving_chunks(3)[:1])
    assert smooth[0, 0] == 0.0 and stutter[0, 0] > 0.6  # frozen fraction
    assert stutter[0, 3] < -0.3  # period-3 pattern: negative autocorrelation at lag 2


def test_temporal_stats_skip_frames_repeated_by_resampling():
    """A 25 fps video resampled to 32 frames/chunk repeats frames; with the decoder's frame ids those
    repeats are not mistaken for stutter."""
    model, _ = encoders.load_motion({"arch": "temporal_stats", "config": {}})
    frames, _ = moving_chunks(1, n=25)
    pick = (np.arange(32) * 25) // 32
    resampled, ids = frames[:, pick], pick[None]
    with_ids = encoders.encode_chunks(model, resampled, frame_ids=ids)
    without = encoders.encode_chunks(model, resampled)
    assert with_ids[0, 0] == 0.0 and without[0, 0] > 0.15
    assert with_ids[0, 7] == pytest.approx(25 / 32)


# ------------------------------------------------------------------ feature standardisation

def test_projector_standardisation_removes_channel_scales():
    """With moments from the data, a projector sees the same standardised input whatever the scale
    and offset of each feature channel (CNN statistics and temporal statistics differ by 1000x)."""
    from pipeline.features.stores.store_reader import feature_moments
    from pipeline.model.projector import Projector

    rng = np.random.default_rng(0)
    base = {f"v{i}": (rng.normal(size=(3, 5, 8)).astype(np.float32), rng.normal(size=(2, 4)).astype(np.float32))
            for i in range(20)}
    gain, offset = rng.uniform(0.001, 1000, 8), rng.normal(0, 50, 8)

    class Feats:
        def __init__(self, a, b):
            self.a, self.b = a, b

        def spatial(self, v):
            return base[v][0] * self.a + self.b

        def motion(self, v):
            return base[v][1] * 3 + 1

    outs = []
    for a, b in ((1.0, 0.0), (gain, offset)):
        feats = {"d": Feats(a, b)}
        m = feature_moments(feats, [("d", v) for v in base])
        torch.manual_seed(0)
        proj = Projector(8, 4, 6)
        proj.set_standardization(m)
        s = torch.from_numpy(np.stack([feats["d"].spatial(v) for v in ("v0", "v1")])).float()
        mo = torch.from_numpy(np.stack([feats["d"].motion(v) for v in ("v0", "v1")])).float()
        with torch.no_grad():
            outs.append(proj(s, torch.ones(2, 3, dtype=torch.bool), mo, torch.ones(2, 2, dtype=torch.bool)))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-3, atol=1e-3)
    # buffers travel with the state dict (saved in projector.safetensors)
    assert {"spatial_shift", "spatial_scale", "motion_shift", "motion_scale"} <= set(proj.state_dict())
