"""`lmmvqa plan --config C`: what a config will cost before it runs -- jobs per stage, disk per feature
store and GPU memory per stage -- computed from the config, the label files / manifests and the
models' shapes, not guessed.

    lmmvqa plan --config config/paper-lsvq.yaml [--seconds 10] [--text-tokens N] [--json OUT]

* Jobs: per dataset, its videos (the manifest when built, else the label files' rows) and shards; per
  experiment its training runs (stage 1 and 2, per fold, all folds), evaluations and aggregates.
* Disk: per video, key frames x tokens x width and seconds x motion dim in the store dtypes, with the
  probe tables' durations where they exist, else `--seconds` (uncompressed: zstd gains little here).
* Cluster resources: per rule family (pipeline/core/resources.py), partition kind, GPUs, threads, memory, time.
* GPU memory (bytes of live tensors at the peak; the CUDA caching allocator adds fragmentation on top):
  model shapes from the models' config (built on the `meta` device: exact parameter counts, no memory;
  the projector of each run's `training.projector` settings);
  sequence = visual tokens (tokens per key frame + 1 motion token) + the prompt's text tokens.
  - training, per run: weights (frozen LLM in the training dtype, trained ones float32) + gradients
    (float32, trained weights) + AdamW state (2 x float32) + activations kept for backward
    (per decoder layer and token, c = bytes of the compute dtype; RMSNorm keeps its float32 input):
      full LLM training: 2 x (4h + c h) norms + c (h + 4h + h + h) attention (q/k/v/out kept by SDPA,
        projection inputs) + 4 c I MLP = 8h + 9ch + 4cI
      frozen LLM (gradients still flow to the projector): 8h + 4ch + 3cI (no projection inputs kept)
      LoRA adds the inputs of its target modules (one per distinct input; with dropout a copy each)
      gradient checkpointing: c h per layer (its input), plus one layer recomputed in backward
    + projector activations (per visual token 2W inputs (W = vision width), w if narrowed to width w, (4 + 2m) w
      per layer of MLP ratio m, h out: 14W + h for the paper's) + embeddings (2ch per token)
    + logits of the answer positions (fp32 copy + log-softmax) + backward working memory ((3I + h) c per
    token of one layer). Checked against the tiny preset's measured CPU peak (tests/test_plan.py, within 30%).
  - evaluation: weights + the prompt's KV cache for `evaluation.batch_size` videos + the probability
    score's candidate pass (the KV cache for 256 (video, answer) rows) + their logits.
  - extraction: encoder weights + a batch of key frames (CLIP: tokens x (3W + I) per frame; a CNN: its
    32-channel map at full size, a whole frame at the cap) and chunks (SlowFast's 2 largest maps).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from pipeline.core import paths, resolve, resources
from pipeline.core.errors import UserError
from pipeline.core.settings import as_dict

if TYPE_CHECKING:
    from pipeline.core.settings import (Dataset, EvaluationSettings, Experiment, FeatureSettings, ModelSpec,
                                        PromptSettings, Sampling, Settings, TrainingSettings)

GIB = 2 ** 30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# The config.json shapes of the paper's pretrained models, for planning where they are not downloaded.
KNOWN_SHAPES = {
    "openai/clip-vit-large-patch14": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                                      "num_attention_heads": 16, "image_size": 224, "patch_size": 14},
    "meta-llama/Meta-Llama-3-8B-Instruct": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                                            "num_attention_heads": 32, "num_key_value_heads": 8,
                                            "vocab_size": 128256, "tie_word_embeddings": False,
                                            "max_position_embeddings": 8192},
}
CNN_SHAPES = {  # CNN statistics archs: channels per block (Lite0: stem, MBConv, head), parameters, default blocks
    "mobilenet_v2": ([32, 16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320, 1280], 3_504_872,
                     [1, 3, 6, 13, 17]),
    "efficientnet_lite0": ([32, 16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320, 1280],
                           4_652_008, [12, 13, 14, 15])}
DEFAULT_TEXT_TOKENS = 64  # prompt text around the visual tokens, when no tokenizer is at hand to count them
CANDIDATE_ROWS = 256  # (video, answer) rows of the probability score's candidate pass (LMMVQA.candidate_logprobs)


# ------------------------------------------------------------------ model shapes

def _local_file(source: str | None, name: str) -> Path | None:
    """A file of a model that is here: in a local folder or the Hugging Face cache (never the network)."""
    if not source:
        return None
    path = Path(str(source)).expanduser() / name
    if path.is_file():
        return path
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(source), name)
    except Exception:  # noqa: BLE001 - not a hub id
        return None
    return Path(cached) if isinstance(cached, str) else None


def _hub_config(source: str | None) -> dict | None:
    """config.json of a model: a local folder or the Hugging Face cache, else KNOWN_SHAPES."""
    found = _local_file(source, "config.json")
    return json.loads(found.read_text()) if found else KNOWN_SHAPES.get(str(source))


def _count(build) -> int:
    import torch

    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def vision_shape(vision: "ModelSpec") -> dict:
    spec = vision.as_dict()
    if not spec.get("whole_frame"):
        return _vision_spec_shape(spec)
    main, whole = _vision_spec_shape(spec), _vision_spec_shape(spec["whole_frame"])  # tokens concatenated
    side = int(spec["whole_frame"]["max_short_side"])  # the whole frame at most 16:9 at the cap
    return {**main, "kind": f"{main['kind']}+{whole['kind']}", "width": main["width"] + whole["width"],
            "params": main["params"] + whole["params"], "whole_pixels": side * math.ceil(side * 16 / 9)}


def _vision_spec_shape(spec: dict) -> dict:
    if spec.get("arch") in CNN_SHAPES:
        (channels, params, blocks), conf = CNN_SHAPES[spec["arch"]], spec["config"]
        return {"kind": spec["arch"], "tokens": 1 + conf.get("grid", 3) ** 2, "params": params,
                "width": 2 * sum(channels[b] for b in conf.get("blocks", blocks)),
                "image_size": conf.get("image_size", 224), "intermediate": 0, "layers": 0}
    from transformers import CLIPVisionConfig, CLIPVisionModel

    hub = _hub_config(spec.get("source")) or {}
    hub = hub.get("vision_config", hub)
    conf = CLIPVisionConfig(**{**{k: v for k, v in hub.items() if k in CLIPVisionConfig().to_dict()},
                               **(spec.get("config") or {})})
    return {"kind": "clip", "tokens": (conf.image_size // conf.patch_size) ** 2 + 1, "width": conf.hidden_size,
            "intermediate": conf.intermediate_size, "layers": conf.num_hidden_layers,
            "image_size": conf.image_size, "params": _count(lambda: CLIPVisionModel(conf))}


def motion_shape(motion: "ModelSpec", sampling: "Sampling") -> dict:
    spec = motion.as_dict()
    if spec.get("arch") == "temporal_stats":
        return {"kind": "temporal_stats", "dim": 10, "params": 0, "input_size": spec["config"].get("input_size", 64),
                "stem": 0, "ratio": 1}
    from pipeline.features.encoding.encoders import SLOWFAST_ARCHS, _motion_kwargs

    arch = dict(SLOWFAST_ARCHS.get(str(spec.get("source")), {})) if spec.get("source") else {}
    config = {**arch, **(spec.get("config") or {})}
    kwargs, size, slow, fast = _motion_kwargs(config, int(sampling.slow_stride))

    def build():
        import warnings

        with warnings.catch_warnings():  # pytorchvideo's torch.jit.script use (deprecated)
            warnings.simplefilter("ignore", FutureWarning)
            from pytorchvideo.models.slowfast import create_slowfast
        return create_slowfast(**kwargs)

    return {"kind": "slowfast", "dim": slow + fast, "params": _count(build), "input_size": size,
            "stem": kwargs["stem_dim_outs"][0], "ratio": kwargs["slowfast_channel_reduction_ratio"][0]}


def llm_shape(llm: "ModelSpec", vocab: int | None = None) -> dict:
    from transformers import AutoModelForCausalLM, LlamaConfig

    spec = llm.as_dict()
    hub = _hub_config(spec.get("source")) or {}
    conf = {**{k: v for k, v in hub.items() if k in LlamaConfig().to_dict()}, **(spec.get("config") or {})}
    if vocab:
        conf["vocab_size"] = vocab
    conf.setdefault("tie_word_embeddings", False)
    lc = LlamaConfig(**conf)
    heads = lc.num_attention_heads
    return {"hidden": lc.hidden_size, "intermediate": lc.intermediate_size, "layers": lc.num_hidden_layers,
            "heads": heads, "kv_heads": lc.num_key_value_heads or heads, "head_dim": lc.hidden_size // heads,
            "vocab": lc.vocab_size, "params": _count(lambda: AutoModelForCausalLM.from_config(lc))}


def projector_shape(vision_width: int, motion_dim: int, llm_width: int, training: "TrainingSettings | None" = None) -> dict:
    """Parameters of the projector a run builds (its `training.projector`; None: the paper's) and the elements it
    keeps for backward per visual token before its LLM-width output (module docstring)."""
    from pipeline.model.projector import Projector, projector_settings

    s = projector_settings(as_dict(training) if training is not None else None)
    width = int(s["width"] or vision_width)
    kept = 2 * vision_width + (width != vision_width) * width + int(s["layers"] * (4 + 2 * s["mlp_ratio"]) * width)
    return {"projector_params": _count(lambda: Projector(vision_width, motion_dim, llm_width, settings=s)),
            "projector_activations": kept}


def lora_params(llm: dict, lora) -> int:
    h, kv = llm["hidden"], llm["kv_heads"] * llm["head_dim"]
    dims = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
            "gate_proj": (h, llm["intermediate"]), "up_proj": (h, llm["intermediate"]),
            "down_proj": (llm["intermediate"], h)}
    return llm["layers"] * sum(lora.r * sum(dims[m]) for m in lora.target_modules if m in dims)


def text_tokens(llm: "ModelSpec", prompts: "PromptSettings",
                default: int = DEFAULT_TEXT_TOKENS) -> tuple[int, int, str]:
    """(prompt text tokens, answer tokens, how they were found): counted with the LLM's tokenizer when it is
    at hand (a local folder / cache, or the tokenizer trained for an LLM without a source), else the default."""
    try:
        from pipeline.model.prompt_format import PromptFormatter
        from pipeline.model.tokenizer import load_tokenizer
        from pipeline.prompts.shards import load_templates

        source = paths.tokenizer_dir() if llm.source is None else llm.source
        if _local_file(source, "tokenizer_config.json") is None:
            raise FileNotFoundError(source)  # neither a folder nor in the local cache: never the network
        tok = load_tokenizer(source)
        bank = load_templates(prompts.templates)
        fmt = PromptFormatter(tok, n_visual=1)
        questions = [q for qs in bank.values() for q in qs]  # a video's questions (an image's differ by a word)
        enc = fmt.batch(questions, ["63.215"] * len(questions))
        return int(enc["input_ids"].shape[1]) - 1, int(enc["labels"].shape[1]), f"counted with {source}"
    except Exception:  # noqa: BLE001 - no tokenizer here: the default
        return default, 8, f"assumed ({default} text tokens; --text-tokens)"


# ------------------------------------------------------------------ memory

def _c(dtype: str) -> int:
    return DTYPE_BYTES[dtype]


def layer_activation_bytes(llm: dict, c: int, mode: str, lora) -> float:
    """Bytes one decoder layer keeps for backward per token (see the module docstring)."""
    h, inter = llm["hidden"], llm["intermediate"]
    if mode == "full":
        return 8 * h + 9 * c * h + 4 * c * inter
    out = 8 * h + 4 * c * h + 3 * c * inter  # frozen weights: norms' fp32 inputs, SDPA's q/k/v/out, the MLP
    if lora and lora.enabled:
        inputs = {"q_proj": ("attn", h), "k_proj": ("attn", h), "v_proj": ("attn", h), "o_proj": ("o", h),
                  "gate_proj": ("mlp", h), "up_proj": ("mlp", h), "down_proj": ("down", inter)}
        targets = [inputs[m] for m in lora.target_modules if m in inputs]
        if lora.dropout > 0:
            out += sum((c + 1) * size for _, size in targets)  # a dropout copy (+ its mask) per module
        else:
            out += sum(c * size for size in dict(targets).values())  # one input per group shares its tensor
    return out


def training_memory(shapes: dict, tr: "TrainingSettings", seq: int, answer: int, train_llm: bool, weights_dtype: str,
                    compute_dtype: str, checkpointing: bool) -> dict:
    """Peak bytes of one training process: weights, gradients, optimizer state, activations."""
    llm, c = shapes["llm"], _c(compute_dtype)
    b = int(tr.batch_size)
    lora = tr.lora if tr.lora.enabled and not train_llm else None
    n_proj, n_llm = shapes["projector_params"], llm["params"]
    n_lora = lora_params(llm, lora) if lora else 0
    trainable = n_proj + n_lora + (n_llm if train_llm else 0)
    weights = n_proj * 4 + n_lora * 4 + n_llm * (4 if train_llm else _c(weights_dtype))
    per_layer = layer_activation_bytes(llm, c, "full" if train_llm else "frozen", lora)
    tokens = b * seq
    if checkpointing:
        layers = llm["layers"] * c * llm["hidden"] * tokens + per_layer * tokens
    else:
        layers = llm["layers"] * per_layer * tokens
    visual = b * shapes["visual_tokens"]
    other = (visual * (shapes["projector_activations"] + llm["hidden"]) * c  # projector
             + 2 * c * llm["hidden"] * tokens + 4 * llm["hidden"] * tokens  # embeddings, final norm
             + b * (answer + 1) * llm["vocab"] * (c + 8))  # logits: output, fp32 copy, log-softmax
    transient = (3 * llm["intermediate"] + llm["hidden"]) * c * tokens
    parts = {"weights": weights, "gradients": 4 * trainable, "optimizer": 8 * trainable,
             "activations": layers + other, "backward_working": transient}
    return {"parts": parts, "total": sum(parts.values()), "trainable_params": trainable, "batch": b, "seq": seq,
            "compute_dtype": compute_dtype, "weights_dtype": "float32" if train_llm else weights_dtype,
            "checkpointing": checkpointing, "mode": "full LLM" if train_llm else ("LoRA" if lora else "frozen LLM")}


def evaluation_memory(shapes: dict, ev: "EvaluationSettings", seq: int, dtype: str) -> dict:
    llm, c = shapes["llm"], _c(dtype)
    b = int(ev.batch_size)
    kv_token = 2 * llm["layers"] * llm["kv_heads"] * llm["head_dim"] * c
    prompt_kv = b * (seq + int(ev.max_new_tokens)) * kv_token
    rows = min(CANDIDATE_ROWS, b * 101)
    parts = {"weights": llm["params"] * c + shapes["projector_params"] * 4,
             "kv_cache": prompt_kv + rows * (seq + 4) * kv_token,
             "logits": (b + rows * 4) * llm["vocab"] * 8,
             "working": b * seq * (llm["intermediate"] * 3 + 4 * llm["hidden"]) * c}
    return {"parts": parts, "total": sum(parts.values()), "batch": b, "dtype": dtype}


def extraction_memory(shapes: dict, features: "FeatureSettings", dtype: str) -> dict:
    v, m, c = shapes["vision"], shapes["motion"], _c(dtype)
    b = int(features.batch_size)
    frames = features.sampling.chunk_frames
    if v["kind"] == "clip":
        vision_act = b * v["tokens"] * (3 * v["width"] + v["intermediate"]) * c
    else:
        vision_act = b * 3 * max(v["image_size"] ** 2, v.get("whole_pixels", 0)) * 32 * c
    if m["kind"] == "slowfast":
        s = m["input_size"]
        slow_t = frames // int(features.sampling.slow_stride)
        # the two largest maps of each pathway (stem output, res2 output), kept at once by a conv
        slow = slow_t * (s // 2) ** 2 * m["stem"] + slow_t * (s // 4) ** 2 * m["stem"] * 4
        fast = frames * (s // 2) ** 2 * (m["stem"] // m["ratio"]) + frames * (s // 4) ** 2 * m["stem"] * 4 // m["ratio"]
        motion_act = b * (2 * (slow + fast) + 3 * frames * s * s) * c
    else:
        motion_act = b * 3 * frames * m["input_size"] ** 2 * 4
    parts = {"weights": (v["params"] + m["params"]) * c, "vision_batch": vision_act, "motion_batch": motion_act,
             "outputs": b * (v["tokens"] * v["width"] + m["dim"]) * 4}
    return {"parts": parts, "total": parts["weights"] + max(vision_act, motion_act) + parts["outputs"],
            "batch": b, "dtype": dtype}


# ------------------------------------------------------------------ jobs and disk

# typical clip lengths (seconds) of the datasets' official releases, for disk figures before probing
TYPICAL_SECONDS = {"lsvq": 8, "konvid": 8, "live_vqc": 10, "youtube_ugc": 20, "live_gaming": 8}


def dataset_videos(ds: "Dataset", shard_size: int) -> dict:
    """Videos, label rows and shards of a dataset: from its manifest when built, else its label files."""
    import pandas as pd

    size = int(shard_size)
    manifest = paths.manifest(ds.name)
    if manifest.is_file():
        df = pd.read_csv(manifest, usecols=["id", "shard"])
        return {"videos": len(df), "shards": int(df["shard"].nunique()), "from": str(manifest)}
    if ds.generate:
        n = int(ds.generate["n_videos"])
        return {"videos": n, "shards": math.ceil(n / size), "from": "generated"}
    try:
        from pipeline.ingest.labels import read_labels

        rows = len(read_labels(ds.format, ds.label_files, ds.mos_scale))
    except (UserError, OSError, ValueError) as exc:
        return {"videos": None, "shards": None, "from": f"unknown ({exc})"}
    return {"videos": rows, "shards": math.ceil(rows / size), "from": "label files"}


def durations(ds: "Dataset", default: float) -> tuple[list[float] | None, float, str]:
    """(probed durations or None, mean seconds, where it came from)."""
    import pandas as pd

    folder = paths.probe(ds.name, 0).parent
    files = sorted(folder.glob("shard-*.csv")) if folder.is_dir() else []
    files = [f for f in files if not f.name.endswith(".failures.csv")]
    if files:
        d = pd.concat([pd.read_csv(f, usecols=["duration"]) for f in files])["duration"].dropna().tolist()
        if d:
            return d, float(sum(d) / len(d)), f"probed ({len(d)} videos)"
    if ds.format in TYPICAL_SECONDS:
        return None, float(TYPICAL_SECONDS[ds.format]), f"typical {ds.format} clip length"
    return None, float(default), "--seconds"


def store_bytes(features: "FeatureSettings", shapes: dict, seconds: list[float] | None, n: int | None,
                mean: float) -> dict:
    s, f = features.sampling, features
    if n is None:
        return {"spatial": None, "motion": None, "total": None}

    def per_video(t: float) -> tuple[float, float]:
        kf = max(1, min(int(s.max_keyframes), math.ceil(t * float(s.keyframe_fps))))
        sec = max(1, min(int(s.max_seconds), math.ceil(t)))
        return (kf * shapes["vision"]["tokens"] * shapes["vision"]["width"] * DTYPE_BYTES[f.spatial_dtype],
                sec * shapes["motion"]["dim"] * DTYPE_BYTES[f.motion_dtype])

    parts = [per_video(t) for t in seconds] if seconds else [per_video(mean)]
    spatial, motion = (sum(p[i] for p in parts) * n / len(parts) for i in (0, 1))
    return {"spatial": spatial, "motion": motion, "total": spatial + motion}


def job_counts(s: "Settings", videos: dict) -> dict:
    from pipeline.prompts.selectors import test_selectors

    shards = {d: v["shards"] for d, v in videos.items()}
    known = all(v is not None for v in shards.values())
    n_shards = sum(shards.values()) if known else None
    jobs = {"manifest": len(s.datasets), "probe": n_shards, "extract": n_shards,
            "feature_stats": len(s.datasets), "prompts": len(s.datasets),
            "tokenizer": 1 if s.trains_tokenizer else 0, "train (stage 1)": 0, "train": 0, "evaluate": 0,
            "aggregate": 0, "report": 1 if s.experiments else 0}
    for exp in s.experiments.values():
        folds = exp.folds
        runs = 1 if folds is None else len(folds) + 1  # per fold + the model on every fold
        jobs["train"] += runs
        jobs["train (stage 1)"] += runs if exp.stage1 is not None else 0
        tests = len(test_selectors(exp))
        jobs["evaluate"] += tests * (1 if folds is None else len(folds))
        jobs["aggregate"] += 0 if folds is None else tests
    return jobs


# ------------------------------------------------------------------ the plan

def model_shapes(models: Mapping[str, "ModelSpec"], sampling: "Sampling", vocab: int | None = None,
                 training: "TrainingSettings | None" = None) -> dict:
    """The shapes of the three models (`models`: role -> ModelSpec) and the projector (of `training`) between them."""
    vision, motion = vision_shape(models["vision"]), motion_shape(models["motion"], sampling)
    if vocab is None and models["llm"].source is None:  # the LLM uses the tokenizer trained on the prompts
        vocab = 512  # not trained yet (no folder: a missing folder's name would be looked up on the hub)
        if Path(paths.tokenizer_dir()).is_dir():
            from pipeline.model.tokenizer import load_tokenizer

            vocab = len(load_tokenizer(paths.tokenizer_dir()))
    llm = llm_shape(models["llm"], vocab)
    return {"vision": vision, "motion": motion, "llm": llm, "visual_tokens": vision["tokens"] + 1,
            **projector_shape(vision["width"], motion["dim"], llm["hidden"], training)}


def training_runs(experiments: Mapping[str, "Experiment"]) -> list[tuple[str, int | None, "TrainingSettings"]]:
    """(experiment, stage, training settings) of every distinct training run of the config."""
    runs = []
    for name, exp in experiments.items():
        if exp.stage1 is not None:
            runs.append((name, 1, exp.run_training(1)))
        runs.append((name, None, exp.run_training()))
    return runs


def plan(s: "Settings", seconds: float = 10.0, text: int | None = None, vocab: int | None = None) -> dict:
    """Every figure of `lmmvqa plan` for a resolved config."""
    from pipeline.model.lmm import resolve_train_llm

    shapes = model_shapes(s.models, s.features.sampling, vocab, s.training)
    n_text, n_answer, text_from = text_tokens(s.models["llm"], s.prompts) if text is None else (text, 8, "--text-tokens")
    seq = shapes["visual_tokens"] + n_text
    on_gpu = resources.on_gpu(s.device)
    llm, llm_hidden = s.models["llm"], shapes["llm"]["hidden"]
    videos = {d: dataset_videos(ds, s.features.shard_size) for d, ds in s.datasets.items()}
    disk = {}
    for d, v in videos.items():
        secs, mean, where = durations(s.datasets[d], seconds)
        disk[d] = {**store_bytes(s.features, shapes, secs, v["videos"], mean), "videos": v["videos"],
                   "mean_seconds": mean, "seconds_from": where}
    training = []
    for name, stage, tr in training_runs(s.experiments):
        train_llm = resolve_train_llm(as_dict(tr), llm.as_dict())
        compute = (tr.dtype or ("bfloat16" if llm.source else "float32")) if on_gpu else "float32"
        weights = llm.dtype or compute
        run_shapes = {**shapes, **projector_shape(shapes["vision"]["width"], shapes["motion"]["dim"], llm_hidden, tr)}
        for ckpt in (False, True):
            m = training_memory(run_shapes, tr, seq, n_answer, train_llm, weights, compute, ckpt)
            training.append({"experiment": name, "stage": stage or (2 if s.experiments[name].stage1 else None),
                             "gpus": tr.gpus, **m, "configured": ckpt == bool(tr.gradient_checkpointing)})
    eval_dtype = (s.training.dtype or ("bfloat16" if llm.source else "float32")) if on_gpu else "float32"
    enc_dtype = s.models["vision"].dtype or ("float16" if on_gpu else "float32")
    return {"shapes": shapes, "sequence": {"visual": shapes["visual_tokens"], "text": n_text, "answer": n_answer,
                                           "total": seq, "text_from": text_from},
            "videos": videos, "jobs": job_counts(s, videos), "disk": disk, "training": training,
            "evaluation": evaluation_memory(shapes, s.evaluation, seq, eval_dtype),
            "extraction": extraction_memory(shapes, s.features, enc_dtype), "cluster": resources.cluster_table(s)}


def _gib(x) -> str:
    return "?" if x is None else f"{x / GIB:.1f} GiB" if x >= GIB / 10 else f"{x / 2**20:.0f} MiB"


def report_lines(p: dict) -> list[str]:
    sh, seq = p["shapes"], p["sequence"]
    out = [f"models: vision {sh['vision']['kind']} {sh['vision']['params'] / 1e6:.1f}M params "
           f"({sh['vision']['tokens']} tokens x {sh['vision']['width']}); motion {sh['motion']['kind']} "
           f"{sh['motion']['params'] / 1e6:.1f}M (dim {sh['motion']['dim']}); LLM {sh['llm']['params'] / 1e9:.2f}B "
           f"(h {sh['llm']['hidden']}, {sh['llm']['layers']} layers, vocab {sh['llm']['vocab']}); projector "
           f"{sh['projector_params'] / 1e6:.1f}M",
           f"sequence: {seq['visual']} visual + {seq['text']} text tokens = {seq['total']} ({seq['text_from']}); "
           f"answer {seq['answer']} tokens", "", "jobs per stage:"]
    out += [f"  {k:<16} {'?' if v is None else v}" for k, v in p["jobs"].items()]
    out += ["", "feature stores (uncompressed):"]
    for d, v in p["disk"].items():
        out.append(f"  {d:<14} {v['videos'] or '?':>7} videos x {v['mean_seconds']:.0f} s ({v['seconds_from']}): "
                   f"key frames {_gib(v['spatial'])}, motion {_gib(v['motion'])}")
    totals = [v["total"] for v in p["disk"].values()]
    out.append(f"  {'total':<14} {_gib(None if None in totals else sum(totals))}")
    out += ["", "GPU memory per process (live tensors at the peak; allocator overhead comes on top):"]
    for t in p["training"]:
        stage = f" stage {t['stage']}" if t["stage"] else ""
        flag = "" if t["configured"] else "  (the other setting)"
        parts = ", ".join(f"{k} {_gib(v)}" for k, v in t["parts"].items())
        out.append(f"  train {t['experiment']}{stage} [{t['mode']}, batch {t['batch']} x {t['seq']} tokens, "
                   f"{t['compute_dtype']}, checkpointing {'on' if t['checkpointing'] else 'off'}]: "
                   f"{_gib(t['total'])} = {parts}{flag}")
    for name in ("evaluation", "extraction"):
        m = p[name]
        out.append(f"  {name} [batch {m['batch']}, {m['dtype']}]: {_gib(m['total'])} = "
                   + ", ".join(f"{k} {_gib(v)}" for k, v in m["parts"].items()))
    out += ["", "what each job asks a scheduler for, per rule family (pipeline/core/resources.py; memory = host RAM):"]
    for f in p["cluster"]:
        gpus = f"{f['gpu']} GPU" if f["gpu"] else "no GPU"
        threads = f"{f['threads']} thread" + ("s" if f["threads"] != 1 else "")
        out.append(f"  {f['family']:<9} {f['partition']} partition, {gpus}, {threads}, {f['mem_mb']} MB, "
                   f"{f['runtime']} min: {', '.join(f['rules'])}")
    return out


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="workflow config (YAML)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="video length for disk figures where neither probe tables nor a typical length are known")
    parser.add_argument("--text-tokens", type=int, default=None,
                        help="prompt text tokens (default: counted with the LLM's tokenizer when at hand, else 64)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")


def main(args) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # shapes from local files and caches only, never the network
    p = plan(resolve.load(args.config), args.seconds, args.text_tokens)
    print("\n".join(report_lines(p)))
    if args.json:
        from pipeline.core import atomic

        atomic.write_text(args.json, json.dumps(p, indent=2, default=str) + "\n")
    return 0
