"""Training inputs: an experiment's samples and feature stores, the validation split, the per-epoch
batch order and the DataLoader pieces (dataset, collate function), and the tokenizer to train with.

* Samples: the prompt shards of the experiment's train selectors (`paths.prompt_part`) whose videos
  have features in the dataset's stores (`store_reader.dataset_features`); the others are skipped and
  counted per dataset. A video selected twice (overlapping selectors) trains once.
* `experiments.<E>.exclude_shared`: training videos that share that column's value with a test video
  are dropped (`selectors.shared_content`) and counted.
* Validation: `training.val_fraction` of the training *videos* (both their questions), chosen by a
  hash seeded with `training.val_seed` (not the training seed), never the test fold.
* Order: a seeded permutation per epoch, padded to a multiple of the world size, strided across
  processes and cut into batches, so a resumed run can skip exactly the batches already done.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.features.stores.store_reader import collate_videos, dataset_features
from pipeline.model.tokenizer import load_tokenizer
from pipeline.prompts.selectors import parse_selector, prompt_parts, shared_content
from pipeline.prompts.shards import read_prompts

if TYPE_CHECKING:
    from pipeline.core.settings import Dataset, Experiment, ModelSpec


class QADataset(Dataset):
    """Samples (prompt shard rows) with their features, read lazily per item from the stores
    (each DataLoader worker process opens its own zarr handles: FeatureStore reopens per pid)."""

    def __init__(self, samples: list[dict], features: dict):
        self.samples = samples
        self.features = features  # dataset name -> DatasetFeatures

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        f = self.features[s["dataset"]]
        score = float(s["mos"]) if s.get("type") == "score" else float("nan")
        return f.spatial(s["id"]), f.motion(s["id"]), s["question"], s["answer"], score


class Collator:
    """Pads videos (time masks) and left-pads token sequences to the longest in the batch; the MOS of
    score questions (NaN for level questions) for the ordinal terms of the loss."""

    def __init__(self, formatter):
        self.formatter = formatter

    def __call__(self, items):
        videos = collate_videos([(it[0], it[1]) for it in items])
        enc = self.formatter.batch([it[2] for it in items], [it[3] for it in items])
        scores = torch.tensor([it[4] for it in items], dtype=torch.float32)
        return videos, enc["input_ids"], enc["attention_mask"], enc["labels"], scores


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """This process's batches of one epoch: a seeded permutation, padded to a multiple of world
    size, strided across processes, cut into batches (every process gets the same count)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n).tolist()
    if world > 1 and len(perm) % world:
        perm += perm[: world - len(perm) % world]
    mine = perm[rank::world]
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


def split_validation(samples: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, val): a fraction of the videos, all their samples together: the videos whose seeded hash
    of (dataset, id) comes first. `seed` is `training.val_seed`, not the training seed, so models
    trained with different seeds see the same training videos; the choice of a video does not depend on
    the order of the samples."""
    if fraction <= 0:
        return samples, []
    keys = sorted({(s["dataset"], s["id"]) for s in samples})
    n_val = int(round(fraction * len(keys)))
    if len(keys) >= 2:
        n_val = min(max(n_val, 1), len(keys) - 1)
    else:
        n_val = 0
    ranked = sorted(keys, key=lambda k: hashlib.sha256(f"{int(seed)}\x1f{k[0]}\x1f{k[1]}".encode()).digest())
    val_keys = set(ranked[:n_val])
    train = [s for s in samples if (s["dataset"], s["id"]) not in val_keys]
    val = [s for s in samples if (s["dataset"], s["id"]) in val_keys]
    return train, val


def _stores_of(settings_hash: str, dataset: str, stores: list[str] | None) -> list[str] | None:
    """The given stores (a training rule's declared inputs) that belong to `dataset`: those in its
    store folder under the feature settings `settings_hash` (None: none given, find them from the manifest)."""
    if stores is None:
        return None
    folder = paths.store_dir(dataset, settings_hash)
    mine = [s for s in stores if Path(s).parent == folder]
    if not mine:
        raise UserError(f"none of the given feature stores is one of '{dataset}' (expected under {folder})")
    return mine


def experiment_data(exp: "Experiment", datasets: Mapping[str, "Dataset"], settings_hash: str,
                    stores: list[str] | None = None) -> dict:
    """Training samples and feature stores of an experiment (its train selectors over `datasets`), read
    from the feature stores of the feature settings `settings_hash` (`FeatureSettings.hash`); `stores`:
    the feature stores to read (default: each dataset's, found from its manifest)."""
    samples, features, skipped, files, used = [], {}, {}, [], {}
    for selector in exp.train:
        dataset, _ = parse_selector(selector)
        parts = prompt_parts(datasets, selector, exp.holdout_fold)
        if dataset not in features:
            features[dataset], used[dataset] = dataset_features(settings_hash, dataset,
                                                                _stores_of(settings_hash, dataset, stores))
        shard_files = [paths.prompt_part(dataset, p) for p in parts]
        for f in shard_files:
            if not f.exists():
                raise UserError(f"prompt shard not found: {f} (run `lmmvqa prompts` first)")
        rows = read_prompts(shard_files)
        files += [str(f) for f in shard_files]
        ok = [s for s in rows if s["id"] in features[dataset]]
        missing = {s["id"] for s in rows if s["id"] not in features[dataset]}
        skipped[dataset] = skipped.get(dataset, 0) + len(missing)
        samples += ok
    shared = shared_content(exp, datasets)
    seen, unique, excluded = set(), [], set()
    for s in samples:  # a video selected twice (overlapping selectors) trains once
        key = (s["dataset"], s["id"], s["type"])
        if (s["dataset"], s["id"]) in shared["videos"]:
            excluded.add((s["dataset"], s["id"]))
        elif key not in seen:
            seen.add(key)
            unique.append(s)
    exclusion = {"column": shared["column"], "videos": len(excluded),
                 "values": sorted(shared["values"])[:50]} if shared["column"] else None
    return {"samples": unique, "features": features, "skipped_videos": skipped, "prompt_files": files, "stores": used,
            "excluded_shared": exclusion}


def load_training_tokenizer(llm: "ModelSpec", tokenizer_dir: str | Path | None = None):
    """The LLM's own tokenizer (pretrained source), or the one trained on the prompts for an LLM built
    at random init (`lmmvqa tokenizer`)."""
    if llm.source is not None:
        return load_tokenizer(llm.source)
    tdir = Path(tokenizer_dir or paths.tokenizer_dir())
    if not (tdir / "tokenizer.json").exists():
        raise UserError(f"tokenizer for the random-init LLM not found in {tdir} (run `lmmvqa tokenizer` first)")
    return load_tokenizer(tdir)
