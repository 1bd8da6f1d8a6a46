"""The LMM-VQA model: spatiotemporal projector + a causal LLM answering quality questions.

Visual path (per video, see ../shared/SPEC.md step 3):

* key-frame tokens `spatial [K, T, Wv]` (CLIP last hidden state per key frame) and motion vectors
  `motion [S, M]` (SlowFast per second) come from the feature store;
* the projector (pipeline/model/projector.py) pools them over time into T + 1 tokens (one for the
  motion) and maps them to the LLM width: the T + 1 visual embeddings;
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

The pieces live beside it: the projector (pipeline/model/projector.py), LLM loading and dtypes
(pipeline/model/llm_loading.py), model folders on disk (pipeline/model/model_files.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from pipeline.core.devices import resolve_device
from pipeline.core.errors import UserError
from pipeline.core.settings import ModelSpec, PromptSettings, TrainingSettings, as_dict
from pipeline.features.stores.store_reader import collate_videos
from pipeline.model import objective
from pipeline.model.answers import expected_score
from pipeline.model.constrained import constraint_for, mask_logits, row_kinds
from pipeline.model.llm_loading import (  # noqa: F401  (re-exported: callers import them from here)
    DTYPES,
    check_missing,
    dtype_name,
    enable_checkpointing,
    llm_dtype,
    llm_width,
    load_llm,
    resolve_train_llm,
    training_dtype,
)
from pipeline.model.model_files import (  # noqa: F401
    FORMAT_VERSION,
    check_compatible,
    file_digest,
    load_model_folder,
    load_projector_state,
    read_model_config,
    save_model_folder,
    weight_parts_of,
)
from pipeline.model.projector import Projector, pool_time, projector_settings  # noqa: F401
from pipeline.model.prompt_format import PromptFormatter
from pipeline.model.tokenizer import video_token
from pipeline.prompts.answer_format import AnswerFormat, answer_format

def _as_batch(videos) -> dict[str, torch.Tensor]:
    return videos if isinstance(videos, dict) else collate_videos(list(videos))


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


# ------------------------------------------------------------------ the model

class LMMVQA(nn.Module):
    def __init__(self, llm, tokenizer, projector: Projector, record: dict):
        super().__init__()
        self.llm = llm
        self.projector = projector
        self.tokenizer = tokenizer
        self.config = record
        self.formatter = PromptFormatter(tokenizer, record["vision_tokens"] + 1, record.get("placeholder_token"))
        eos = {tokenizer.eos_token_id}
        gen_eos = getattr(getattr(self.base_llm(), "generation_config", None), "eos_token_id", None)
        eos |= set(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos] if gen_eos is not None else [])
        self.eos_ids = sorted(e for e in eos if e is not None)

    # ---- construction
    @classmethod
    def build(cls, llm_spec: ModelSpec, training: TrainingSettings, prompts: PromptSettings, tokenizer, info: dict,
              seed: int | None = None, device: str | torch.device | None = None,
              init: str | Path | None = None) -> "LMMVQA":
        """A new model of the LLM `llm_spec`, trained with `training`, answering in `prompts.answer_format`,
        on `device` (a pretrained LLM is loaded straight onto it). The
        projector starts at random init (seeded), the LLM at random init from the preset's record
        (source None) or from its pretrained source; or both continue from the model folder `init`
        (stage 2 after stage 1: its projector, and its LLM weights when it saved them)."""
        spec = llm_spec.as_dict()
        tr = as_dict(training)  # the `training` block, as the model record keeps it
        device = resolve_device(device)
        seed = tr["seed"] if seed is None else seed
        lora = dict(tr["lora"])
        train_llm = resolve_train_llm(tr, spec)
        compute = training_dtype(tr, spec, device)
        weights_dtype = llm_dtype(spec, compute, train_llm)
        if train_llm and weights_dtype == torch.float16:
            raise UserError("training all LLM weights in float16 is refused (the loss scaler needs float32 "
                            "master weights): unset models.llm.dtype or use bfloat16")
        init_record = read_model_config(Path(init)) if init is not None else None
        if init_record is not None and "adapter" in weight_parts_of(init_record):
            raise UserError(f"{init}: continuing from a model with a LoRA adapter is not supported "
                            "(train stage 1 without LoRA)")
        init_llm = init_record is not None and "llm" in weight_parts_of(init_record)
        torch.manual_seed(seed)
        llm = load_llm(spec, tokenizer, dtype=weights_dtype, device=device,
                        weights=Path(init) / "llm" if init_llm else None)
        if tr.get("gradient_checkpointing"):
            enable_checkpointing(llm)
        width = llm_width(llm)
        torch.manual_seed(seed + 1)
        settings = projector_settings(tr)
        projector = Projector(info["vision_width"], info["motion_dim"], width, tr["pooling"], settings)
        record = {
            "format_version": FORMAT_VERSION,
            "vision_width": info["vision_width"], "vision_tokens": info["vision_tokens"],
            "motion_dim": info["motion_dim"], "pooling": tr["pooling"], "llm_width": width, "projector": settings,
            "placeholder_token": video_token(tokenizer),
            "answer_format": answer_format(prompts.answer_format).name,
            "vision": info.get("vision"), "motion": info.get("motion"),
            "llm": {"source": spec["source"], "config": spec["config"] if spec["source"] is None else None,
                    "dtype": spec.get("dtype")},
            # the dtype the model computes in: training's autocast dtype on CUDA (or the LLM's weight
            # dtype when set); from_pretrained loads the LLM in it
            "dtype": dtype_name(DTYPES[spec["dtype"]] if spec.get("dtype") else compute),
            "llm_base": "init" if init_llm else ("source" if spec["source"] else "config"),
            "train_llm": train_llm, "lora": lora if lora.get("enabled") and not train_llm else None,
            "training": {k: tr[k] for k in sorted(tr) if k != "lora"},
        }
        if init_record is not None:
            check_compatible(init, init_record, record, tokenizer)
            projector.load_state_dict(load_projector_state(Path(init)))
            record["init_from"] = {"path": str(init), "experiment": init_record.get("experiment"),
                                   "projector_sha1": file_digest(Path(init) / "projector.safetensors")}
        projector.to(device)
        model = cls(llm, tokenizer, projector, record)
        model.config["prompt_style"] = model.formatter.style
        if record["lora"]:
            from peft import LoraConfig, get_peft_model  # LoRA runs only

            torch.manual_seed(seed + 2)
            model.llm = get_peft_model(llm, LoraConfig(
                r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                target_modules=list(lora["target_modules"]), task_type="CAUSAL_LM"))
        if objective.active(tr.get("score_loss")) and model.number_token_ids() is None:
            raise UserError(f"training.score_loss needs every score 0..100 to be one token of the tokenizer, which "
                            f"answer format '{model.answer_format.name}' does not give with this tokenizer "
                            "(set prompts.answer_format: integer, or the score_loss weights to 0)")
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

    def base_llm(self):
        llm = self.llm
        return llm.get_base_model() if hasattr(llm, "get_base_model") else llm

    @property
    def answer_format(self) -> AnswerFormat:
        """How this model writes score answers (`prompts.answer_format` at training; the paper's for
        folders written before the setting)."""
        return answer_format(self.config.get("answer_format"))

    @property
    def device(self) -> torch.device:
        return next(self.projector.parameters()).device

    # ---- forward pieces
    def visual_embeds(self, videos: dict) -> torch.Tensor:
        dev = self.device
        v = {k: t.to(dev) for k, t in videos.items()}
        return self.projector(v["spatial"], v["spatial_mask"], v["motion"], v["motion_mask"])

    def input_embeds(self, videos: dict, input_ids: torch.Tensor) -> torch.Tensor:
        emb_layer = self.base_llm().get_input_embeddings()
        is_video = input_ids == self.formatter.video_id
        text = emb_layer(input_ids.masked_fill(is_video, self.formatter.pad_id))
        vis = self.visual_embeds(videos).to(text.dtype)
        if int(is_video.sum()) != vis.shape[0] * vis.shape[1]:
            raise ValueError("placeholder count does not match the visual tokens")
        return text.masked_scatter(is_video[..., None], vis.reshape(-1, vis.shape[-1]))

    def forward(self, videos: dict, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor, scores: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy over the answer tokens (labels [B, A] aligned with the last A positions),
        plus the ordinal terms of `training.score_loss` (pipeline/model/objective.py) on the rows whose
        `scores` [B] (the MOS of score questions, NaN for others) are given."""
        dev = self.device
        input_ids, attention_mask, labels = input_ids.to(dev), attention_mask.to(dev), labels.to(dev)
        embeds = self.input_embeds(videos, input_ids)
        A = labels.shape[1]
        out = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                       use_cache=False, logits_to_keep=A + 1)
        logits = out.logits[:, :-1].float()  # position t predicts token t + 1
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        settings = (self.config.get("training") or {}).get("score_loss")
        if scores is not None and objective.active(settings):
            ids = self.number_token_ids()
            values = torch.tensor(self.answer_format.candidate_values(), device=dev)
            loss = loss + objective.score_terms(objective.first_answer_logits(logits, labels), scores.to(dev),
                                                ids.to(dev), values, settings)
        return loss

    def loss(self, videos, questions: Sequence[str], answers: Sequence[str], scores=None) -> torch.Tensor:
        enc = self.formatter.batch(questions, answers)
        s = None if scores is None else torch.tensor([float("nan") if v is None else float(v) for v in scores])
        return self(_as_batch(videos), enc["input_ids"], enc["attention_mask"], enc["labels"], s)

    def number_token_ids(self) -> torch.Tensor | None:
        """The token id of each score 0..100 in the model's answer format when each is a single,
        distinct token of the tokenizer (what the ordinal terms need), else None."""
        if not hasattr(self, "_number_ids"):
            ids = [self.formatter.answer_ids(str(int(v)), eos=False) for v in self.answer_format.candidate_values()]
            ok = all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == len(ids)
            self._number_ids = torch.tensor([i[0] for i in ids]) if ok else None
        return self._number_ids

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
            cons = [None if k is None else constraint_for(self.tokenizer, k, self.eos_ids, n_logits, self.answer_format)
                    for k in kinds]
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

    def score_logprobs(self, videos, questions: Sequence[str]) -> list[dict[str, float]]:
        """Per question, the score value of each of the answer format's 101 candidate answers
        (pipeline/prompts/answer_format.py; "0".."100") -> its log-probability: what the probability score
        and the `mbr` text answer (pipeline/model/answers.py) are computed from."""
        fmt = self.answer_format
        lp = self.candidate_logprobs(videos, questions, fmt.candidates(), append_eos=fmt.candidate_eos)
        keys = [str(int(v)) for v in fmt.candidate_values()]
        return [dict(zip(keys, map(float, row))) for row in lp]

    def prob_scores(self, videos, questions: Sequence[str]) -> np.ndarray:
        """[B] probability scores: the expected score under the model's distribution over the answer
        format's 101 candidate answers, renormalised over them."""
        return np.array([expected_score(row) for row in self.score_logprobs(videos, questions)])

    # ---- persistence (pipeline/model/model_files.py)
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
        return save_model_folder(self, path, extra)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", dtype: str | None = None) -> "LMMVQA":
        """Load a model folder onto `device` (cpu, cuda, cuda:N or auto), the LLM straight onto it, in
        `dtype` (default: the dtype recorded at training, `lmmvqa.json` `dtype`; float32 for folders
        that record none). Weights missing from any file are an error naming them."""
        return load_model_folder(cls, path, device=device, dtype=dtype)
