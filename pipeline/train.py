"""Training from cached features and prompt shards only (no video is decoded here).

`lmmvqa train --config C --experiment E --out DIR [--device D] [--max-steps N] [--resume] [--stage1] [--init DIR]`

* Runs (pipeline/stages.py): the experiment's training settings are the top-level `training` plus its
  `experiments.E.training` overrides; `--stage1` trains stage 1 of a two-stage experiment (LoRA off,
  `experiments.E.stage1` overrides) into `<E>.stage1`; the experiment's own run then continues from
  that model (or from its `init_from` experiment's model): projector and, when saved, LLM weights.

* Data: the prompt shards of the experiment's train selectors (`paths.prompt_part`) and the
  feature stores of their datasets (`paths.store(dataset, feature_settings_hash(cfg), shard)` for the
  manifest's shards whose store exists). Samples of videos without features (failed extraction,
  missing store) are skipped and counted.
* Validation: a seeded `training.val_fraction` of the training *videos* (both their questions),
  never the test fold; the model card reports SRCC of the greedy score answers and level accuracy.
* Loop: AdamW, linear warmup + cosine decay, gradient accumulation, gradient clipping, seeded;
  fp32 on CPU, autocast to `training.dtype` on CUDA (auto: bf16 for a pretrained LLM; fp16 with a
  GradScaler, see `Precision`); optional activation checkpointing (`training.gradient_checkpointing`). `training.batch_size` is per process and
  micro-batch; one optimizer step sees batch_size x grad_accum x world_size samples.
* Data order: a seeded permutation per epoch, split across processes, cut into batches; a resumed
  run skips exactly the batches already done, so it ends with the same weights as an
  uninterrupted one (CPU).
* Checkpoints every `training.checkpoint_every` optimizer steps in `paths.checkpoint_dir(E)`:
  `step-XXXXXXX/` with `weights.safetensors` (trainable weights), `optimizer.pt` and
  `scheduler.pt` (tensors only, read with `torch.load(weights_only=True)`), `rng.safetensors`
  + `state.json` (step, RNG states, log rows); the two newest are kept.
* Output folder: the model folder (see `pipeline.lmm`) + `train_log.csv` (step, loss, lr,
  samples_per_s), `loss.png` and a model card `README.md`.
* Multi-process: run under `torchrun --nproc_per_node N -m pipeline.cli train ...` (DDP; gloo on CPU,
  nccl on CUDA). Rank 0 writes checkpoints and the model folder.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from . import paths
from .errors import UserError
from .stages import check_experiments, experiment_training, init_model_dir, run_name
from .prompts import load_templates


# ------------------------------------------------------------------ data

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
        return f.spatial(s["id"]), f.motion(s["id"]), s["question"], s["answer"]


class Collator:
    """Pads videos (time masks) and left-pads token sequences to the longest in the batch."""

    def __init__(self, formatter):
        self.formatter = formatter

    def __call__(self, items):
        from .lmm import collate_videos

        videos = collate_videos([(s, m) for s, m, _, _ in items])
        enc = self.formatter.batch([q for _, _, q, _ in items], [a for _, _, _, a in items])
        return videos, enc["input_ids"], enc["attention_mask"], enc["labels"]


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """This process's batches of one epoch: a seeded permutation, padded to a multiple of world
    size, strided across processes, cut into batches (every process gets the same count)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n).tolist()
    if world > 1 and len(perm) % world:
        perm += perm[: world - len(perm) % world]
    mine = perm[rank::world]
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


def split_validation(samples: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, val): a seeded fraction of the videos (per dataset), all their samples together."""
    if fraction <= 0:
        return samples, []
    keys = sorted({(s["dataset"], s["id"]) for s in samples})
    rng = np.random.default_rng(seed)
    n_val = int(round(fraction * len(keys)))
    if len(keys) >= 2:
        n_val = min(max(n_val, 1), len(keys) - 1)
    else:
        n_val = 0
    val_keys = {keys[i] for i in rng.permutation(len(keys))[:n_val]}
    train = [s for s in samples if (s["dataset"], s["id"]) not in val_keys]
    val = [s for s in samples if (s["dataset"], s["id"]) in val_keys]
    return train, val


def experiment_data(cfg: dict, experiment: str) -> dict:
    """Training samples and feature stores of an experiment (its train selectors)."""
    from .experiments import dataset_features, parse_selector, prompt_parts
    from .prompts import read_prompts

    if experiment not in cfg["experiments"]:
        raise UserError(f"unknown experiment '{experiment}' (config has: {', '.join(cfg['experiments']) or 'none'})")
    exp = cfg["experiments"][experiment]
    samples, features, skipped, files, stores = [], {}, {}, [], {}
    for selector in exp["train"]:
        dataset, _ = parse_selector(selector)
        parts = prompt_parts(cfg, selector, exp["holdout_fold"])
        if dataset not in features:
            features[dataset], stores[dataset] = dataset_features(cfg, dataset)
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
    seen, unique = set(), []
    for s in samples:  # a video selected twice (overlapping selectors) trains once
        key = (s["dataset"], s["id"], s["type"])
        if key not in seen:
            seen.add(key)
            unique.append(s)
    return {"samples": unique, "features": features, "skipped_videos": skipped, "prompt_files": files, "stores": stores}


# ------------------------------------------------------------------ schedule, state

def lr_lambda(total: int, warmup: int):
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def weights_digest(model) -> str:
    h = hashlib.sha1()
    for n, t in sorted(trainable_state(model).items()):
        h.update(n.encode())
        h.update(t.float().numpy().tobytes())
    return h.hexdigest()[:16]


def _rng_state() -> tuple[dict, dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    np_state = np.random.get_state()
    meta = {"numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]], "python": _listify(random.getstate())}
    return tensors, meta


def _listify(x):
    return [_listify(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


def _set_rng_state(tensors: dict, meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
        if states:
            torch.cuda.set_rng_state_all(states)
    n = meta["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))
    random.setstate(_tuplify(meta["python"]))


def save_checkpoint(ckpt_dir: Path, step: int, model, optimizer, scheduler, log_rows: list[dict], keep: int = 2,
                    scaler=None) -> Path:
    from safetensors.torch import save_file

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step-{step:07d}"
    tmp = ckpt_dir / f".tmp-step-{step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(trainable_state(model), str(tmp / "weights.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    if scaler is not None and scaler.is_enabled():
        torch.save(scaler.state_dict(), tmp / "scaler.pt")
    tensors, meta = _rng_state()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "rng.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, "rng": meta, "log": log_rows, "complete": True}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(ckpt_dir.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def run_fingerprint(cfg: dict, experiment: str, samples: list[dict], total_steps: int, world: int,
                    init: Path | None = None) -> str:
    """What a checkpoint must share with a run to be resumed by it: training settings, the
    experiment, the LLM spec, the training samples, the step count, world size, training code and
    the model it continues from (a retrained stage 1 restarts stage 2)."""
    from .config import stable_hash
    from .lmm import file_digest
    from .settings import model_spec

    return stable_hash({
        "training": cfg["training"], "experiment": cfg["experiments"][experiment], "llm": model_spec(cfg, "llm"),
        "samples": [(s["dataset"], s["id"], s["type"], s["question"], s["answer"]) for s in samples],
        "total_steps": total_steps, "world": world, "code": _code_version(),
        "init": file_digest(Path(init) / "lmmvqa.json") if init is not None else None,
    }, 16)


def checkpoint_run(ckpt_dir: Path) -> str | None:
    try:
        return json.loads((ckpt_dir / "run.json").read_text()).get("run")
    except (OSError, json.JSONDecodeError):
        return None


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    for d in sorted(ckpt_dir.glob("step-*"), reverse=True):
        state = d / "state.json"
        if state.exists():
            try:
                if json.loads(state.read_text()).get("complete"):
                    return d
            except json.JSONDecodeError:
                continue
    return None


def load_checkpoint(path: Path, model, optimizer, scheduler, scaler=None) -> tuple[int, list[dict]]:
    from safetensors.torch import load_file

    weights = load_file(str(path / "weights.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t.to(params[n].device))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    if scaler is not None and scaler.is_enabled() and (path / "scaler.pt").exists():
        scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
    state = json.loads((path / "state.json").read_text())
    _set_rng_state(load_file(str(path / "rng.safetensors")), state["rng"])
    return int(state["step"]), list(state["log"])


# ------------------------------------------------------------------ validation, outputs

@torch.no_grad()
def validate(model, samples: list[dict], features: dict, batch_size: int = 16, max_new_tokens: int = 8) -> dict:
    """Greedy answers on the validation samples: SRCC / PLCC of the parsed score answers, level accuracy."""
    from scipy import stats

    from .answers import parse_level, parse_score
    from .lmm import collate_videos

    if not samples:
        return {"n_videos": 0, "note": "no validation split (training.val_fraction = 0)"}
    preds, mos, lv_ok, lv_n, invalid = [], [], 0, 0, 0
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        videos = collate_videos([(features[s["dataset"]].spatial(s["id"]), features[s["dataset"]].motion(s["id"]))
                                 for s in chunk])
        texts = model.generate(videos, [s["question"] for s in chunk], max_new_tokens)
        for s, t in zip(chunk, texts):
            if s["type"] == "score":
                v, _ = parse_score(t)
                if v is None:
                    invalid += 1
                else:
                    preds.append(v)
                    mos.append(float(s["mos"]))
            else:
                lv, _ = parse_level(t)
                lv_n += 1
                lv_ok += int(lv == s["level"])
    out = {"n_videos": len({(s["dataset"], s["id"]) for s in samples}), "score_valid": len(preds),
           "score_invalid": invalid, "srcc": None, "plcc_raw": None,
           "level_accuracy": (lv_ok / lv_n) if lv_n else None}
    if len(preds) >= 3 and np.std(preds) > 0 and np.std(mos) > 0:
        out["srcc"] = float(stats.spearmanr(preds, mos)[0])
        out["plcc_raw"] = float(stats.pearsonr(preds, mos)[0])
    return out


def write_log(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "loss", "lr", "samples_per_s"])
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in w.fieldnames})


def plot_loss(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if rows:
        steps = [r["step"] for r in rows]
        loss = [r["loss"] for r in rows]
        ax.plot(steps, loss, lw=1, alpha=0.5, label="loss")
        if len(loss) >= 10:
            k = max(5, len(loss) // 20)
            smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1:], smooth, lw=2, label=f"mean of {k}")
        ax.set_yscale("log")
        ax.legend()
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("answer-token cross-entropy")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def model_card(experiment: str, cfg: dict, model, data: dict, val: dict, summary: dict) -> str:
    tr = cfg["training"]
    lines = [
        f"# LMM-VQA model `{experiment}`", "",
        "Video quality assessment as question answering: pooled CLIP key-frame tokens + one SlowFast motion "
        "token through the spatiotemporal projector replace the `<video>` token of the prompt; the LLM answers "
        "the quality score (0-100, three decimals) or level (good / fair / poor).", "",
        "## Data", "",
        f"- train selectors: {', '.join(cfg['experiments'][experiment]['train'])} "
        f"(holdout fold {cfg['experiments'][experiment]['holdout_fold']} never used)",
        f"- training samples: {summary['n_train']} ({summary['n_train_videos']} videos); validation: "
        f"{summary['n_val']} samples ({val.get('n_videos', 0)} videos, seeded {tr['val_fraction']:g} of the training videos)",
        f"- videos without features (skipped): {sum(data['skipped_videos'].values())} "
        f"{json.dumps(data['skipped_videos'])}",
        f"- prompt shards: {', '.join(data['prompt_files'])}",
        f"- feature stores: {', '.join(s for v in data['stores'].values() for s in v)}", "",
        "## Model", "",
        f"- LLM: {model.config['llm']['source'] or 'random init (' + cfg['models']['preset'] + ' preset)'}; "
        f"width {model.config['llm_width']}; LLM weights saved: {' + '.join(model.weight_parts()) or 'none (reloaded from the source)'}; "
        f"dtype {model.config.get('dtype')}",
        f"- vision width {model.config['vision_width']}, {model.config['vision_tokens']} tokens per key frame, "
        f"motion dim {model.config['motion_dim']}, pooling {model.config['pooling']} -> "
        f"{model.config['vision_tokens'] + 1} visual tokens",
        f"- trainable parameters: {summary['trainable']:,} of {summary['total']:,} "
        f"(train_llm={model.config['train_llm']}, LoRA={'yes' if model.config.get('lora') else 'no'})",
        *([f"- continued from `{model.config['init_from']['path']}` (experiment "
           f"{model.config['init_from'].get('experiment')}): its projector and LLM weights are the starting point"]
          if model.config.get("init_from") else []), "",
        "## Training", "",
        f"- {summary['steps']} optimizer steps ({summary['epochs']:.2f} epochs), batch {tr['batch_size']} x accum "
        f"{tr['grad_accum']} x {summary['world_size']} process(es), lr {tr['lr']:g} (LLM {tr['llm_lr'] or tr['lr']:g}), "
        f"warmup {tr['warmup_ratio']:g} + cosine, weight decay {tr['weight_decay']:g}, clip {tr['max_grad_norm']:g}, "
        f"seed {tr['seed']}, dtype {summary['dtype']}, device {summary['device']}",
        f"- final loss (mean of the last 10 steps): {summary['final_loss']:.4f}; wall time {summary['seconds']:.0f} s, "
        f"{summary['samples_per_s']:.1f} samples/s", "",
        "## Validation (greedy answers)", "",
        f"- score answers: SRCC {_fmt(val.get('srcc'))}, PLCC (raw) {_fmt(val.get('plcc_raw'))}, "
        f"valid {val.get('score_valid', 0)}, invalid {val.get('score_invalid', 0)}",
        f"- level accuracy: {_fmt(val.get('level_accuracy'))}", "",
        "Files: `lmmvqa.json`, `projector.safetensors`, `llm/` or `adapter/`, `tokenizer/`, `train_log.csv`, `loss.png`. "
        "Load with `pipeline.lmm.LMMVQA.from_pretrained(folder, device=...)`.",
    ]
    if val.get("note"):
        lines.append(f"\nNote: {val['note']}")
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


# ------------------------------------------------------------------ the loop

def _dist_setup(device: str):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device.startswith("cuda"):
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return rank, world, device


def resolve_device(device: str) -> str:
    """`encoders.resolve_device` (auto -> cuda when available), refusing CUDA where there is none."""
    from .encoders import resolve_device as _resolve

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{device}' requested but CUDA is not available")
    return str(_resolve(device))


class Precision:
    """Autocast and loss scaling of a training run. float32: neither. bfloat16: autocast. float16:
    autocast + a GradScaler (dynamic loss scale; a step whose gradients overflow is skipped and the
    scale halved), which needs float32 trainable weights (the projector, LoRA and full-LLM weights
    are; `LMMVQA.build` refuses float16 LLM weights that train)."""

    def __init__(self, dtype: torch.dtype, device_type: str):
        self.dtype, self.device_type = dtype, device_type
        self.scaler = torch.amp.GradScaler(device_type, enabled=dtype == torch.float16)

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype) if self.dtype != torch.float32 else nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, optimizer, params, max_grad_norm: float) -> None:
        """Unscale, clip, step (skipped by the scaler on inf/nan gradients), update the scale."""
        self.scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        self.scaler.step(optimizer)
        self.scaler.update()


def load_training_tokenizer(cfg: dict, tokenizer_dir: str | Path | None = None):
    from .settings import model_spec
    from .tokenizer import load_tokenizer

    spec = model_spec(cfg, "llm")
    if spec["source"]:
        return load_tokenizer(spec["source"])
    tdir = Path(tokenizer_dir or paths.tokenizer_dir())
    if not (tdir / "tokenizer.json").exists():
        raise UserError(f"tokenizer for the random-init LLM not found in {tdir} (run `lmmvqa tokenizer` first)")
    return load_tokenizer(tdir)


def train(cfg: dict, experiment: str, out: str | Path, device: str = "cpu", max_steps: int | None = None,
          resume: bool = False, tokenizer_dir: str | Path | None = None, checkpoint_dir: str | Path | None = None,
          stop_after: int | None = None, progress: bool = True, stage: int | None = None,
          init: str | Path | None = None) -> dict:
    """Train an experiment's model into `out` (`stage=1`: stage 1 of a two-stage experiment). The run
    continues from `init` (a model folder; default `init_model_dir`). `stop_after` (tests) ends the
    process's work right after that optimizer step's checkpoint, as if it were killed there."""
    import copy

    from tqdm import tqdm

    from .feature_store import feature_moments
    from .lmm import LMMVQA, feature_info, training_dtype
    from .settings import model_spec

    check_experiments(cfg)
    cfg = copy.deepcopy(cfg)
    cfg["training"] = experiment_training(cfg, experiment, stage)
    init = Path(init) if init is not None else init_model_dir(cfg, experiment, stage)
    if init is not None and not (init / "lmmvqa.json").exists():
        raise UserError(f"experiment '{experiment}' continues from {init}, which is not a trained model folder "
                        "(train that first)")
    tr = cfg["training"]
    rank, world, device = _dist_setup(resolve_device(device))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    seed = int(tr["seed"])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    data = experiment_data(cfg, experiment)
    train_samples, val_samples = split_validation(data["samples"], tr["val_fraction"], seed)
    if not train_samples:
        raise UserError(f"experiment '{experiment}': no training samples with features")
    infos = {d: feature_info(f) for d, f in data["features"].items()}
    info = next(iter(infos.values()))
    for d, i in infos.items():
        if (i["vision_width"], i["vision_tokens"], i["motion_dim"]) != (info["vision_width"], info["vision_tokens"], info["motion_dim"]):
            raise UserError(f"feature shapes of '{d}' differ from the other training datasets: {i}")

    tokenizer = load_training_tokenizer(cfg, tokenizer_dir)
    if init is not None and rank == 0:
        print(f"train: {experiment}: continuing from the model in {init}", flush=True)
    model = LMMVQA.build(cfg, tokenizer, info, seed=seed, device=device, init=init)
    if tr["standardize"] and init is None:  # a continued model keeps the standardisation it was trained with
        model.projector.set_standardization(feature_moments(
            data["features"], ((s["dataset"], s["id"]) for s in train_samples), seed=seed))
    model.train()
    on_cuda = device.startswith("cuda")
    compute = training_dtype(tr, model_spec(cfg, "llm"), device)
    precision = Precision(compute, torch.device(device).type)
    amp_dtype = compute if compute != torch.float32 else None
    if tr["dtype"] not in (None, "float32") and not on_cuda and rank == 0:
        print(f"train: training.dtype={tr['dtype']} applies on CUDA only; training in float32 on {device}")

    ddp = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model, device_ids=[torch.device(device).index] if on_cuda else None)

    bs, accum = int(tr["batch_size"]), int(tr["grad_accum"])
    n_batches = len(epoch_batches(len(train_samples), bs, seed, 0, rank, world))
    steps_per_epoch = n_batches / accum  # micro-batches stream across epoch boundaries
    total = int(max_steps or tr["max_steps"] or max(1, math.ceil(tr["epochs"] * steps_per_epoch)))
    warmup = int(round(tr["warmup_ratio"] * total))
    optimizer = torch.optim.AdamW(model.param_groups(tr["lr"], tr["llm_lr"], tr["weight_decay"]), betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, warmup))
    params = [p for p in model.parameters() if p.requires_grad]

    ckpt_dir = Path(checkpoint_dir or paths.checkpoint_dir(run_name(experiment, stage)))
    run_id = run_fingerprint(cfg, experiment, train_samples, total, world, init)
    step, log_rows = 0, []
    if resume and ckpt_dir.exists() and checkpoint_run(ckpt_dir) != run_id:
        if rank == 0:
            print(f"train: --resume: the checkpoints in {ckpt_dir} belong to another run (settings, data or code "
                  "changed); starting at step 0")
            shutil.rmtree(ckpt_dir)
        resume = False
    if resume:
        last = latest_checkpoint(ckpt_dir)
        if last is not None:
            step, log_rows = load_checkpoint(last, model, optimizer, scheduler, precision.scaler)
            if rank == 0:
                print(f"train: resumed from {last} (step {step} of {total})")
        elif rank == 0:
            print(f"train: --resume: no checkpoint in {ckpt_dir}, starting at step 0")
    elif rank == 0 and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)  # a fresh run never mixes with an older run's checkpoints

    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (ckpt_dir / "run.json").write_text(json.dumps({"run": run_id}) + "\n")

    budget = float(tr["preload_mb"]) * 1e6
    for name, feats in data["features"].items():
        if budget > 0 and feats.preload(int(budget)):
            budget -= feats.nbytes()
            if rank == 0:
                print(f"train: features of '{name}' held in memory ({feats.nbytes() / 1e6:.0f} MB)", flush=True)
    dataset = QADataset(train_samples, data["features"])
    collate = Collator(model.formatter)
    nw = int(tr["num_workers"])
    if rank == 0:
        print(f"train: {experiment}: {len(train_samples)} training samples, {len(val_samples)} validation samples, "
              f"skipped videos without features: {data['skipped_videos']}; {total} steps "
              f"({steps_per_epoch:g} per epoch), world size {world}, device {device}", flush=True)

    bar = tqdm(total=total, initial=step, disable=not (progress and rank == 0), desc=f"train {experiment}",
               file=sys.stderr, mininterval=2.0)
    t_start = time.time()
    t_last, samples_since = time.time(), 0
    micro, accum_loss = step * accum, 0.0
    stopped = False
    epoch, skip = divmod(step * accum, n_batches)
    while step < total and not stopped:
        batches = epoch_batches(len(train_samples), bs, seed, epoch, rank, world)
        batches = batches[skip:]
        skip = 0
        loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=nw,
                            persistent_workers=False, multiprocessing_context="spawn" if nw else None)
        for videos, ids, mask, labels in loader:
            ctx = ddp.no_sync() if (world > 1 and (micro + 1) % accum) else nullcontext()
            with ctx:
                with precision.autocast():
                    loss = ddp(videos, ids, mask, labels)
                precision.backward(loss / accum)
            accum_loss += float(loss.detach()) / accum
            samples_since += len(ids) * world
            micro += 1
            if micro % accum:
                continue
            lr = optimizer.param_groups[0]["lr"]
            precision.step(optimizer, params, tr["max_grad_norm"])
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if world > 1:
                import torch.distributed as dist

                t = torch.tensor([accum_loss], device=device)
                dist.all_reduce(t)
                accum_loss = float(t) / world
            now = time.time()
            log_rows.append({"step": step, "loss": round(accum_loss, 6), "lr": lr,
                             "samples_per_s": round(samples_since / max(now - t_last, 1e-9), 3)})
            t_last, samples_since, accum_loss = now, 0, 0.0
            bar.update(1)
            bar.set_postfix(loss=f"{log_rows[-1]['loss']:.4f}", refresh=False)
            if rank == 0 and step % tr["checkpoint_every"] == 0 and step < total:
                save_checkpoint(ckpt_dir, step, model, optimizer, scheduler, log_rows, scaler=precision.scaler)
            if stop_after is not None and step >= stop_after:
                stopped = True
                break
            if step >= total:
                break
        epoch += 1
    bar.close()
    seconds = time.time() - t_start
    digest = weights_digest(model)
    print(f"train: rank {rank}/{world}: step {step}, final weights sha1 {digest}", flush=True)
    if stopped:
        return {"step": step, "stopped": True, "digest": digest}

    result = {"step": step, "digest": digest, "out": str(out)}
    if rank == 0:
        model.eval()
        ev = cfg["evaluation"]
        val = validate(model, val_samples, data["features"], ev["batch_size"], ev["max_new_tokens"])
        n_params = sum(p.numel() for p in model.parameters())
        done = [r for r in log_rows]
        summary = {
            "n_train": len(train_samples), "n_val": len(val_samples),
            "n_train_videos": len({(s["dataset"], s["id"]) for s in train_samples}),
            "trainable": sum(p.numel() for p in params), "total": n_params, "steps": step,
            "epochs": step / steps_per_epoch, "world_size": world, "dtype": str(amp_dtype or torch.float32).replace("torch.", ""),
            "device": device, "seconds": seconds,
            "final_loss": float(np.mean([r["loss"] for r in done[-10:]])) if done else float("nan"),
            "samples_per_s": (len(done) and float(np.median([r["samples_per_s"] for r in done]))) or 0.0,
        }
        out = Path(out)
        staging = out.with_name(f"{out.name}.staging-{os.getpid()}")
        model.save_pretrained(staging, extra={"experiment": experiment, "stage": stage or "final", "validation": val,
                                              "train_summary": summary, "code_version": _code_version(),
                                              **scoring_settings(cfg)})
        (staging / "templates.yaml").write_text(yaml.safe_dump(
            {k: list(v) for k, v in load_templates(cfg["prompts"]["templates"]).items()}, sort_keys=False, width=200))
        write_log(log_rows, staging / "train_log.csv")
        plot_loss(log_rows, staging / "loss.png", f"{experiment}: training loss")
        (staging / "README.md").write_text(model_card(experiment, cfg, model, data, val, summary))
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
        print(f"train: {experiment}: {step} steps in {seconds:.0f} s; validation {json.dumps(val)} -> {out}", flush=True)
        result["validation"] = val
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return result


def scoring_settings(cfg: dict) -> dict:
    """What `lmmvqa score` needs to rebuild this model's inputs from a video: the feature extraction
    settings (models, sampling, store dtypes) and the prompt/evaluation settings."""
    return {"extraction": {k: cfg[k] for k in ("models", "sampling", "features")},
            "prompts_seed": cfg["prompts"]["seed"], "evaluation": cfg["evaluation"]}


def _code_version() -> str:
    from .versions import code_version

    return code_version("train")


# ------------------------------------------------------------------ CLI

def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="workflow config (YAML)")
    parser.add_argument("--experiment", required=True, help="experiment name in the config")
    parser.add_argument("--out", required=True, help="model folder to write (replaced when done)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: the config's)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps (overrides training.max_steps / epochs)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in cache/checkpoints/<run>")
    parser.add_argument("--tokenizer", default=None, help="tiny preset tokenizer folder (default results/tokenizer)")
    parser.add_argument("--checkpoint-dir", default=None, help="checkpoint folder (default cache/checkpoints/<experiment>)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    parser.add_argument("--stage1", action="store_true",
                        help="train stage 1 of a two-stage experiment (experiments.<E>.stage1); without it the "
                             "experiment's own run, which continues from its stage 1 or init_from model")
    parser.add_argument("--init", default=None,
                        help="continue from this model folder (default: the experiment's stage 1 / init_from model)")
    parser.add_argument("--fold", type=int, default=None,
                        help="train the model of this fold of a `folds: all` experiment (holding it out); "
                             "checkpoints default to cache/checkpoints/<experiment>/fold<F>")


def main(args) -> int:
    from .config import load_config

    cfg = load_config(args.config)
    checkpoint_dir = args.checkpoint_dir
    if args.fold is not None:
        from .experiments import with_holdout

        cfg = with_holdout(cfg, args.experiment, args.fold)
        checkpoint_dir = checkpoint_dir or paths.checkpoint_dir(args.experiment, args.fold)
    train(cfg, args.experiment, args.out, device=args.device or cfg["device"], max_steps=args.max_steps,
          resume=args.resume, tokenizer_dir=args.tokenizer, checkpoint_dir=checkpoint_dir,
          progress=not args.no_progress, stage=1 if args.stage1 else None, init=args.init)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    return 0
