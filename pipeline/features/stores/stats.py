"""Dataset-level feature statistics, computed out of core with dask over all shard stores.

    lmmvqa feature-stats --config C --dataset D --out results/stats/D.json

The feature reader exposes a dataset's shards as lazy dask arrays (feature_store.DatasetFeatures); the
reductions here stream them chunk by chunk, so a 40k-video dataset never has to fit in memory. With
`dask.address` set in the config the work runs on that dask.distributed scheduler; otherwise on
local threads. Output (JSON): counts (videos, failures, key frames, seconds), per-channel mean and
standard deviation of the spatial tokens and of the motion features, and the distribution of
per-row feature norms (a quick check that a store is not all zeros or blown up). The report shows
these per dataset; the per-channel statistics are what a normaliser of the features would use.
"""
from __future__ import annotations

import argparse
import contextlib
import json

import dask
import dask.array as da
import numpy as np

from pipeline.cli_args import add_config_arg, add_stores_arg
from pipeline.core import atomic
from pipeline.core import resolve
from pipeline.core.errors import UserError
from pipeline.features.stores.store_reader import dataset_features


@contextlib.contextmanager
def dask_scheduler(address: str | None):
    """Run dask computations on `address` (a dask.distributed scheduler) or on local threads."""
    if not address:
        yield None
        return
    from distributed import Client  # only with a scheduler address

    try:
        client = Client(address, timeout="20s")
    except OSError as exc:
        raise UserError(f"dask.address '{address}': cannot connect to the scheduler ({exc})") from None
    try:
        yield client
    finally:
        client.close()


def _moments(x, axes):
    """Lazy per-channel mean and standard deviation of x over `axes`, accumulated in float64."""
    x = x.astype("float64")
    mean = x.mean(axis=axes)
    std = x.std(axis=axes)
    return mean, std


def dataset_stats(features, address: str | None = None) -> dict:
    """Statistics of one dataset's features (a feature_store.DatasetFeatures)."""
    spatial = features.dask_spatial()  # [key frames, tokens, width]
    motion = features.dask_motion()  # [seconds, motion dim]
    s_mean, s_std = _moments(spatial, (0, 1))
    m_mean, m_std = _moments(motion, (0,))
    s_norm = da.sqrt((spatial.astype("float64") ** 2).sum(axis=-1)).mean(axis=1)  # per key frame
    m_norm = da.sqrt((motion.astype("float64") ** 2).sum(axis=-1))  # per second
    with dask_scheduler(address):
        s_mean, s_std, m_mean, m_std, s_norm, m_norm = dask.compute(s_mean, s_std, m_mean, m_std, s_norm, m_norm)

    def summary(values: np.ndarray) -> dict:
        if len(values) == 0:
            return {"min": None, "median": None, "max": None}
        return {"min": float(values.min()), "median": float(np.median(values)), "max": float(values.max())}

    failures = features.failures
    return {
        "videos": len(features.ids),
        "failures": int(len(failures)),
        "stores": len(features.stores),
        "keyframes": int(spatial.shape[0]),
        "seconds": int(motion.shape[0]),
        "tokens": int(spatial.shape[1]),
        "width": int(spatial.shape[2]),
        "motion_dim": int(motion.shape[1]),
        "spatial": {"channel_mean": s_mean.round(6).tolist(), "channel_std": s_std.round(6).tolist(),
                    "token_norm": summary(s_norm)},
        "motion": {"channel_mean": m_mean.round(6).tolist(), "channel_std": m_std.round(6).tolist(),
                   "row_norm": summary(m_norm)},
        "scheduler": address or "local threads",
    }


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_config_arg(parser)
    parser.add_argument("--dataset", required=True, help="dataset name")
    parser.add_argument("--out", required=True, help="statistics JSON to write")
    parser.add_argument("--address", default=None, help="dask.distributed scheduler (default: config dask.address)")
    add_stores_arg(parser)


def main(args) -> int:
    s = resolve.load(args.config)
    if args.dataset not in s.datasets:
        raise UserError(f"unknown dataset '{args.dataset}' (config has: {', '.join(s.datasets)})")
    features, _ = dataset_features(s.features.hash, args.dataset, args.stores)
    stats = dict(dataset=args.dataset, **dataset_stats(features, args.address or s.dask_address))
    out = atomic.write_text(args.out, json.dumps(stats, indent=1) + "\n")
    print(f"feature-stats {args.dataset}: {stats['videos']} videos, {stats['keyframes']} key frames, "
          f"{stats['seconds']} seconds, {stats['failures']} failures -> {out}")
    return 0
