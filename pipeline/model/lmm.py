"""The LMM-VQA model: spatiotemporal projector + a causal LLM answering quality questions.

Visual path (per video, see ../shared/SPEC.md step 3):

* key-frame tokens `spatial [K, T, Wv]` (CLIP last hidden state per key frame) and motion vectors
  `motion [S, M]` (SlowFast per second) come from the feature store;
* motion projector: Linear(M -> Wv) + LayerNorm, one token per second, joined to the key-frame
  tokens; every token position is pooled over time (masked mean by default, or max; ragged K / S
  handled by masks) -> T + 1 tokens of width Wv;
* spatial projector: one `nn.TransformerEncoderLayer` at width Wv -> Linear(Wv -> LLM width) ->
  LayerNorm -> the T + 1 visual embeddings;
* they replace the single `<video>` placeholder token of the prompt in `inputs_embeds`.

No dimension is hard-coded: Wv, T and M come from the feature store (attrs `vision.width`,
`vision.tokens`, `motion.dim`, or the arrays' shapes), the LLM width from the LLM's config.

Prompt formatting lives in `PromptFormatter` (pipeline/model/prompt_format.py) only: the tiny tokenizer
(no chat template) uses plain text `"<video> {question} Answer:"` followed by the answer tokens and
eos; a tokenizer with a chat template (paper: Llama-3-8B-Instruct) gets the user turn
`"<video>\\n{question}"` through `apply_chat_template(..., add_generation_prompt=True)` followed by
the answer and its eos. Batches of feature arrays are padded by `feature_store.collate_videos`.
Batches are left-padded (answers end every row at the same position), position ids follow the
attention mask, and the loss covers the answer tokens (+ eos) only.

Inference API for scoring: `generate(videos, questions, max_new_tokens, constrain=None) -> list[str]` (greedy,
batched; `constrain="score"|"level"` masks the logits so the text is always a valid answer, see
pipeline/model/constrained.py) and `candidate_logprobs(videos, questions, candidates) -> np.ndarray [B, C]`, the
log-probability of each candidate answer string as a continuation of the prompt (no eos appended,
so `"63."` is the probability that the answer's integer part is 63; pass `append_eos=True` to
score whole answers). The prompt runs once per batch; its KV cache is reused for every candidate.

Model folder (docs/DESIGN.md): `lmmvqa.json`, `projector.safetensors`, `llm/` (full LLM) or
`adapter/` (peft LoRA) or nothing (frozen pretrained LLM reloaded from its source), `tokenizer/`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig

from pipeline.core.devices import resolve_device
from pipeline.core.errors import UserError
from pipeline.core.specs import model_spec
from pipeline.features.encoders import loading_missing, missing_weights_message
from pipeline.features.store_reader import collate_videos
from pipeline.model.constrained import constraint_for, mask_logits, row_kinds
from pipeline.model.prompt_format import PromptFormatter
from pipeline.model.tokenizer import load_tokenizer, video_token

FORMAT_VERSION = 1
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ------------------------------------------------------------------ batches

def _as_batch(videos) -> dict[str, torch.Tensor]:
    return videos if isinstance(videos, dict) else collate_videos(list(videos))


def pool_time(x: torch.Tensor, mask: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """Pool x [B, N, ...] over N where mask [B, N] is True."""
    m = mask.view(*mask.shape, *([1] * (x.dim() - 2))).to(x.dtype)
    if mode == "mean":
        return (x * m).sum(1) / m.sum(1).clamp_min(1.0)
    if mode == "max":
        return x.masked_fill(m == 0, torch.finfo(x.dtype).min).amax(1)
    raise ValueError(f"unknown pooling '{mode}' (mean or max)")


# ------------------------------------------------------------------ projector

def _heads(width: int) -> int:
    for h in (16, 8, 4, 2):
        if width % h == 0 and width // h >= 32:
            return h
    return 1


class Projector(nn.Module):
    """Motion projector + time pooling + spatial projector -> [B, T + 1, llm_width]."""

    def __init__(self, vision_width: int, motion_dim: int, llm_width: int, pooling: str = "mean"):
        super().__init__()
        self.pooling = pooling
        # per-channel standardisation of the frozen features (identity until set from training data):
        # CNN statistics and temporal statistics come in very different scales
        self.register_buffer("spatial_shift", torch.zeros(vision_width))
        self.register_buffer("spatial_scale", torch.ones(vision_width))
        self.register_buffer("motion_shift", torch.zeros(motion_dim))
        self.register_buffer("motion_scale", torch.ones(motion_dim))
        self.motion_proj = nn.Sequential(nn.Linear(motion_dim, vision_width), nn.LayerNorm(vision_width))
        self.encoder = nn.TransformerEncoderLayer(vision_width, _heads(vision_width), 4 * vision_width,
                                                  dropout=0.0, batch_first=True)
        self.proj = nn.Linear(vision_width, llm_width)
        self.norm = nn.LayerNorm(llm_width)

    def set_standardization(self, moments: dict[str, np.ndarray]) -> None:
        """moments: {spatial_mean, spatial_std, motion_mean, motion_std} of the training features."""
        for role in ("spatial", "motion"):
            mean = torch.as_tensor(np.asarray(moments[f"{role}_mean"]), dtype=torch.float32)
            std = torch.as_tensor(np.asarray(moments[f"{role}_std"]), dtype=torch.float32)
            floor = 1e-2 * float(std.median()) + 1e-6  # constant channels stay ~0 instead of blowing up
            getattr(self, f"{role}_shift").copy_(mean)
            getattr(self, f"{role}_scale").copy_(std.clamp_min(floor))

    def forward(self, spatial, spatial_mask, motion, motion_mask) -> torch.Tensor:
        spatial = (spatial - self.spatial_shift) / self.spatial_scale
        motion = (motion - self.motion_shift) / self.motion_scale
        motion_tok = self.motion_proj(motion)  # [B, S, Wv]: one token per second
        s = pool_time(spatial, spatial_mask, self.pooling)  # [B, T, Wv]
        m = pool_time(motion_tok, motion_mask, self.pooling)  # [B, Wv]
        tokens = torch.cat([s, m[:, None]], dim=1)  # [B, T + 1, Wv]
        return self.norm(self.proj(self.encoder(tokens)))


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


# ------------------------------------------------------------------ the model

class LMMVQA(nn.Module):
    def __init__(self, llm, tokenizer, projector: Projector, config: dict):
        super().__init__()
        self.llm = llm
        self.projector = projector
        self.tokenizer = tokenizer
        self.config = config
        self.formatter = PromptFormatter(tokenizer, config["vision_tokens"] + 1, config.get("placeholder_token"))
        eos = {tokenizer.eos_token_id}
        gen_eos = getattr(getattr(self._base_llm(), "generation_config", None), "eos_token_id", None)
        eos |= set(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos] if gen_eos is not None else [])
        self.eos_ids = sorted(e for e in eos if e is not None)

    # ---- construction
    @classmethod
    def build(cls, cfg: dict, tokenizer, info: dict, seed: int | None = None, device: str | torch.device | None = None,
              init: str | Path | None = None) -> "LMMVQA":
        """A new model for a config, on `device` (a pretrained LLM is loaded straight onto it). The
        projector starts at random init (seeded), the LLM at random init from the preset's config
        (source None) or from its pretrained source; or both continue from the model folder `init`
        (stage 2 after stage 1: its projector, and its LLM weights when it saved them)."""
        spec = model_spec(cfg, "llm")
        tr = cfg["training"]
        device = resolve_device(device)
        seed = tr["seed"] if seed is None else seed
        lora = dict(tr["lora"])
        train_llm = resolve_train_llm(tr, spec)
        compute = training_dtype(tr, spec, device)
        weights_dtype = _llm_dtype(spec, compute, train_llm)
        if train_llm and weights_dtype == torch.float16:
            raise UserError("training all LLM weights in float16 is refused (the loss scaler needs float32 "
                            "master weights): unset models.llm.dtype or use bfloat16")
        init_cfg = _read_model_config(Path(init)) if init is not None else None
        if init_cfg is not None and "adapter" in _weight_parts(init_cfg):
            raise UserError(f"{init}: continuing from a model with a LoRA adapter is not supported "
                            "(train stage 1 without LoRA)")
        init_llm = init_cfg is not None and "llm" in _weight_parts(init_cfg)
        torch.manual_seed(seed)
        llm = _load_llm(spec, tokenizer, dtype=weights_dtype, device=device,
                        weights=Path(init) / "llm" if init_llm else None)
        if tr.get("gradient_checkpointing"):
            enable_checkpointing(llm)
        width = _llm_width(llm)
        torch.manual_seed(seed + 1)
        projector = Projector(info["vision_width"], info["motion_dim"], width, tr["pooling"])
        config = {
            "format_version": FORMAT_VERSION,
            "vision_width": info["vision_width"], "vision_tokens": info["vision_tokens"],
            "motion_dim": info["motion_dim"], "pooling": tr["pooling"], "llm_width": width,
            "placeholder_token": video_token(tokenizer),
            "vision": info.get("vision"), "motion": info.get("motion"),
            "llm": {"source": spec["source"], "config": spec["config"] if spec["source"] is None else None,
                    "dtype": spec.get("dtype")},
            # the dtype the model computes in: training's autocast dtype on CUDA (or the LLM's weight
            # dtype when set); from_pretrained loads the LLM in it
            "dtype": _dtype_name(_DTYPES[spec["dtype"]] if spec.get("dtype") else compute),
            "llm_base": "init" if init_llm else ("source" if spec["source"] else "config"),
            "train_llm": train_llm, "lora": lora if lora.get("enabled") and not train_llm else None,
            "training": {k: tr[k] for k in sorted(tr) if k != "lora"},
        }
        if init_cfg is not None:
            _check_compatible(init, init_cfg, config, tokenizer)
            projector.load_state_dict(_load_projector(Path(init)))
            config["init_from"] = {"path": str(init), "experiment": init_cfg.get("experiment"),
                                   "projector_sha1": file_digest(Path(init) / "projector.safetensors")}
        projector.to(device)
        model = cls(llm, tokenizer, projector, config)
        model.config["prompt_style"] = model.formatter.style
        if config["lora"]:
            from peft import LoraConfig, get_peft_model  # LoRA runs only

            torch.manual_seed(seed + 2)
            model.llm = get_peft_model(llm, LoraConfig(
                r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                target_modules=list(lora["target_modules"]), task_type="CAUSAL_LM"))
        model.set_trainable()
        return model

    def set_trainable(self) -> None:
        """Projector always; all LLM weights when train_llm; LoRA weights only with an adapter."""
        for p in self.projector.parameters():
            p.requires_grad_(True)
        for name, p in self.llm.named_parameters():
            if self.config.get("train_llm"):
                p.requires_grad_(True)
            elif self.config.get("lora"):
                p.requires_grad_("lora_" in name)
            else:
                p.requires_grad_(False)

    def param_groups(self, lr: float, llm_lr: float | None, weight_decay: float) -> list[dict]:
        proj = [p for p in self.projector.parameters() if p.requires_grad]
        llm = [p for p in self.llm.parameters() if p.requires_grad]
        groups = [{"params": proj, "lr": lr, "weight_decay": weight_decay}]
        if llm:
            groups.append({"params": llm, "lr": llm_lr or lr, "weight_decay": weight_decay})
        return groups

    def _base_llm(self):
        llm = self.llm
        return llm.get_base_model() if hasattr(llm, "get_base_model") else llm

    @property
    def device(self) -> torch.device:
        return next(self.projector.parameters()).device

    # ---- forward pieces
    def visual_embeds(self, videos: dict) -> torch.Tensor:
        dev = self.device
        v = {k: t.to(dev) for k, t in videos.items()}
        return self.projector(v["spatial"], v["spatial_mask"], v["motion"], v["motion_mask"])

    def input_embeds(self, videos: dict, input_ids: torch.Tensor) -> torch.Tensor:
        emb_layer = self._base_llm().get_input_embeddings()
        is_video = input_ids == self.formatter.video_id
        text = emb_layer(input_ids.masked_fill(is_video, self.formatter.pad_id))
        vis = self.visual_embeds(videos).to(text.dtype)
        if int(is_video.sum()) != vis.shape[0] * vis.shape[1]:
            raise ValueError("placeholder count does not match the visual tokens")
        return text.masked_scatter(is_video[..., None], vis.reshape(-1, vis.shape[-1]))

    def forward(self, videos: dict, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the answer tokens (labels [B, A] aligned with the last A positions)."""
        dev = self.device
        input_ids, attention_mask, labels = input_ids.to(dev), attention_mask.to(dev), labels.to(dev)
        embeds = self.input_embeds(videos, input_ids)
        A = labels.shape[1]
        out = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                       use_cache=False, logits_to_keep=A + 1)
        logits = out.logits[:, :-1].float()  # position t predicts token t + 1
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)

    def loss(self, videos, questions: Sequence[str], answers: Sequence[str]) -> torch.Tensor:
        enc = self.formatter.batch(questions, answers)
        return self(_as_batch(videos), enc["input_ids"], enc["attention_mask"], enc["labels"])

    # ---- inference
    def _prefill(self, videos, questions):
        enc = self.formatter.batch(questions)
        dev = self.device
        ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
        embeds = self.input_embeds(_as_batch(videos), ids)
        out = self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids(mask),
                       use_cache=True, logits_to_keep=1)
        return out, mask

    @torch.no_grad()
    def generate(self, videos, questions: Sequence[str], max_new_tokens: int = 8, constrain=None) -> list[str]:
        """Greedy answers, batched (left padding); decoding stops at eos.

        `constrain`: None (free greedy text), "score" or "level" for every row, or one of those per
        row: the logits are masked at each step so that a constrained row's text is always a valid
        answer of that kind (pipeline.model.constrained); its text is the concatenation of its tokens'
        decoded pieces, stripped."""
        was_training = self.training
        self.eval()
        try:
            out, mask = self._prefill(videos, questions)
            B = mask.shape[0]
            dev = mask.device
            kinds = row_kinds(constrain, B)
            n_logits = out.logits.shape[-1]
            cons = [None if k is None else constraint_for(self.tokenizer, k, self.eos_ids, n_logits) for k in kinds]
            for c in {id(c): c for c in cons if c is not None}.values():
                c.check_reachable(max_new_tokens)
            answer = [""] * B  # constrained rows: the answer text so far
            eos = torch.tensor(self.eos_ids, device=dev)
            done = torch.zeros(B, dtype=torch.bool, device=dev)
            done_rows = [False] * B
            tokens = []
            cache, logits = out.past_key_values, out.logits[:, -1]
            pos = mask.sum(-1, keepdim=True) - 1
            for step in range(max_new_tokens):
                logits = logits.float()
                if any(cons):
                    left = max_new_tokens - step
                    logits = mask_logits(logits, [None if c is None or done_rows[b] else c.allowed(answer[b].lstrip(), left)
                                                  for b, c in enumerate(cons)])
                nxt = logits.argmax(-1)
                nxt = torch.where(done, torch.full_like(nxt, self.formatter.pad_id), nxt)
                tokens.append(nxt)
                done |= torch.isin(nxt, eos)
                if any(cons):
                    for b, t in enumerate(nxt.tolist()):
                        if cons[b] is not None and not done_rows[b] and t not in self.eos_ids:
                            answer[b] = cons[b].advance(answer[b], t)
                done_rows = done.tolist()
                if all(done_rows) or step == max_new_tokens - 1:
                    break
                mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=dev)], dim=1)
                pos = pos + 1
                out = self.llm(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos,
                               past_key_values=cache, use_cache=True)
                cache, logits = out.past_key_values, out.logits[:, -1]
            gen = torch.stack(tokens, 1).tolist()
            texts = []
            for b, row in enumerate(gen):
                if cons[b] is not None:
                    texts.append(answer[b].strip())
                    continue
                cut = [t for t in row]
                for j, t in enumerate(row):
                    if t in self.eos_ids:
                        cut = row[:j]
                        break
                texts.append(self.tokenizer.decode(cut, skip_special_tokens=True).strip())
            return texts
        finally:
            self.train(was_training)

    @torch.no_grad()
    def candidate_logprobs(self, videos, questions: Sequence[str], candidates: Sequence[str],
                           append_eos: bool = False, max_pairs: int = 256) -> np.ndarray:
        """[B, C] log P(candidate tokens | prompt) (sum over the candidate's tokens). The prompt runs
        once; its KV cache is repeated for chunks of (video, candidate) pairs of at most max_pairs."""
        was_training = self.training
        self.eval()
        try:
            out, mask = self._prefill(videos, questions)
            B, dev = mask.shape[0], mask.device
            cand = [self.formatter.answer_ids(c, eos=append_eos) for c in candidates]
            if any(len(c) == 0 for c in cand):
                raise ValueError("empty candidate")
            C = len(cand)
            first = torch.log_softmax(out.logits[:, -1].float(), -1)  # [B, V]
            result = first[:, [c[0] for c in cand]].clone()  # [B, C]
            Lc = max(map(len, cand))
            if Lc == 1:
                return result.cpu().numpy()
            cache = out.past_key_values
            saved = [(layer.keys, layer.values) for layer in cache.layers]
            pos0 = mask.sum(-1) - 1  # [B] position of the last prompt token
            # rows of (video b, candidate j), chunked
            pairs = [(b, j) for b in range(B) for j in range(C)]
            step = max(1, max_pairs)
            try:
                for s in range(0, len(pairs), step):
                    chunk = pairs[s:s + step]
                    bi = torch.tensor([b for b, _ in chunk], device=dev)
                    n = len(chunk)
                    inp = torch.full((n, Lc - 1), self.formatter.pad_id, dtype=torch.long, device=dev)
                    cm = torch.zeros((n, Lc - 1), dtype=mask.dtype, device=dev)
                    tgt = torch.full((n, Lc - 1), -1, dtype=torch.long, device=dev)
                    for r, (_, j) in enumerate(chunk):
                        c = cand[j]
                        if len(c) > 1:
                            inp[r, : len(c) - 1] = torch.tensor(c[:-1])
                            cm[r, : len(c) - 1] = 1
                            tgt[r, : len(c) - 1] = torch.tensor(c[1:])
                    cache.reorder_cache(bi)
                    am = torch.cat([mask[bi], cm], dim=1)
                    pos = pos0[bi, None] + 1 + torch.arange(Lc - 1, device=dev)[None]
                    o = self.llm(input_ids=inp, attention_mask=am, position_ids=pos, past_key_values=cache, use_cache=True)
                    lp = torch.log_softmax(o.logits.float(), -1)
                    tok_lp = lp.gather(-1, tgt.clamp_min(0)[..., None])[..., 0] * (tgt >= 0)
                    add = tok_lp.sum(-1)
                    for r, (b, j) in enumerate(chunk):
                        result[b, j] += add[r]
                    for layer, (k, v) in zip(cache.layers, saved):
                        layer.keys, layer.values = k, v
            finally:
                for layer, (k, v) in zip(cache.layers, saved):
                    layer.keys, layer.values = k, v
            return result.cpu().numpy()
        finally:
            self.train(was_training)

    # ---- persistence
    def weight_parts(self) -> list[str]:
        """What the model folder holds of the LLM: `llm` (full weights: trained, random-init or taken
        from a stage-1 model, i.e. not reloadable from the source) and/or `adapter` (LoRA)."""
        parts = []
        if self.config.get("train_llm") or self.config.get("llm_base", "source" if self.config["llm"]["source"]
                                                              else "config") != "source":
            parts.append("llm")
        if self.config.get("lora"):
            parts.append("adapter")
        return parts

    def save_pretrained(self, path: str | Path, extra: dict | None = None) -> Path:
        """Write the model folder (into a temporary sibling, renamed into place)."""
        path = Path(path)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.projector.state_dict().items()}
        save_file(state, str(tmp / "projector.safetensors"), metadata={"format": "pt"})
        cfg = dict(self.config)
        parts = self.weight_parts()
        if "llm" in parts:
            base = self._base_llm()
            sd = None
            if "adapter" in parts:  # the base weights without the LoRA layers peft injected
                sd = {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items() if "lora_" not in k}
            base.save_pretrained(str(tmp / "llm"), state_dict=sd)
        if "adapter" in parts:
            self.llm.save_pretrained(str(tmp / "adapter"))
        cfg["llm_weights"] = "+".join(parts) or "source"
        self.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        if extra:
            cfg.update(extra)
        (tmp / "lmmvqa.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")
        if path.exists():
            # keep files other writers put there (train_log.csv, README.md, loss.png) only if asked to
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, path)
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", dtype: str | None = None) -> "LMMVQA":
        """Load a model folder onto `device` (cpu, cuda, cuda:N or auto), the LLM straight onto it, in
        `dtype` (default: the dtype recorded at training, `lmmvqa.json` `dtype`; float32 for folders
        that record none). Weights missing from any file are an error naming them."""
        path = Path(path)
        cfg = _read_model_config(path)
        device = resolve_device(device)
        name = dtype or cfg.get("dtype") or cfg["llm"].get("dtype") or "float32"
        if name not in _DTYPES:
            raise UserError(f"unknown dtype '{name}' (one of {', '.join(_DTYPES)})")
        tokenizer = load_tokenizer(path / "tokenizer")
        parts = _weight_parts(cfg)
        if cfg["llm"].get("source") is None and "llm" not in parts:
            raise UserError(f"{path}: its LLM was built at random init and the folder does not hold its weights "
                            "(written by an older version under LoRA); retrain it")
        llm = _load_llm(cfg["llm"], tokenizer, dtype=_DTYPES[name], device=device,
                        weights=path / "llm" if "llm" in parts else None)
        if "adapter" in parts:
            llm = _load_adapter(llm, path / "adapter")
        projector = Projector(cfg["vision_width"], cfg["motion_dim"], cfg["llm_width"], cfg["pooling"])
        projector.load_state_dict(_load_projector(path))
        model = cls(llm, tokenizer, projector, cfg)
        model.set_trainable()
        return model.to(device).eval()


# ------------------------------------------------------------------ model folders

def _read_model_config(path: Path) -> dict:
    cfg_file = path / "lmmvqa.json"
    if not cfg_file.exists():
        raise UserError(f"{path}: not a model folder (no lmmvqa.json)")
    return json.loads(cfg_file.read_text())


def _weight_parts(cfg: dict) -> list[str]:
    w = cfg.get("llm_weights") or "source"
    return [] if w == "source" else w.split("+")


def file_digest(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _load_projector(path: Path) -> dict[str, torch.Tensor]:
    """The projector weights of a model folder, checked against the projector's keys."""
    f = path / "projector.safetensors"
    if not f.exists():
        raise UserError(f"{path}: no projector.safetensors")
    state = load_file(str(f))
    cfg = _read_model_config(path)
    expected = Projector(cfg["vision_width"], cfg["motion_dim"], cfg["llm_width"], cfg["pooling"]).state_dict()
    check_missing(f, sorted(set(expected) - set(state)), sorted(set(state) - set(expected)))
    return state


def check_missing(source, missing, unexpected=()) -> None:
    """One-line error naming the weights a checkpoint lacks (they would be left at random init)."""
    if missing or unexpected:
        raise UserError(missing_weights_message(source, missing, unexpected))


def _check_compatible(init, init_cfg: dict, config: dict, tokenizer) -> None:
    """A model to continue from must have the same shapes, LLM and placeholder as the new one."""
    for key in ("vision_width", "vision_tokens", "motion_dim", "pooling", "llm_width", "placeholder_token"):
        if init_cfg.get(key) != config.get(key):
            raise UserError(f"{init}: cannot continue from this model: {key} is {init_cfg.get(key)!r} there "
                            f"and {config.get(key)!r} here")
    if (init_cfg.get("llm") or {}).get("source") != config["llm"]["source"]:
        raise UserError(f"{init}: cannot continue from this model: its LLM is {init_cfg['llm'].get('source')!r}, "
                        f"this one's {config['llm']['source']!r}")
    init_tok = Path(init) / "tokenizer"
    if init_tok.exists():
        if load_tokenizer(init_tok).get_vocab() != tokenizer.get_vocab():
            raise UserError(f"{init}: cannot continue from this model: its tokenizer differs from this one's")


# ------------------------------------------------------------------ LLM loading

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
    return _DTYPES[name]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _llm_dtype(spec: dict, compute: torch.dtype, train_llm: bool) -> torch.dtype:
    """Weights of the LLM: models.llm.dtype when set; float32 master weights when they train (autocast
    computes in the training dtype); else (frozen, or frozen under LoRA) the training dtype."""
    if spec.get("dtype"):
        return _DTYPES[spec["dtype"]]
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


def _llm_width(llm) -> int:
    cfg = llm.config
    return int(getattr(cfg, "hidden_size", None) or cfg.get_text_config().hidden_size)


def _device_map(device: torch.device) -> dict:
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return {"": str(device)}


def _load_llm(spec: dict, tokenizer, dtype=torch.float32, device: str | torch.device = "cpu",
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


def _load_adapter(llm, folder: Path):
    """peft LoRA adapter onto `llm`; adapter weights the folder lacks are an error."""
    from peft import PeftConfig, get_peft_model  # LoRA runs only

    if not (folder / "adapter_config.json").exists():
        raise UserError(f"{folder}: no adapter_config.json")
    conf = PeftConfig.from_pretrained(str(folder))
    model = get_peft_model(llm, conf)
    result = model.load_adapter(str(folder), "default", is_trainable=False)
    check_missing(folder, sorted(result.missing_keys))
    return model
