"""Training checkpoints: what a run saves every `training.checkpoint_every` optimizer steps and what
`--resume` reads back, so that a resumed run ends with the same weights as an uninterrupted one.

In `paths.checkpoint_dir(run)`: `run.json` (`{"run": run_fingerprint(...)}`: checkpoints of another
run are never continued) and `step-XXXXXXX/` with `weights.safetensors` (trainable weights),
`optimizer.pt`, `scheduler.pt` (+ `scaler.pt` under float16; tensors only, read with
`torch.load(weights_only=True)`), `rng.safetensors` + `state.json` (step, RNG states of torch /
CUDA / numpy / random, log rows, `complete`), and with `training.select` best / average
`selection.safetensors` + `state.json` `selection` (pipeline/training/selection.py). A step folder is written under a temporary name and
renamed into place; the `keep` newest are kept.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pipeline.core.config import stable_hash
from pipeline.core.settings import as_dict
from pipeline.core.versions import code_version
from pipeline.model.model_files import file_digest

if TYPE_CHECKING:
    from pipeline.core.settings import Experiment, ModelSpec, TrainingSettings


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def weights_digest(model) -> str:
    """Short sha1 of the trainable weights (equal across DDP ranks, and for a resumed run)."""
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
                    scaler=None, selector=None) -> Path:
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
    state = {"step": step, "rng": meta, "log": log_rows, "complete": True}
    if selector is not None:
        sel_tensors, state["selection"] = selector.state()
        save_file(sel_tensors, str(tmp / "selection.safetensors"))
    (tmp / "state.json").write_text(json.dumps(state))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(ckpt_dir.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def run_fingerprint(training: "TrainingSettings", exp: "Experiment", llm: "ModelSpec", samples: list[dict],
                    total_steps: int, world: int, init: Path | None = None) -> str:
    """What a checkpoint must share with a run to be resumed by it: the run's training settings, the
    experiment's config block, the LLM spec, the training samples, the step count, world size, training
    code and the model it continues from (a retrained stage 1 restarts stage 2)."""
    return stable_hash({
        "training": as_dict(training), "experiment": exp.block, "llm": llm.as_dict(),
        "samples": [(s["dataset"], s["id"], s["type"], s["question"], s["answer"]) for s in samples],
        "total_steps": total_steps, "world": world, "code": code_version("train"),
        "init": file_digest(Path(init) / "lmmvqa.json") if init is not None else None,
    }, 16)


def checkpoint_run(ckpt_dir: Path) -> str | None:
    """The run fingerprint recorded in a checkpoint folder (None when there is none)."""
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


def load_checkpoint(path: Path, model, optimizer, scheduler, scaler=None, selector=None) -> tuple[int, list[dict]]:
    """Restore weights, optimizer, scheduler, scaler, RNG and weight-selection states; -> (step, log rows)."""
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
    if selector is not None and "selection" in state:
        selector.load(load_file(str(path / "selection.safetensors")), state["selection"])
    return int(state["step"]), list(state["log"])
