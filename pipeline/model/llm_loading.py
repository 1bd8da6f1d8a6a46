"""Loading the LLM of a model: random init from a preset's config or `from_pretrained` of a hub id /
local folder / a model folder's `llm/`, straight onto its device in its dtype; LoRA adapters; the
dtype and trainability decisions of a run (`training.train_llm`, `training.dtype`)."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from pipeline.core.errors import UserError
from pipeline.features.encoding.weights import loading_missing, missing_weights_message

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_missing(source, missing, unexpected=()) -> None:
    """One-line error naming the weights a checkpoint lacks (they would be left at random init)."""
    if missing or unexpected:
        raise UserError(missing_weights_message(source, missing, unexpected))


def resolve_train_llm(training: dict, spec: dict) -> bool:
    """training.train_llm; null (auto) = train the whole LLM when it is built at random init."""
    v = training.get("train_llm")
    return spec.get("source") is None if v is None else bool(v)


def training_dtype(training: dict, spec: dict, device) -> torch.dtype:
    """The autocast dtype of training: `training.dtype`, or (null, auto) bfloat16 for a pretrained LLM
    on CUDA and float32 otherwise. Autocast applies on CUDA only: float32 on any other device."""
    if torch.device(device).type != "cuda":
        return torch.float32
    name = training.get("dtype")
    if name is None:
        return torch.bfloat16 if spec.get("source") else torch.float32
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def llm_dtype(spec: dict, compute: torch.dtype, train_llm: bool) -> torch.dtype:
    """Weights of the LLM: models.llm.dtype when set; float32 master weights when they train (autocast
    computes in the training dtype); else (frozen, or frozen under LoRA) the training dtype."""
    if spec.get("dtype"):
        return DTYPES[spec["dtype"]]
    if train_llm:
        return torch.float32
    return compute


def enable_checkpointing(llm) -> None:
    """Activation (gradient) checkpointing of the LLM's decoder layers (non-reentrant, so gradients
    reach the visual embeddings through a frozen LLM); active in train mode only."""
    fn = getattr(llm, "activation_checkpointing_enable", None)
    if fn is not None:
        fn(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # older transformers
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def llm_width(llm) -> int:
    conf = llm.config
    return int(getattr(conf, "hidden_size", None) or conf.get_text_config().hidden_size)


def _device_map(device: torch.device) -> dict:
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return {"": str(device)}


def load_llm(spec: dict, tokenizer, dtype=torch.float32, device: str | torch.device = "cpu",
              weights: Path | None = None):
    """Random init from the preset config (source None; seed with torch.manual_seed first, built on the
    CPU so the weights do not depend on the device), or `from_pretrained` of `weights` (a model folder's
    `llm/`) or the source (hub id or local folder), loaded straight onto `device` in `dtype` (no full
    CPU copy). Weights the checkpoint lacks are an error. Embeddings grow to the tokenizer only when
    it has more tokens than they have rows. `device` is a resolved device (`devices.resolve_device`)."""
    device = torch.device(device)
    source = weights if weights is not None else spec.get("source")
    if source is None:
        conf = dict(spec.get("config") or {})
        conf.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        conf.setdefault("tie_word_embeddings", False)
        llm = AutoModelForCausalLM.from_config(LlamaConfig(**conf), dtype=dtype, attn_implementation="sdpa")
        llm = llm.to(device)
    else:
        llm, loading = AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype, device_map=_device_map(device),
                                                            output_loading_info=True)
        check_missing(source, loading_missing(loading))
    if llm.get_input_embeddings().weight.shape[0] < len(tokenizer):
        llm.resize_token_embeddings(len(tokenizer))
    return llm


def load_adapter(llm, folder: Path):
    """peft LoRA adapter onto `llm`; adapter weights the folder lacks are an error."""
    from peft import PeftConfig, get_peft_model  # LoRA runs only

    if not (folder / "adapter_config.json").exists():
        raise UserError(f"{folder}: no adapter_config.json")
    conf = PeftConfig.from_pretrained(str(folder))
    model = get_peft_model(llm, conf)
    result = model.load_adapter(str(folder), "default", is_trainable=False)
    check_missing(folder, sorted(result.missing_keys))
    return model
