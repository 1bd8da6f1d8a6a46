"""Model folders on disk (docs/DESIGN.md "Model folder"): writing one atomically, reading its config,
checking its projector weights, deciding whether another model may continue from it, and loading it
back (`LMMVQA.save_pretrained` / `LMMVQA.from_pretrained` call these).

A folder holds `lmmvqa.json` (the model config), `projector.safetensors`, `tokenizer/`, and of the LLM
`llm/` (full weights, whenever they cannot be reloaded from the source) and/or `adapter/` (peft LoRA)
or nothing (a frozen pretrained LLM reloaded from its source); `llm_weights` says which. A model
trained on features of a quality-adapted vision encoder also holds that adapter (`quality_adapter.safetensors`,
recorded as `quality_adapter` in `lmmvqa.json`); `scoring_extraction` resolves it for `lmmvqa score`.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pipeline.core.devices import resolve_device
from pipeline.core.errors import UserError
from pipeline.core.atomic import readable_by_all
from pipeline.core.provenance import sha256_of
from pipeline.model.llm_loading import DTYPES, check_missing, load_adapter, load_llm
from pipeline.model.projector import Projector, projector_settings
from pipeline.model.tokenizer import load_tokenizer

FORMAT_VERSION = 1
ADAPTER_FILE = "quality_adapter.safetensors"  # the copy of the quality adapter a model's features need


def read_model_config(path: Path) -> dict:
    """A model folder's own record (`lmmvqa.json`), not the workflow config."""
    record_file = Path(path) / "lmmvqa.json"
    if not record_file.exists():
        raise UserError(f"{path}: not a model folder (no lmmvqa.json)")
    return json.loads(record_file.read_text())


def weight_parts_of(record: dict) -> list[str]:
    """The LLM weight parts a model record says its folder holds (`llm`, `adapter`; [] = none)."""
    w = record.get("llm_weights") or "source"
    return [] if w == "source" else w.split("+")


def file_digest(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def scoring_extraction(path: str | Path, model_record: dict) -> dict:
    """The feature extraction settings a model folder records (`extraction`), its quality adapter, when it
    has one, resolved to the copy the folder holds (checked against its recorded sha256, and against the
    adapter its quality prior was fitted on). Folders written before they held a copy fall back to the
    adapter file their features recorded, when it is still there with the same hash. Whatever is missing
    is an error naming the file."""
    path = Path(path)
    if "extraction" not in model_record:
        raise UserError(f"{path}: the model folder does not record its feature extraction settings "
                        "(trained by an older version); retrain it")
    extraction = copy.deepcopy(model_record["extraction"])
    vision = (extraction.get("models") or {}).get("vision") or {}
    if not vision.get("adapted"):
        return extraction
    record = model_record.get("quality_adapter")
    if record:
        file = path / record["file"]
        if not file.is_file():
            raise UserError(f"{file}: the model's quality adapter file is missing (adapter hash {record.get('hash')}, "
                            f"sha256 {record.get('sha256')}): the model's features need it; copy the model folder "
                            "whole, or retrain it")
        if sha256_of(file) != record["sha256"]:
            raise UserError(f"{file}: not the model's quality adapter (sha256 {sha256_of(file)}, the model folder "
                            f"records {record['sha256']})")
        want = record.get("hash")
    else:  # an older folder: the adapter file its features recorded (a path relative to the run's folder)
        stored = (model_record.get("vision") or {}).get("adapted") or {}
        want = stored.get("hash")
        file = Path(stored["file"]) if stored.get("file") else None
        if file is None or not file.is_file():
            raise UserError(f"{path}: the model was trained on features of a quality adapter (hash {want}) and holds "
                            f"no copy of it ({path / ADAPTER_FILE}), and the adapter file its features recorded "
                            f"({file}) is not there either: retrain the model (its folder then holds the adapter)")
    got = _adapter_hash(file)
    prior = (model_record.get("quality_prior") or {}).get("adapter")
    for name, expected in (("the model folder records", want), ("its quality prior was fitted on", prior)):
        if expected and got != expected:
            raise UserError(f"{file}: quality adapter {got}, {name} adapter {expected}")
    vision["adapted"] = str(file.resolve())
    return extraction


def _adapter_hash(file: Path) -> str | None:
    from pipeline.features.encoding.quality_adapter import read_meta

    try:
        return read_meta(file).get("hash")
    except Exception as e:  # truncated / not safetensors / no adapter header
        raise UserError(f"{file}: not a readable quality adapter file ({type(e).__name__}: {e})") from None


def projector_for(record: dict) -> Projector:
    """A projector shaped as a model record says (its recorded settings; the paper's when none)."""
    return Projector(record["vision_width"], record["motion_dim"], record["llm_width"], record["pooling"],
                     projector_settings(record.get("projector")))


def load_projector_state(path: Path) -> dict[str, torch.Tensor]:
    """The projector weights of a model folder, checked against the projector's keys."""
    f = Path(path) / "projector.safetensors"
    if not f.exists():
        raise UserError(f"{path}: no projector.safetensors")
    state = load_file(str(f))
    expected = projector_for(read_model_config(path)).state_dict()
    check_missing(f, sorted(set(expected) - set(state)), sorted(set(state) - set(expected)))
    return state


def check_compatible(init, init_record: dict, record: dict, tokenizer) -> None:
    """A model to continue from must have the same shapes, LLM and placeholder as the new one."""
    for key in ("vision_width", "vision_tokens", "motion_dim", "pooling", "llm_width", "placeholder_token"):
        if init_record.get(key) != record.get(key):
            raise UserError(f"{init}: cannot continue from this model: {key} is {init_record.get(key)!r} there "
                            f"and {record.get(key)!r} here")
    if projector_settings(init_record.get("projector")) != projector_settings(record.get("projector")):
        raise UserError(f"{init}: cannot continue from this model: its projector settings "
                        f"{projector_settings(init_record.get('projector'))} differ from this one's "
                        f"{projector_settings(record.get('projector'))}")
    if (init_record.get("llm") or {}).get("source") != record["llm"]["source"]:
        raise UserError(f"{init}: cannot continue from this model: its LLM is {init_record['llm'].get('source')!r}, "
                        f"this one's {record['llm']['source']!r}")
    init_tok = Path(init) / "tokenizer"
    if init_tok.exists():
        if load_tokenizer(init_tok).get_vocab() != tokenizer.get_vocab():
            raise UserError(f"{init}: cannot continue from this model: its tokenizer differs from this one's")


def save_model_folder(model, path: str | Path, extra: dict | None = None) -> Path:
    """Write `model`'s folder (into a temporary sibling, renamed into place)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.projector.state_dict().items()}
    save_file(state, str(tmp / "projector.safetensors"), metadata={"format": "pt"})
    record = dict(model.config)
    parts = model.weight_parts()
    if "llm" in parts:
        base = model.base_llm()
        sd = None
        if "adapter" in parts:  # the base weights without the LoRA layers peft injected
            sd = {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items() if "lora_" not in k}
        base.save_pretrained(str(tmp / "llm"), state_dict=sd)
    if "adapter" in parts:
        model.llm.save_pretrained(str(tmp / "adapter"))
    record["llm_weights"] = "+".join(parts) or "source"
    model.tokenizer.save_pretrained(str(tmp / "tokenizer"))
    if extra:
        record.update(extra)
    (tmp / "lmmvqa.json").write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    readable_by_all(tmp)  # the weights are written 0600 by safetensors; a model folder is for everyone to read
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, path)
    return path


def load_model_folder(cls, path: str | Path, device: str | torch.device = "cpu", dtype: str | None = None):
    """An instance of `cls` (LMMVQA) from a model folder on `device` (cpu, cuda, cuda:N or auto), the
    LLM straight onto it, in `dtype` (default: the dtype recorded at training, `lmmvqa.json` `dtype`;
    float32 for folders that record none). Weights missing from any file are an error naming them."""
    path = Path(path)
    record = read_model_config(path)
    device = resolve_device(device)
    name = dtype or record.get("dtype") or record["llm"].get("dtype") or "float32"
    if name not in DTYPES:
        raise UserError(f"unknown dtype '{name}' (one of {', '.join(DTYPES)})")
    tokenizer = load_tokenizer(path / "tokenizer")
    parts = weight_parts_of(record)
    if record["llm"].get("source") is None and "llm" not in parts:
        raise UserError(f"{path}: its LLM was built at random init and the folder does not hold its weights "
                        "(written by an older version under LoRA); retrain it")
    llm = load_llm(record["llm"], tokenizer, dtype=DTYPES[name], device=device,
                   weights=path / "llm" if "llm" in parts else None)
    if "adapter" in parts:
        llm = load_adapter(llm, path / "adapter")
    projector = projector_for(record)
    projector.load_state_dict(load_projector_state(path))
    model = cls(llm, tokenizer, projector, record)
    model.set_trainable()
    return model.to(device).eval()
