"""`models.vision.whole_frame`: two views of each key frame, the vision arch on the keyframe_mode view
(fragments at the frame's own pixels) and a second CNN on the whole frame, tokens concatenated."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.core import resolve
from pipeline.core.config import validate
from pipeline.core.errors import UserError
from pipeline.features.decoding.views import fragments, resize_to, tensor_view
from pipeline.features.encoding import encoders
from pipeline.features.extract import extract_shard
from pipeline.features.extractor import Extractor
from pipeline.features.stores.store_reader import FeatureStore
from pipeline.plan import vision_shape
from test_native import LITE0, _lite0_installed

torch.set_num_threads(2)
WHOLE = {"arch": "efficientnet_lite0", "config": {"blocks": [14, 15]}}


def config(mode="fragments", cap=None, **vision):
    sampling = {"keyframe_mode": mode, **({"native_max_short_side": cap} if cap else {})}
    return validate({"datasets": {"t": {"format": "generic", "labels": "labels.csv"}},
                     "models": {"preset": "offline", "vision": vision}, "sampling": sampling,
                     "features": {"batch_size": 4}})


@pytest.mark.parametrize("hw", [(240, 320), (500, 500), (150, 200), (224, 231)])
def test_tensor_fragments_are_the_fragments_of_the_byte_path(hw):
    """The two-view model cuts its fragments from the whole frame in torch: the same patches as the
    decoder's fragments (frames smaller than the key size upscaled the same way, rounded to bytes)."""
    frames = np.random.default_rng(0).integers(0, 255, (2, *hw, 3), dtype=np.uint8)
    got = tensor_view(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), 224, "fragments", 7)
    assert got.shape == (2, 3, 224, 224)
    np.testing.assert_array_equal(got.round().permute(0, 2, 3, 1).numpy().astype(np.uint8), fragments(frames, 224, 7))
    stretched = tensor_view(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), 64, "stretch")
    np.testing.assert_allclose(stretched.permute(0, 2, 3, 1).numpy(), resize_to(frames, 64, 64), atol=0.51)
    with pytest.raises(ValueError, match="stretch or fragments"):
        tensor_view(torch.zeros(1, 3, 8, 8), 8, "crop")


def test_whole_frame_spec_hash_and_cap():
    plain = resolve.of(config())
    two = resolve.of(config(whole_frame=WHOLE))
    spec = two.models["vision"].as_dict()
    assert spec["arch"] == "mobilenet_v2" and spec["whole_frame"]["weights"] == LITE0
    assert spec["whole_frame"]["config"] == {"blocks": [14, 15], "grid": 3, "image_size": 224}
    assert spec["whole_frame"]["max_short_side"] == 540  # the decoder's cap, unset: 540
    assert "whole_frame" not in plain.models["vision"].as_dict()
    capped = resolve.of(config(cap=64, whole_frame=WHOLE))
    assert capped.models["vision"].as_dict()["whole_frame"]["max_short_side"] == 64
    assert len({plain.features.hash, two.features.hash, capped.features.hash}) == 3  # each its own stores
    assert resolve.of(config(whole_frame=None)).features.hash == plain.features.hash  # null = off
    shape = vision_shape(two.models["vision"])
    assert (shape["kind"], shape["tokens"], shape["width"]) == ("mobilenet_v2+efficientnet_lite0", 10, 976 + 2 * 2 * 192)


@pytest.mark.parametrize("mode", ["native", "crop"])
def test_whole_frame_needs_a_view_beside_the_whole_frame(mode):
    with pytest.raises(UserError, match=f"must then be stretch or fragments .*keyframe_mode is {mode}"):
        resolve.of(config(mode, whole_frame=WHOLE))
    with pytest.raises(UserError, match="whole_frame.arch"):
        resolve.of(config(whole_frame={"arch": "resnet50"}))


def test_two_view_grids_must_agree_and_clip_is_refused():
    _lite0_installed()
    with pytest.raises(UserError, match="grid gives 5 tokens per frame, the main vision arch 10"):
        Extractor(resolve.of(config(whole_frame={**WHOLE, "config": {"grid": 2}})).features)
    tiny = validate({"models": {"preset": "tiny", "vision": {"whole_frame": WHOLE}},
                     "sampling": {"keyframe_mode": "stretch"}})
    with pytest.raises(UserError, match="must be CNN statistics archs"):
        Extractor(resolve.of(tiny).features)


def test_two_view_tokens_are_the_two_single_views_side_by_side(tmp_path, make_video):
    """A shard extracted with two views holds, per key frame, exactly the fragments-MobileNetV2 tokens of
    `keyframe_mode: fragments` beside the whole-frame Lite0 tokens of `keyframe_mode: native`; the decoder
    runs once per video, and the store records both encoders."""
    _lite0_installed()
    make_video("videos/a.mp4", n_frames=50, size=(288, 224), fps=25)
    make_video("videos/b.mp4", n_frames=30, size=(256, 240), fps=25, seed=1)
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame([("a", "a.mp4", 0), ("b", "b.mp4", 0)], columns=["id", "path", "shard"]).to_csv(manifest, index=False)
    features = resolve.of(config(whole_frame=WHOLE)).features
    out = tmp_path / "two" / "shard-00000.zarr"
    s = extract_shard(features, "t", manifest, tmp_path / "videos", 0, out, device="cpu", threads=2, progress=False,
                      decode_workers=0)
    assert s["n_videos"] == 2 and s["n_failed"] == 0
    store = FeatureStore(out)
    vision = store.attrs["vision"]
    assert (vision["width"], vision["main_width"], vision["view"]) == (976 + 768, 976, "fragments")
    assert vision["whole_frame"]["arch"] == "efficientnet_lite0" and "of the whole frame" in vision["detail"]
    frag = Extractor(resolve.of(config()).features)
    whole = Extractor(resolve.of(validate({"models": {"preset": "offline", "vision": WHOLE},
                                           "sampling": {"keyframe_mode": "native"}})).features)
    for vid in ("a", "b"):
        path = tmp_path / "videos" / f"{vid}.mp4"
        want = np.concatenate([frag.features(path)[0], whole.features(path)[0]], -1)
        got = store.spatial(vid).astype(np.float32)
        assert got.shape == want.shape == (2 if vid == "a" else 1, 10, 1744)
        np.testing.assert_allclose(got, want.astype(store.spatial(vid).dtype).astype(np.float32), rtol=0, atol=1e-6)
        np.testing.assert_array_equal(store.motion(vid), frag.features(path)[1].astype(store.motion(vid).dtype))
