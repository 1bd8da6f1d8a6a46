"""Feature store: round trip (fp16 / fp32), CSR offsets across chunks, failures table, temp + rename."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.features.stores.store_reader import DatasetFeatures, FeatureStore, IncompleteStoreError
from pipeline.features.stores.store_writer import StoreWriter


def _videos(seed, n=5, tokens=5, width=8, dim=12):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k, s = int(rng.integers(1, 7)), int(rng.integers(1, 7))
        out.append((f"{seed}-{i:03d}", rng.normal(size=(k, tokens, width)).astype(np.float32),
                    rng.normal(size=(s, dim)).astype(np.float32)))
    return out


@pytest.mark.parametrize("spatial_dtype,motion_dtype,compressor", [("float16", "float16", "zstd"),
                                                                   ("float32", "float32", "blosc"),
                                                                   ("float16", "float32", "none")])
def test_round_trip(tmp_path, spatial_dtype, motion_dtype, compressor):
    videos = _videos(0)
    path = tmp_path / "shard-00000.zarr"
    # tiny chunks (a few rows each): videos straddle chunk boundaries
    with StoreWriter(path, token_shape=(5, 8), motion_dim=12, attrs={"vision": {"width": 8}}, spatial_dtype=spatial_dtype,
                     motion_dtype=motion_dtype, compressor=compressor, chunk_mb=0.0005) as w:
        for vid, sp, mo in videos:
            w.add(vid, sp, mo, {"duration": float(len(mo))})
        w.add_failure("bad", "bad.mp4", "decode", "DecodeError: broken\n")
    store = FeatureStore(path)
    assert store.ids == [v[0] for v in videos] and len(store) == 5 and store.attrs["vision"] == {"width": 8}
    for vid, sp, mo in videos:
        np.testing.assert_array_equal(store.spatial(vid), sp.astype(spatial_dtype))
        np.testing.assert_array_equal(store.motion(vid), mo.astype(motion_dtype))
        assert store.spatial(vid).dtype == np.dtype(spatial_dtype)
        assert store.video_meta(vid)["duration"] == len(mo)
    assert store.failures.to_dict("records") == [{"id": "bad", "path": "bad.mp4", "stage": "decode",
                                                  "error": "DecodeError: broken"}]
    sp, mo = store.dask_arrays()
    assert sp.shape[0] == sum(len(v[1]) for v in videos) and mo.shape == (sum(len(v[2]) for v in videos), 12)
    assert not list(tmp_path.glob("*.tmp-*"))


def test_dataset_features_across_shards(tmp_path):
    paths = []
    for shard in range(2):
        p = tmp_path / f"shard-{shard:05d}.zarr"
        with StoreWriter(p, token_shape=(5, 8), motion_dim=12) as w:
            for vid, sp, mo in _videos(shard + 10, n=3):
                w.add(vid, sp, mo)
        paths.append(p)
    ds = DatasetFeatures(paths)
    assert len(ds.ids) == 6 and "11-002" in ds
    np.testing.assert_array_equal(ds.motion("11-002"), _videos(11, n=3)[2][2].astype(np.float16))
    assert ds.dask_spatial().shape[0] == sum(len(v[1]) for s in (10, 11) for v in _videos(s, n=3))
    assert len(ds.failures) == 0


def test_incomplete_store_refused_and_cleaned(tmp_path):
    path = tmp_path / "shard-00000.zarr"
    w = StoreWriter(path, token_shape=(5, 8), motion_dim=12)
    for vid, sp, mo in _videos(1):
        w.add(vid, sp, mo)
    w._spatial._flush(final=True)  # data on disk, never committed: what a killed job leaves
    assert not path.exists() and w.tmp.exists()
    with pytest.raises(IncompleteStoreError):
        FeatureStore(w.tmp)
    with pytest.raises(IncompleteStoreError):
        FeatureStore(path)
    # a rerun removes the stale temporary folder and writes a complete store
    with StoreWriter(path, token_shape=(5, 8), motion_dim=12) as w2:
        w2.add("a", np.zeros((1, 5, 8)), np.zeros((1, 12)))
    assert not w.tmp.exists() and FeatureStore(path).ids == ["a"]


def test_error_inside_writer_aborts(tmp_path):
    path = tmp_path / "shard-00000.zarr"
    with pytest.raises(ValueError):
        with StoreWriter(path, token_shape=(5, 8), motion_dim=12) as w:
            w.add("a", np.zeros((1, 5, 8)), np.zeros((1, 12)))
            w.add("b", np.zeros((1, 5, 9)), np.zeros((1, 12)))  # wrong token shape
    assert not path.exists() and not list(tmp_path.glob("*.tmp-*"))
    with pytest.raises(ValueError):
        StoreWriter(tmp_path / "x.zarr", token_shape=(5, 8), motion_dim=12).add("e", np.zeros((0, 5, 8)), np.zeros((1, 12)))


def test_empty_shard(tmp_path):
    path = tmp_path / "shard-00000.zarr"
    with StoreWriter(path, token_shape=(5, 8), motion_dim=12) as w:
        w.add_failure("x", "x.mp4", "decode", "empty file")
    store = FeatureStore(path)
    assert len(store) == 0 and len(store.failures) == 1


def _two_shards(tmp_path):
    paths = []
    for shard in range(2):
        p = tmp_path / f"shard-{shard:05d}.zarr"
        with StoreWriter(p, token_shape=(5, 8), motion_dim=12, spatial_dtype="float32", motion_dtype="float32",
                         chunk_mb=0.0005) as w:
            for vid, sp, mo in _videos(shard + 20, n=4):
                w.add(vid, sp * (shard + 1) + 3.0, mo - 2.0)
            if shard == 1:
                w.add_failure("bad", "bad.mp4", "decode", "DecodeError: x")
        paths.append(p)
    return paths


def test_preload_serves_the_same_arrays(tmp_path):
    paths = _two_shards(tmp_path)
    lazy, held = DatasetFeatures(paths), DatasetFeatures(paths)
    assert not held.preload(max_bytes=10)  # over budget: stays lazy
    assert held.preload(max_bytes=held.nbytes())
    assert held.nbytes() == sum(4 * (s.attrs["kf_offsets"][-1] * 40 + s.attrs["sec_offsets"][-1] * 12)
                                for s in lazy.stores)
    for vid in lazy.ids:
        np.testing.assert_array_equal(held.spatial(vid), lazy.spatial(vid))
        np.testing.assert_array_equal(held.motion(vid), lazy.motion(vid))


def test_feature_stats_with_dask_equal_numpy(tmp_path):
    from pipeline.features.stores.stats import dataset_stats

    paths = _two_shards(tmp_path)
    feats = DatasetFeatures(paths)
    sp = np.concatenate([feats.spatial(v) for v in feats.ids]).astype(np.float64)
    mo = np.concatenate([feats.motion(v) for v in feats.ids]).astype(np.float64)
    st = dataset_stats(feats)
    assert (st["videos"], st["failures"], st["keyframes"], st["seconds"]) == (8, 1, len(sp), len(mo))
    np.testing.assert_allclose(st["spatial"]["channel_mean"], sp.mean(axis=(0, 1)), atol=1e-5)
    np.testing.assert_allclose(st["spatial"]["channel_std"], sp.std(axis=(0, 1)), atol=1e-5)
    np.testing.assert_allclose(st["motion"]["channel_mean"], mo.mean(axis=0), atol=1e-5)
    norms = np.sqrt((mo ** 2).sum(axis=1))
    assert st["motion"]["row_norm"]["max"] == pytest.approx(norms.max())
    assert st["motion"]["row_norm"]["median"] == pytest.approx(np.median(norms))


def test_feature_stats_on_a_distributed_scheduler(tmp_path):
    from distributed import LocalCluster

    from pipeline.features.stores.stats import dataset_stats

    feats = DatasetFeatures(_two_shards(tmp_path))
    local = dataset_stats(feats)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        remote = dataset_stats(feats, address=cluster.scheduler_address)
    assert remote["scheduler"] == cluster.scheduler_address
    np.testing.assert_allclose(remote["spatial"]["channel_std"], local["spatial"]["channel_std"], rtol=1e-9)
    assert remote["motion"]["row_norm"] == local["motion"]["row_norm"]


def test_dataset_features_reads_the_stores_it_is_given(tmp_path):
    """The workflow hands evaluate / feature-stats the stores their rule declares (--stores): those are
    read, with no manifest or config lookup, and a missing one is named."""
    from pipeline.core.errors import UserError
    from pipeline.features.stores.store_reader import dataset_features

    stores = _two_shards(tmp_path)
    feats, given = dataset_features("0123456789", "any", [str(stores[1])])
    assert given == [str(stores[1])] and feats.ids == DatasetFeatures([stores[1]]).ids
    assert len(feats.failures) == 1
    with pytest.raises(UserError, match="nope.zarr"):
        dataset_features("0123456789", "any", [str(stores[0]), str(tmp_path / "nope.zarr")])


def test_feature_info_from_attrs_or_array_shapes(tmp_path):
    """feature_info reads the store attributes, else the arrays' shapes (FeatureStore.shapes), also
    when the store is preloaded; collate_videos pads to the longest video with time masks."""
    from pipeline.features.stores.store_reader import collate_videos, feature_info

    p = tmp_path / "shard-00000.zarr"
    with StoreWriter(p, token_shape=(5, 8), motion_dim=12,
                     attrs={"vision": {"tokens": 5, "width": 8, "source": "s"}, "motion": {"dim": 12}}) as w:
        for vid, sp, mo in _videos(3, n=2):
            w.add(vid, sp, mo)
    ds = DatasetFeatures([p])
    info = feature_info(ds)
    assert (info["vision_tokens"], info["vision_width"], info["motion_dim"]) == (5, 8, 12)
    assert info["vision"] == {"source": "s", "config": None, "arch": None, "detail": None, "weights": None}
    bare = tmp_path / "shard-00001.zarr"
    with StoreWriter(bare, token_shape=(5, 8), motion_dim=12) as w:  # no model attributes
        for vid, sp, mo in _videos(4, n=2):
            w.add(vid, sp, mo)
    store = FeatureStore(bare)
    assert not store.attrs.get("motion") and not store.attrs.get("vision")  # so: from the shapes
    assert store.shapes["spatial"][1:] == (5, 8) and store.shapes["motion"][1] == 12
    assert feature_info(store)["motion_dim"] == 12
    store.preload()
    assert feature_info(store) == feature_info(FeatureStore(bare))
    with pytest.raises(ValueError, match="no feature store"):
        feature_info(DatasetFeatures([]))
    (a, sa, ma), (b, sb, mb) = _videos(5, n=2)
    batch = collate_videos([(sa, ma), (sb, mb)])
    K, S = max(len(sa), len(sb)), max(len(ma), len(mb))
    assert batch["spatial"].shape == (2, K, 5, 8) and batch["motion"].shape == (2, S, 12)
    assert batch["spatial_mask"].sum(1).tolist() == [len(sa), len(sb)]
    assert batch["motion_mask"].sum(1).tolist() == [len(ma), len(mb)]
    np.testing.assert_array_equal(batch["spatial"][1, : len(sb)].numpy(), sb)
