"""Training from cached features and prompt shards only (no video is decoded here).

`lmmvqa train --config C --experiment E --out DIR [--device D] [--max-steps N] [--resume] [--stage1] [--init DIR]`

* Runs (pipeline/training/runs.py): the experiment's training settings are the top-level `training` plus its
  `experiments.E.training` overrides; `--stage1` trains stage 1 of a two-stage experiment (LoRA off,
  `experiments.E.stage1` overrides) into `<E>.stage1`; the experiment's own run then continues from
  that model (or from its `init_from` experiment's model): projector and, when saved, LLM weights.

* Data (pipeline/training/data.py): the prompt shards of the experiment's train selectors
  (`paths.prompt_part`) and the feature stores of their datasets (`paths.store(dataset,
  FeatureSettings.hash, shard)` for the manifest's shards whose store exists). Samples of
  videos without features (failed extraction, missing store) are skipped and counted.
* Validation (pipeline/training/validation.py): `training.val_fraction` of the training *videos*
  (both their questions), chosen with `training.val_seed` (the same for every training seed), never the
  test fold; the model card reports SRCC of the greedy score answers and of the probability score, and
  level accuracy.
* Weights kept (pipeline/training/selection.py, `training.select`): the last step's, the best step's by
  validation probability-score SRCC, or the average over the second half of training.
* `train` is where the resolved plan (`Settings`) enters: it hands each step below the piece it needs
  (the `Experiment`, the run's `TrainingSettings`, the LLM's `ModelSpec`, the `PromptSettings` ...).
  `fit` is the optimisation alone (a built model, samples, features): `lmmvqa train` and
  benchmarks/bench_head.py share it.
* Loop: AdamW, linear warmup + cosine decay, gradient accumulation, gradient clipping, seeded;
  fp32 on CPU, autocast to `training.dtype` on CUDA (auto: bf16 for a pretrained LLM; fp16 with a
  GradScaler, see `Precision`); optional activation checkpointing (`training.gradient_checkpointing`). `training.batch_size` is per process and
  micro-batch; one optimizer step sees batch_size x grad_accum x world_size samples.
* Data order: a seeded permutation per epoch, split across processes, cut into batches; a resumed
  run skips exactly the batches already done, so it ends with the same weights as an
  uninterrupted one (CPU).
* Checkpoints (pipeline/training/checkpoints.py) every `training.checkpoint_every` optimizer steps in `paths.checkpoint_dir(E)`:
  `step-XXXXXXX/` with `weights.safetensors` (trainable weights), `optimizer.pt` and
  `scheduler.pt` (tensors only, read with `torch.load(weights_only=True)`), `rng.safetensors`
  + `state.json` (step, RNG states, log rows); the two newest are kept.
* Output folder (pipeline/training/model_folder.py): the model folder (see `pipeline.model.lmm`) + `train_log.csv`
  (step, loss, lr, samples_per_s), `loss.png` and a model card `README.md`.
* Multi-process: run under `torchrun --nproc_per_node N -m pipeline.cli train ...` (DDP; gloo on CPU,
  nccl on CUDA). Rank 0 writes checkpoints and the model folder.
"""
from __future__ import annotations

import argparse
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
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.cli_args import add_config_arg, add_device_arg, add_no_progress_arg, add_stores_arg
from pipeline.core import paths, resolve
from pipeline.core.devices import resolve_device
from pipeline.core.errors import UserError
from pipeline.core.settings import ModelSpec, PromptSettings, Settings, TrainingSettings, as_dict
from pipeline.features.stores.store_reader import feature_info, feature_moments
from pipeline.model.llm_loading import training_dtype
from pipeline.model.lmm import LMMVQA
from pipeline.model.quality_prior import fit_prior
from pipeline.prompts.selectors import fold_arg
from pipeline.training.checkpoints import (
    checkpoint_run,
    latest_checkpoint,
    load_checkpoint,
    run_fingerprint,
    save_checkpoint,
    weights_digest,
)
from pipeline.training.data import (
    Collator,
    QADataset,
    epoch_batches,
    experiment_data,
    load_training_tokenizer,
    split_validation,
)
from pipeline.training.model_folder import scoring_settings, write_model_folder
from pipeline.training.runs import continues_from, member_run, run_name
from pipeline.training.selection import WeightSelector
from pipeline.training.validation import prob_srcc, validate

# ------------------------------------------------------------------ schedule, precision

def lr_lambda(total: int, warmup: int):
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f



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


# ------------------------------------------------------------------ the loop

def _dist_setup(device: str):
    """(rank, world size, device) of this process; under torchrun: the process group, `cuda` -> `cuda:<local rank>`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device.startswith("cuda"):
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return rank, world, device


def validation_seed(training: TrainingSettings) -> int:
    """The seed of the validation split: `training.val_seed` (null: the training seed)."""
    v = training.val_seed
    return int(training.seed if v is None else v)


def train(settings: Settings, experiment: str, out: str | Path, device: str = "cpu", max_steps: int | None = None,
          resume: bool = False, tokenizer_dir: str | Path | None = None, checkpoint_dir: str | Path | None = None,
          stop_after: int | None = None, progress: bool = True, stage: int | None = None,
          init: str | Path | None = None, stores: list[str] | None = None, fold: int | str | None = None,
          member: int | None = None) -> dict:
    """Train an experiment's model into `out` (`stage=1`: stage 1 of a two-stage experiment; `fold`: the
    fold of a `folds: all` experiment the config holds out, or `all`, for the default model it
    continues from and its checkpoint folder; `member`: that member of its ensemble, seed
    training.seed + member). The run continues from `init` (a model folder; default: `continues_from`, its stage 1 or `init_from` model)
    and reads the feature stores
    `stores` (default: found from each dataset's manifest). `stop_after` (tests) ends the
    process's work right after that optimizer step's checkpoint, as if it were killed there."""
    settings.check_experiments()
    exp = settings.experiment(experiment)
    tr = exp.run_training(stage, member)
    llm = settings.models["llm"]
    init = Path(init) if init is not None else continues_from(exp, settings.experiments, stage, fold)
    if init is not None and not (init / "lmmvqa.json").exists():
        raise UserError(f"experiment '{experiment}' continues from {init}, which is not a trained model folder "
                        "(train that first)")
    rank, world, device = _dist_setup(str(resolve_device(device)))
    if settings.threads:
        torch.set_num_threads(settings.threads)
    seed = int(tr.seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    data = experiment_data(exp, settings.datasets, settings.features.hash, stores)
    train_samples, val_samples = split_validation(data["samples"], tr.val_fraction, validation_seed(tr))
    if not train_samples:
        raise UserError(f"experiment '{experiment}': no training samples with features")
    info = training_feature_info(data["features"])
    tokenizer = load_training_tokenizer(llm, tokenizer_dir)
    if init is not None and rank == 0:
        print(f"train: {experiment}: continuing from the model in {init}", flush=True)
    model = new_model(tr, llm, settings.prompts, tokenizer, info, train_samples, data["features"], device=device,
                      init=init)

    ckpt_dir = Path(checkpoint_dir or paths.checkpoint_dir(member_run(run_name(experiment, stage), member or 0), fold))
    ev = settings.evaluation
    run = fit(tr, llm, model, train_samples, val_samples, data["features"], eval_batch_size=ev.batch_size,
              device=device, rank=rank, world=world,
              max_steps=max_steps, checkpoint_dir=ckpt_dir, resume=resume, stop_after=stop_after,
              progress=progress, name=experiment,
              run_id=lambda total: run_fingerprint(tr, exp, llm, train_samples, total, world, init),
              skipped=data["skipped_videos"])
    step, digest = run["step"], run["digest"]
    print(f"train: rank {rank}/{world}: step {step}, final weights sha1 {digest}", flush=True)
    if run["stopped"]:
        return {"step": step, "stopped": True, "digest": digest}

    result = {"step": step, "digest": digest, "out": str(out)}
    if rank == 0:
        model.eval()
        val = validate(model, val_samples, data["features"], ev.batch_size, ev.max_new_tokens)
        params = [p for p in model.parameters() if p.requires_grad]
        log_rows = run["log_rows"]
        summary = {
            "n_train": len(train_samples), "n_val": len(val_samples),
            "n_train_videos": len({(s["dataset"], s["id"]) for s in train_samples}),
            "trainable": sum(p.numel() for p in params), "total": sum(p.numel() for p in model.parameters()),
            "steps": step, "epochs": step / run["steps_per_epoch"], "world_size": world, "dtype": run["dtype"],
            "device": device, "seconds": run["seconds"],
            "final_loss": float(np.mean([r["loss"] for r in log_rows[-10:]])) if log_rows else float("nan"),
            "samples_per_s": (len(log_rows) and float(np.median([r["samples_per_s"] for r in log_rows]))) or 0.0,
            "selection": run["selection"],
        }
        scoring = scoring_settings({k: settings.section(k) for k in ("models", "sampling", "features")},
                                   settings.adapter, settings.prompts, ev)
        out = write_model_folder(out, model, exp, stage, data, val, summary, log_rows, training=tr,
                                 prompts=settings.prompts, datasets=settings.datasets, preset=settings.preset,
                                 scoring=scoring)
        print(f"train: {experiment}: {step} steps in {run['seconds']:.0f} s; validation {json.dumps(val)} -> {out}",
              flush=True)
        result["validation"] = val
    if world > 1:
        dist.barrier()
    return result


def training_feature_info(features: dict) -> dict:
    """The feature shapes of the training datasets (which must agree): what the projector is built for."""
    infos = {d: feature_info(f) for d, f in features.items()}
    info = next(iter(infos.values()))
    for d, i in infos.items():
        if (i["vision_width"], i["vision_tokens"], i["motion_dim"]) != (info["vision_width"], info["vision_tokens"], info["motion_dim"]):
            raise UserError(f"feature shapes of '{d}' differ from the other training datasets: {i}")
    return info


def new_model(training: TrainingSettings, llm: ModelSpec, prompts: PromptSettings, tokenizer, info: dict,
              train_samples: list[dict], features: dict, device: str = "cpu", init: Path | None = None) -> LMMVQA:
    """The model a run starts from (seeded by training.seed), its features standardised with the
    training videos' moments (a continued model keeps the standardisation it was trained with)."""
    seed = int(training.seed)
    model = LMMVQA.build(llm, training, prompts, tokenizer, info, seed=seed, device=device, init=init)
    if training.standardize and init is None:
        model.projector.set_standardization(feature_moments(
            features, ((s["dataset"], s["id"]) for s in train_samples), seed=seed))
    if training.quality_prior:
        model.config["quality_prior"] = fit_prior(features, train_samples, training.quality_prior)
    return model


def fit(training: TrainingSettings, llm: ModelSpec, model: LMMVQA, train_samples: list[dict],
        val_samples: list[dict], features: dict, *, eval_batch_size: int, device: str = "cpu", rank: int = 0, world: int = 1, max_steps: int | None = None,
        checkpoint_dir: Path | None = None, run_id=None, resume: bool = False, stop_after: int | None = None,
        progress: bool = True, name: str = "", skipped: dict | None = None, monitor=None) -> dict:
    """The optimisation of a built model on its training samples, in place: AdamW + warmup/cosine,
    gradient accumulation and clipping, autocast / loss scaling, DDP across `world` processes,
    checkpoints in `checkpoint_dir` (none when None) with resume, and the weights `training.select`
    keeps (validation probability-score SRCC on `val_samples`, scored `eval_batch_size` at a time). `run_id(total_steps)` fingerprints the
    run for resuming; `monitor(step, model)`, when given, is called at the evaluated steps (once per
    epoch unless `training.eval_every`) and at the last step (benchmarks: learning curves). -> {step, stopped, digest (the last step's weights), log_rows, seconds,
    steps_per_epoch, dtype, selection}."""
    tr = training
    seed = int(tr.seed)
    model.train()
    on_cuda = device.startswith("cuda")
    compute = training_dtype(as_dict(tr), llm.as_dict(), device)
    precision = Precision(compute, torch.device(device).type)
    if tr.dtype not in (None, "float32") and not on_cuda and rank == 0:
        print(f"train: training.dtype={tr.dtype} applies on CUDA only; training in float32 on {device}")

    ddp = model
    if world > 1:
        ddp = DistributedDataParallel(model, device_ids=[torch.device(device).index] if on_cuda else None)

    bs, accum = int(tr.batch_size), int(tr.grad_accum)
    n_batches = len(epoch_batches(len(train_samples), bs, seed, 0, rank, world))
    steps_per_epoch = n_batches / accum  # micro-batches stream across epoch boundaries
    total = int(max_steps or tr.max_steps or max(1, math.ceil(tr.epochs * steps_per_epoch)))
    warmup = int(round(tr.warmup_ratio * total))
    optimizer = torch.optim.AdamW(model.param_groups(tr.lr, tr.llm_lr, tr.weight_decay), betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, warmup))
    params = [p for p in model.parameters() if p.requires_grad]
    selector = WeightSelector(tr.select, total, steps_per_epoch, tr.eval_every, bool(val_samples))

    step, log_rows = 0, []
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None:
        rid = run_id(total) if run_id is not None else None
        if resume and ckpt_dir.exists() and checkpoint_run(ckpt_dir) != rid:
            if rank == 0:
                print(f"train: --resume: the checkpoints in {ckpt_dir} belong to another run (settings, data or code "
                      "changed); starting at step 0")
                shutil.rmtree(ckpt_dir)
            resume = False
        if resume:
            last = latest_checkpoint(ckpt_dir)
            if last is not None:
                step, log_rows = load_checkpoint(last, model, optimizer, scheduler, precision.scaler, selector)
                if rank == 0:
                    print(f"train: resumed from {last} (step {step} of {total})")
            elif rank == 0:
                print(f"train: --resume: no checkpoint in {ckpt_dir}, starting at step 0")
        elif rank == 0 and ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)  # a fresh run never mixes with an older run's checkpoints
        if rank == 0:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            (ckpt_dir / "run.json").write_text(json.dumps({"run": rid}) + "\n")

    budget = float(tr.preload_mb) * 1e6
    for dname, feats in features.items():
        if budget > 0 and feats.preload(int(budget)):
            budget -= feats.nbytes()
            if rank == 0 and progress:
                print(f"train: features of '{dname}' held in memory ({feats.nbytes() / 1e6:.0f} MB)", flush=True)
    dataset = QADataset(train_samples, features)
    collate = Collator(model.formatter)
    nw = int(tr.num_workers)
    if rank == 0 and progress:
        print(f"train: {name}: {len(train_samples)} training samples, {len(val_samples)} validation samples, "
              f"skipped videos without features: {skipped or {}}; {total} steps "
              f"({steps_per_epoch:g} per epoch), world size {world}, device {device}", flush=True)

    bar = tqdm(total=total, initial=step, disable=not (progress and rank == 0), desc=f"train {name}",
               file=sys.stderr, mininterval=2.0)
    t_start = time.time()
    t_last, samples_since = time.time(), 0
    micro, accum_loss = step * accum, 0.0
    stopped = False
    epoch, skip = divmod(step * accum, n_batches)
    ev_bs = int(eval_batch_size)
    while step < total and not stopped:
        batches = epoch_batches(len(train_samples), bs, seed, epoch, rank, world)
        batches = batches[skip:]
        skip = 0
        loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=nw,
                            persistent_workers=False, multiprocessing_context="spawn" if nw else None)
        for videos, ids, mask, labels, scores in loader:
            ctx = ddp.no_sync() if (world > 1 and (micro + 1) % accum) else nullcontext()
            with ctx:
                with precision.autocast():
                    loss = ddp(videos, ids, mask, labels, scores)
                precision.backward(loss / accum)
            accum_loss += float(loss.detach()) / accum
            samples_since += len(ids) * world
            micro += 1
            if micro % accum:
                continue
            lr = optimizer.param_groups[0]["lr"]
            precision.step(optimizer, params, tr.max_grad_norm)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if world > 1:
                t = torch.tensor([accum_loss], device=device)
                dist.all_reduce(t)
                accum_loss = float(t) / world
            now = time.time()
            log_rows.append({"step": step, "loss": round(accum_loss, 6), "lr": lr,
                             "samples_per_s": round(samples_since / max(now - t_last, 1e-9), 3)})
            t_last, samples_since, accum_loss = now, 0, 0.0
            bar.update(1)
            bar.set_postfix(loss=f"{log_rows[-1]['loss']:.4f}", refresh=False)
            if selector.due(step):
                score = prob_srcc(model, val_samples, features, ev_bs) if selector.needs_score else None
                selector.observe(step, model, score)
                model.train()
                t_last = time.time()  # validation time is not training throughput
            if monitor is not None and (step % selector.every == 0 or step == total):
                monitor(step, model)
                model.train()
                t_last = time.time()
            if ckpt_dir is not None and rank == 0 and step % tr.checkpoint_every == 0 and step < total:
                save_checkpoint(ckpt_dir, step, model, optimizer, scheduler, log_rows, scaler=precision.scaler,
                                selector=selector)
            if stop_after is not None and step >= stop_after:
                stopped = True
                break
            if step >= total:
                break
        epoch += 1
    bar.close()
    seconds = time.time() - t_start
    digest = weights_digest(model)
    selection = None if stopped else selector.apply(model)
    return {"step": step, "stopped": stopped, "digest": digest, "log_rows": log_rows, "seconds": seconds,
            "steps_per_epoch": steps_per_epoch, "selection": selection,
            "dtype": str(compute if compute != torch.float32 else torch.float32).replace("torch.", "")}


# ------------------------------------------------------------------ CLI

def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_config_arg(parser)
    parser.add_argument("--experiment", required=True, help="experiment name in the config")
    parser.add_argument("--out", required=True, help="model folder to write (replaced when done)")
    add_device_arg(parser)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps (overrides training.max_steps / epochs)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in cache/checkpoints/<run>")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer trained on the prompts, for an LLM built at random init (default results/tokenizer)")
    parser.add_argument("--checkpoint-dir", default=None, help="checkpoint folder (default cache/checkpoints/<run>[/fold<F> or /all], <run> = the experiment, its .stage1 or .member<i>)")
    add_no_progress_arg(parser)
    parser.add_argument("--stage1", action="store_true",
                        help="train stage 1 of a two-stage experiment (experiments.<E>.stage1); without it the "
                             "experiment's own run, which continues from its stage 1 or init_from model")
    parser.add_argument("--init", default=None,
                        help="continue from this model folder (default: the experiment's stage 1 / init_from model)")
    add_stores_arg(parser, whose="the training datasets")
    parser.add_argument("--fold", type=fold_arg, default=None,
                        help="train the model of this fold of a `folds: all` experiment (holding it out), or "
                             "`all`: its model on every fold (the one to ship); checkpoints default to "
                             "cache/checkpoints/<run>/fold<F> (or /all)")
    parser.add_argument("--member", type=int, default=None,
                        help="train this member of the experiment's ensemble (experiments.<E>.ensemble; seed "
                             "training.seed + member; checkpoints default to cache/checkpoints/<run>.member<i>)")


def main(args) -> int:
    settings = resolve.load(args.config)
    if args.fold is not None:
        settings = settings.with_holdout(args.experiment, args.fold)
    train(settings, args.experiment, args.out, device=args.device or settings.device, max_steps=args.max_steps,
          resume=args.resume, tokenizer_dir=args.tokenizer, checkpoint_dir=args.checkpoint_dir,
          progress=not args.no_progress, stage=1 if args.stage1 else None, init=args.init, stores=args.stores,
          fold=args.fold, member=args.member)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0
