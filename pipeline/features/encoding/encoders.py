"""The two frozen encoders: the vision role (key frames) and the motion role (one-second chunks).

Every preset goes through the same functions; only the spec differs (the resolved `ModelSpec.as_dict()`).
The spec's `arch` picks the family: CLIP vision tower or an ImageNet CNN's statistics (`mobilenet_v2`) for the
vision role, SlowFast trunk or parameter-free temporal statistics (`temporal_stats`) for the motion role:

* no `source` and no `weights` -> the preset's `config` is built at random init from a fixed seed
  (`tiny`), so the features are identical across runs and machines (CPU, fp32);
* `weights` -> a weight file inside an installed package, sha256-checked (`offline`);
* otherwise `source` is a hub id or a local folder/file with pretrained weights (`paper`).

Each loader returns the model and an info dict that the feature store keeps as its attributes, with
the role's provenance (`arch`, `detail`, `weights`: file + sha256, folder, hub id + revision, random
init or none; pipeline/core/provenance.py).

Vision: transformers `CLIPVisionModel`. Random init: `CLIPVisionConfig(**config)`; pretrained:
`CLIPVisionModel.from_pretrained(source)` (a full CLIP checkpoint such as openai/clip-vit-large-patch14
or a folder written by `save_pretrained`). Output per key frame = `last_hidden_state`, all tokens
(CLS + patches): [tokens, width]. Input: uint8 RGB frames already resized to `image_size` (decoding/views.py),
scaled to [0, 1] and normalised with CLIP's mean / std.

Motion: pytorchvideo `create_slowfast` trunk = every block before the pooling + head, then a global
average pool of each pathway: [slow_dim + fast_dim] per chunk (R50: 2048 + 256 = 2304). Random init:
`create_slowfast` with the spec config (keys: `model_depth` (18/50/101), `stem_dim_out` (slow
pathway stem width; the fast one is stem_dim_out / ratio), `slowfast_channel_reduction_ratio`,
`input_size` (the chunk frame size, used by decode), plus any other scalar create_slowfast keyword).
Pretrained: `source` = `slowfast_r50` (the architecture with create_slowfast's defaults, weights from
the torch hub cache / the pytorchvideo URL) or a local checkpoint file (`torch.load(weights_only=True)`,
either pytorchvideo's `{"model_state": state_dict}` or a plain state dict; keys may carry a `net.`
prefix as written by `SlowFastTrunk.state_dict()`). Input: uint8 chunks [T, H, W, 3], normalised with
mean 0.45 / std 0.225; fast pathway = all T frames, slow pathway = every `slow_stride`-th frame.
The fusion convolutions stride time by `slow_stride`, so chunk_frames must be a multiple of it.

Statistics encoders (statistics_encoders.py): `arch: mobilenet_v2` / `efficientnet_lite0` (the
`offline` preset's vision role: per-channel statistics of an ImageNet CNN's blocks, `CNNStats`) and
`arch: temporal_stats` (a parameter-free motion role, `TemporalStats`), loaded through the same
`load_vision` / `load_motion` and run by the same `encode_keyframes` / `encode_chunks`.

Quality adapter (`models.vision.adapted`, pipeline/features/encoding/quality_adapter.py): when the vision spec
carries `adapted` ({file, hash, sha256, base_hash}: `Adapter.record()`), `load_vision` wraps the base model
of either family in `AdaptedVision`, whose tokens are the base tokens ++ the adapter's embedding.
"""
from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.core import provenance
from pipeline.core.devices import (
    resolve_device,  # the one device resolution (extractor.py calls it as encoders.resolve_device)
)
from pipeline.core.errors import UserError
from pipeline.features.encoding.quality_adapter import AdaptedVision, load_adapter
from pipeline.features.encoding.statistics_encoders import (CNNStats, TemporalStats, TwoViewStats, load_cnn_stats,
                                                            load_temporal_stats)
from pipeline.features.encoding.weights import check_loaded, loading_missing

SEED = 1234
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
KINETICS_MEAN = 0.45
KINETICS_STD = 0.225
SLOWFAST_R50_URL = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics/SLOWFAST_8x8_R50.pyth"
SLOWFAST_ARCHS = {"slowfast_r50": {"model_depth": 50}, "slowfast_r101": {"model_depth": 101}}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Spec dtype, else fp32 on CPU (this CPU has no bf16 units) and fp16 on CUDA."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype:
        return getattr(torch, dtype)
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def _seeded(seed: int):
    """Fork the global RNG, so building a model at random init neither reads nor changes it."""
    ctx = torch.random.fork_rng(devices=[])
    ctx.__enter__()
    torch.manual_seed(seed)
    return ctx


# ---------------------------------------------------------------------------------------------
# Vision: CLIP (or a CNN's statistics, statistics_encoders.py)
# ---------------------------------------------------------------------------------------------
def vision_io(model) -> tuple[int, tuple, tuple]:
    """(input size, mean, std) of a vision model of either kind (adapted or not)."""
    if isinstance(model, AdaptedVision):
        return vision_io(model.base)
    if isinstance(model, (CNNStats, TwoViewStats)):
        return model.image_size, model.mean, model.std
    return model.config.image_size, CLIP_MEAN, CLIP_STD


def load_vision(spec: dict, device="cpu", dtype=None, seed: int = SEED, view: tuple[str, int] = ("stretch", 7)):
    """-> (vision model in eval mode on device/dtype, info {source, config, tokens, width, image_size}).

    `arch` null/`clip` -> CLIPVisionModel; a CNN arch (`mobilenet_v2`) -> CNNStats. With `whole_frame`
    (a second CNN spec), both in TwoViewStats: the main CNN on the key-frame view `view` = (keyframe_mode,
    fragment_grid) of the whole frame, the second on the whole frame. With `adapted` ({hash, file}:
    `Adapter.record()`), any of them wrapped in AdaptedVision (tokens = base ++ adapter)."""
    if spec.get("adapted"):
        return _load_adapted(spec, device, dtype, seed, view)
    if spec.get("whole_frame"):
        return _load_two_view(spec, device, dtype, seed, view)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype or spec.get("dtype"), device)
    if spec.get("arch") not in (None, "clip"):
        model, info = load_cnn_stats(spec)
        model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        return model, {**info, "dtype": str(dtype).replace("torch.", "")}
    from transformers import CLIPVisionConfig, CLIPVisionModel  # CLIP runs only: the offline preset never needs it

    source = spec.get("source")
    overrides = dict(spec.get("config") or {})
    if source:
        model, loading = CLIPVisionModel.from_pretrained(str(source), output_loading_info=True, **overrides)
        check_loaded(source, loading_missing(loading))
    else:
        ctx = _seeded(seed)
        try:
            model = CLIPVisionModel(CLIPVisionConfig(**overrides))
        finally:
            ctx.__exit__(None, None, None)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    c = model.config
    info = {
        "source": source, "config": overrides if not source else {**overrides, "model_type": c.model_type},
        "tokens": (c.image_size // c.patch_size) ** 2 + 1, "width": c.hidden_size,
        "image_size": c.image_size, "patch_size": c.patch_size, "layers": c.num_hidden_layers,
        "dtype": str(dtype).replace("torch.", ""), "arch": "clip",
        "detail": f"patch {c.patch_size}, width {c.hidden_size}, {c.num_hidden_layers} layers, {c.image_size} px",
        "weights": provenance.pretrained_weights(source) if source else provenance.random_init(seed),
    }
    return model, info


def _load_two_view(spec: dict, device, dtype, seed, view: tuple[str, int]):
    """The main CNN of `spec` on the key-frame view + the `whole_frame` CNN on the whole frame."""
    main, info = load_vision({k: v for k, v in spec.items() if k != "whole_frame"}, device, dtype, seed)
    whole, whole_info = load_vision({**spec["whole_frame"], "dtype": spec.get("dtype")}, device, dtype, seed)
    if not isinstance(main, CNNStats) or not isinstance(whole, CNNStats):
        raise UserError("models.vision.whole_frame: both the vision arch and the whole-frame arch must be CNN "
                        f"statistics archs (mobilenet_v2, efficientnet_lite0), got {info['arch']} and "
                        f"{whole_info['arch']}")
    mode, grid = view
    model = TwoViewStats(main, whole, mode, grid).eval().requires_grad_(False)
    whole_name = provenance.ARCH_NAMES.get(whole_info["arch"], whole_info["arch"])
    info = {**info, "tokens": model.tokens, "width": model.width, "main_width": main.width, "view": mode,
            "detail": f"{info['detail']} of the {mode} view ++ {whole_name} {whole_info['detail']} of the whole frame",
            "whole_frame": {k: whole_info[k] for k in ("arch", "config", "width", "detail", "weights", "source")}}
    return model, info


def _load_adapted(spec: dict, device, dtype, seed, view: tuple[str, int] = ("stretch", 7)):
    """The base vision model of `spec` + the quality adapter its `adapted` names (file and hash checked)."""
    base_spec = {k: v for k, v in spec.items() if k != "adapted"}
    base, info = load_vision(base_spec, device, dtype, seed, view)
    base_hash = spec["adapted"].get("base_hash")
    adapter, meta = load_adapter(spec["adapted"]["file"], spec["adapted"].get("hash"), base_hash)
    if adapter.width != info["width"]:
        raise UserError(f"{spec['adapted']['file']}: adapter for width {adapter.width}, the vision model gives "
                        f"{info['width']} (adapter hash {meta.get('hash')}, expected {spec['adapted'].get('hash')})")
    model = AdaptedVision(base, adapter.to(next(base.parameters()).device)).eval().requires_grad_(False)
    info = {**info, "width": model.width, "base_width": info["width"],
            "detail": f"{info['detail']} ++ quality adapter ({meta.get('objective')}, {adapter.dim}-d)",
            "adapted": {"file": str(spec["adapted"]["file"]), "hash": meta.get("hash"),
                        "base_hash": meta.get("base_hash"), "objective": meta.get("objective"),
                        "datasets": meta.get("datasets"), "weights": provenance.file_weights(spec["adapted"]["file"])}}
    return model, info


@torch.inference_mode()
def encode_keyframes(model, frames_uint8, device=None, batch_size: int = 16) -> np.ndarray:
    """uint8 [n, S, S, 3] (S = the model's image_size) -> float32 [n, tokens, width] last hidden state.
    A list of uint8 [n_i, h_i, w_i, 3] arrays (`keyframe_mode: native`: each video at its own size) is
    encoded array by array, in order, and needs a CNN model (its statistics pool over any size)."""
    if isinstance(frames_uint8, (list, tuple)):
        parts = [_encode_keyframes(model, f, device, batch_size, any_size=True) for f in frames_uint8]
        return np.concatenate(parts) if parts else _encode_keyframes(model, np.zeros((0, 1, 1, 3), np.uint8),
                                                                     device, batch_size, any_size=True)
    return _encode_keyframes(model, frames_uint8, device, batch_size)


def _encode_keyframes(model, frames_uint8: np.ndarray, device=None, batch_size: int = 16,
                      any_size: bool = False) -> np.ndarray:
    param = next(model.parameters())
    device = torch.device(device) if device is not None else param.device
    size, mean, std = vision_io(model)
    frames = np.asarray(frames_uint8)
    cnn = isinstance(model, (CNNStats, TwoViewStats, AdaptedVision))
    if any_size and not cnn:
        raise ValueError("key frames of any size (keyframe_mode: native) need a CNN vision arch, not CLIP")
    if frames.ndim != 4 or frames.shape[3] != 3 or (not any_size and frames.shape[1:] != (size, size, 3)):
        raise ValueError(f"key frames must be uint8 [n, {size}, {size}, 3], got {frames.shape}")
    mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=device).view(1, 3, 1, 1)
    out = []
    for i in range(0, len(frames), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(frames[i : i + batch_size])).to(device, non_blocking=True)
        x = (x.permute(0, 3, 1, 2).float().div_(255.0) - mean) / std
        h = model(x.to(param.dtype)) if cnn else model(pixel_values=x.to(param.dtype)).last_hidden_state
        out.append(h.float().cpu().numpy())
    if not out:
        if cnn:
            return np.zeros((0, model.tokens, model.width), np.float32)
        c = model.config
        return np.zeros((0, (size // c.patch_size) ** 2 + 1, c.hidden_size), np.float32)
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------------
# Motion: SlowFast trunk
# ---------------------------------------------------------------------------------------------
class SlowFastTrunk(nn.Module):
    """A pytorchvideo SlowFast `Net` without its pooling + head; forward -> pooled [B, slow+fast]."""

    def __init__(self, net: nn.Module, slow_stride: int, slow_dim: int, fast_dim: int, input_size: int):
        super().__init__()
        self.net = net
        self.slow_stride = slow_stride
        self.slow_dim, self.fast_dim, self.input_size = slow_dim, fast_dim, input_size
        self.n_trunk = len(net.blocks) - 2  # drop PoolConcatPathway + head

    def forward(self, fast: torch.Tensor) -> torch.Tensor:
        """fast: normalised [B, 3, T, H, W]; slow = every slow_stride-th frame."""
        x = [fast[:, :, :: self.slow_stride].contiguous(), fast]
        for block in self.net.blocks[: self.n_trunk]:
            x = block(x)
        return torch.cat([x[0].mean(dim=(2, 3, 4)), x[1].mean(dim=(2, 3, 4))], dim=1)


def _motion_kwargs(config: dict, slow_stride: int) -> tuple[dict, int, int, int]:
    """The SlowFast builder's keyword arguments from a motion spec's `config` (a model config, not the
    workflow config) -> (kwargs, input size, slow and fast feature widths)."""
    conf = copy.deepcopy(config)
    input_size = int(conf.pop("input_size", 224))
    ratio = conf.get("slowfast_channel_reduction_ratio", 8)
    ratio = int(ratio[0] if isinstance(ratio, (list, tuple)) else ratio)
    stem = int(conf.pop("stem_dim_out", 64))
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in conf.items()}
    kwargs.setdefault("model_depth", 50)
    kwargs["slowfast_channel_reduction_ratio"] = (ratio,)
    kwargs["stem_dim_outs"] = (stem, max(1, stem // ratio))
    kwargs["slowfast_fusion_conv_stride"] = (slow_stride, 1, 1)
    kwargs.setdefault("slowfast_fusion_conv_kernel_size", (7, 1, 1))
    slow_dim = stem * 32  # 4 stages: stem*4, *8, *16, *32
    return kwargs, input_size, slow_dim, slow_dim // ratio


def _read_state_dict(path: Path) -> dict:
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model_state" in state:
        state = state["model_state"]
    elif isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict")
    return {k[4:] if k.startswith("net.") else k: v for k, v in state.items()}


def load_motion(spec: dict, device="cpu", dtype=None, slow_stride: int = 4, seed: int = SEED):
    """-> (motion model in eval mode, info {source, config, dim, input_size, ...}).

    `arch` null / slowfast -> SlowFastTrunk; `temporal_stats` -> TemporalStats."""
    if spec.get("arch") == "temporal_stats":
        return load_temporal_stats(spec, device, slow_stride)
    if spec.get("arch") not in (None, "slowfast"):
        raise ValueError(f"unknown motion arch {spec.get('arch')!r} (slowfast or temporal_stats)")

    with warnings.catch_warnings():  # pytorchvideo imports use torch.jit.script (deprecated)
        warnings.simplefilter("ignore", FutureWarning)
        from pytorchvideo.models.slowfast import create_slowfast

    device = resolve_device(device)
    dtype = resolve_dtype(dtype or spec.get("dtype"), device)
    source = spec.get("source")
    config = dict(spec.get("config") or {})
    arch = dict(SLOWFAST_ARCHS.get(str(source), {})) if source else {}
    kwargs, input_size, slow_dim, fast_dim = _motion_kwargs({**arch, **config}, slow_stride)
    ctx = _seeded(seed)
    try:
        net = create_slowfast(**kwargs)
    finally:
        ctx.__exit__(None, None, None)
    record = provenance.random_init(seed)
    if source:
        if str(source) in SLOWFAST_ARCHS:
            if source != "slowfast_r50":
                raise ValueError(f"no known checkpoint for {source}: give a local checkpoint path as source")
            cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(SLOWFAST_R50_URL).name
            if not cached.is_file() and os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
                raise UserError(f"SlowFast R50 weights not in {cached.parent} and jobs run offline: run `lmmvqa "
                                "fetch-weights --preset paper` where there is internet (same TORCH_HOME), or set "
                                "models.motion.source to the checkpoint file")
            state = torch.hub.load_state_dict_from_url(SLOWFAST_R50_URL, map_location="cpu", weights_only=True)
            state = state.get("model_state", state)
            cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(SLOWFAST_R50_URL).name
            record = {"kind": "url", "url": SLOWFAST_R50_URL, "file": str(cached),
                      "sha256": provenance.sha256_of(cached) if cached.is_file() else None}
        else:
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"SlowFast checkpoint not found: {path} (a file saved with torch.save)")
            state = _read_state_dict(path)
            record = provenance.file_weights(path)
        result = net.load_state_dict(state, strict=False)
        check_loaded(source, result.missing_keys, result.unexpected_keys)
    model = SlowFastTrunk(net, slow_stride, slow_dim, fast_dim, input_size)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    info = {
        "source": source, "config": config, "dim": slow_dim + fast_dim, "slow_dim": slow_dim,
        "fast_dim": fast_dim, "input_size": input_size, "slow_stride": slow_stride,
        "dtype": str(dtype).replace("torch.", ""), "arch": "slowfast",
        "detail": f"depth {kwargs['model_depth']}, {input_size} px chunks, slow + fast pathways pooled",
        "weights": record,
    }
    return model, info


@torch.inference_mode()
def encode_chunks(model, chunks_uint8: np.ndarray, slow_stride: int | None = None, device=None,
                  batch_size: int = 4, frame_ids: np.ndarray | None = None) -> np.ndarray:
    """uint8 [n, T, S, S, 3] -> float32 [n, dim]. `frame_ids` [n, T]: source frame index of each chunk
    frame (used by TemporalStats to skip frames that repeat only through resampling)."""
    if isinstance(model, TemporalStats):
        chunks = np.asarray(chunks_uint8)
        out = []
        for i in range(0, len(chunks), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(chunks[i : i + batch_size])).to(device or model.luma.device)
            ids = None if frame_ids is None else torch.from_numpy(np.asarray(frame_ids[i : i + batch_size]))
            out.append(model(x.permute(0, 4, 1, 2, 3), ids).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, model.dim), np.float32)
    param = next(model.parameters())
    device = torch.device(device) if device is not None else param.device
    if slow_stride is not None and slow_stride != model.slow_stride:
        raise ValueError(f"the model was built for slow_stride={model.slow_stride}, not {slow_stride}")
    chunks = np.asarray(chunks_uint8)
    if chunks.ndim != 5 or chunks.shape[-1] != 3:
        raise ValueError(f"chunks must be uint8 [n, T, H, W, 3], got {chunks.shape}")
    if chunks.shape[1] % model.slow_stride:
        raise ValueError(f"chunk_frames={chunks.shape[1]} is not a multiple of slow_stride={model.slow_stride}")
    out = []
    for i in range(0, len(chunks), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(chunks[i : i + batch_size])).to(device, non_blocking=True)
        x = (x.permute(0, 4, 1, 2, 3).float().div_(255.0) - KINETICS_MEAN) / KINETICS_STD
        out.append(model(x.to(param.dtype)).float().cpu().numpy())
    if not out:
        return np.zeros((0, model.slow_dim + model.fast_dim), np.float32)
    return np.concatenate(out)
