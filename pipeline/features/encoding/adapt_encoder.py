"""`lmmvqa adapt-encoder`: learn the quality adapter of `models.vision.adapted` from synth datasets.

    lmmvqa adapt-encoder --config C [--out cache/encoders/adapter-<hash>.safetensors] [--threads T]

Self-supervised: the only labels are the synth datasets' full-reference metric (their label files'
`mos` = VMAF against the reference; pipeline/synth), never a MOS. The stage computes its own base
tokens: every variant is decoded with the config's sampling and its key frames go through the frozen
base vision model (the same functions as `lmmvqa extract`), so the workflow needs no feature store of
another feature-settings hash. Then `quality_adapter.train_adapter` fits the adapter, and the weights
are written atomically as safetensors, the settings, hashes and timings in the header, under the name
the resolved `Adapter` gives (`Adapter.file`, named by its hash: settings, base vision spec + sampling,
the datasets' config, this stage's code). An existing file with the same hash is left as it is (a rerun does nothing).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.cli_args import add_config_arg, add_device_arg
from pipeline.core import paths, resolve
from pipeline.core.config import stable_hash
from pipeline.core.errors import UserError
from pipeline.core.resolve import ADAPTER_SETTINGS
from pipeline.core.settings import Adapter, FeatureSettings
from pipeline.features.encoding import quality_adapter
from pipeline.features.encoding.encoders import encode_keyframes
from pipeline.features.extractor import Extractor


def adaptation_videos(adapter: Adapter) -> pd.DataFrame:
    """(path, label, dataset) of every variant of the adapter's datasets (their synth label files)."""
    rows = []
    for d in adapter.settings["datasets"]:
        ds = adapter.datasets.get(d)
        if ds is None or ds.format != "synth":
            raise UserError(f"models.vision.adapted.datasets: {d!r} is not a synth dataset of this config")
        labels_csv = paths.synth_labels(d)
        if not labels_csv.is_file():
            raise UserError(f"{labels_csv}: label file of synth dataset {d} not found (run its synth stages first)")
        labels = pd.read_csv(labels_csv)
        for col in ("name", "mos"):
            if col not in labels.columns:
                raise UserError(f"{labels_csv}: no column {col!r}")
        for r in labels.itertuples():
            rows.append({"dataset": d, "path": str(paths.synth_videos(d) / str(r.name)), "label": float(r.mos)})
    return pd.DataFrame(rows, columns=["dataset", "path", "label"])


def plain_features(features: FeatureSettings) -> FeatureSettings:
    """The feature settings without the quality adapter: what the adapter sits on."""
    plain = dataclasses.replace(features, vision=dataclasses.replace(features.vision, adapter=None))
    return dataclasses.replace(plain, hash=stable_hash(plain.hashed()))


def base_tokens(features: FeatureSettings, videos: pd.DataFrame, device=None, threads=None,
                log=print) -> tuple[list, np.ndarray, dict]:
    """Frozen base vision tokens of each video (with `features` less the adapter) -> (token arrays,
    labels of the decoded ones, timings)."""
    ex = Extractor(plain_features(features), device, threads)
    sampler = dataclasses.replace(ex.sampler, chunk_frames=1, max_seconds=1)  # key frames are all it needs
    tokens, labels, failed = [], [], 0
    t_dec = t_enc = 0.0
    for i, r in enumerate(videos.itertuples()):
        t0 = time.perf_counter()
        try:
            decoded = sampler.decode(r.path)
        except Exception as e:  # one bad variant does not stop the stage
            failed += 1
            log(f"failed: {r.path}: {type(e).__name__}: {e}")
            continue
        t1 = time.perf_counter()
        frames = [decoded.keyframes] if ex.native else decoded.keyframes  # native: the video's own size
        tokens.append(encode_keyframes(ex.vision, frames, ex.device, ex.batch_size))
        labels.append(r.label)
        t_dec, t_enc = t_dec + t1 - t0, t_enc + time.perf_counter() - t1
        if (i + 1) % 50 == 0:
            log(f"base tokens: {i + 1}/{len(videos)} videos")
    return tokens, np.asarray(labels, np.float32), {"decode_s": round(t_dec, 2), "vision_s": round(t_enc, 2),
                                                    "failed": failed}


def adapt(adapter: Adapter | None, features: FeatureSettings, out=None, device=None, threads=None,
          log=print) -> Path:
    """Train and write `adapter` (the resolved `models.vision.adapted`) on the base vision model of
    `features` (or do nothing when its file exists with the same hash). `device` / `threads`: the
    command's, else the config's."""
    if adapter is None or adapter.hash is None:  # none, or a given file (named by its sha256)
        raise UserError("models.vision.adapted must be a settings block ({datasets: [...], ...}) for adapt-encoder")
    settings = adapter.settings
    h = adapter.hash
    out = Path(out or adapter.file)
    if out.is_file():
        try:
            if quality_adapter.read_meta(out).get("hash") == h:
                log(f"{out}: up to date (adapter hash {h})")
                return out
        except Exception:  # unreadable: rebuilt below
            pass
    if threads:
        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    videos = adaptation_videos(adapter)
    tokens, labels, timings = base_tokens(features, videos, device, threads, log)
    if len(tokens) < 2:
        raise UserError(f"adapt-encoder: only {len(tokens)} decodable variants in {settings['datasets']}")
    t1 = time.perf_counter()
    train = {k: settings[k] for k in ADAPTER_SETTINGS}
    model, history = quality_adapter.train_adapter(tokens, labels, train, log=log)
    t2 = time.perf_counter()
    meta = {"hash": h, "base_hash": adapter.base_hash, **train, "datasets": list(settings["datasets"]),
            "n_videos": len(tokens), "final_loss": round(float(np.mean([x["loss"] for x in history[-20:]])), 5),
            "tokens_s": round(t1 - t0, 2), "train_s": round(t2 - t1, 2), **timings}
    quality_adapter.save_adapter(out, model, meta)
    log(f"wrote {out}: {len(tokens)} videos, base tokens {t1 - t0:.1f} s, training {t2 - t1:.1f} s, "
        f"final loss {meta['final_loss']}")
    return out


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_config_arg(parser)
    parser.add_argument("--out", default=None, help="weights file (default: cache/encoders/adapter-<hash>.safetensors)")
    add_device_arg(parser)
    parser.add_argument("--threads", type=int, default=None, help="torch + decoder threads")


def main(args) -> int:
    s = resolve.load(args.config)
    adapt(s.adapter, s.features, args.out, args.device or s.device, args.threads or s.threads,
          log=lambda m: print(m, file=sys.stderr, flush=True))
    return 0
