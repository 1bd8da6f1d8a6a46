"""`lmmvqa plan`'s training-memory estimate against a measured peak: one training step of the tiny preset
on the CPU, the bytes of its live tensors tracked op by op (`LiveTensors`: parameters, gradients,
optimizer state, activations, backward temporaries -- what `torch.cuda.max_memory_allocated` counts on a
GPU, without the allocator's rounding).

    python benchmarks/bench_plan.py [--batch 16] [--layers 2] [--out benchmarks/results/plan.json]

Prints estimate vs measured (and their ratio) per category and in total; tests/test_plan.py asserts the
total is within 30%. The paper-sized figures come from the same formulas (`lmmvqa plan --config
config/paper-lsvq.yaml`); on a GPU `benchmarks/gpu_check.sh` records the measured peak of each stage
beside them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VISION = {"vision_tokens": 197, "vision_width": 128, "motion_dim": 576}  # the tiny preset's features


def tiny_config(layers: int = 2, batch: int = 16, lora: bool = False, checkpointing: bool = False) -> dict:
    from pipeline.core.config import validate

    training = {"batch_size": batch, "gradient_checkpointing": checkpointing}
    if lora:
        training.update(train_llm=False, lora={"enabled": True, "r": 8, "alpha": 16, "dropout": 0.05})
    return validate({"datasets": {"d": {"format": "generic", "labels": "l.csv"}},
                     "models": {"preset": "tiny", "llm": {"config": {"num_hidden_layers": layers}}},
                     "training": training})


class LiveTensors:
    """A dispatch mode counting the bytes of every tensor storage alive, and the peak: each op's outputs
    are added once per storage and subtracted when the storage is freed; what exists before (weights,
    optimizer state) is added on entry through `track`."""

    def __init__(self):
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.weak import WeakIdKeyDictionary

        outer = self
        self.sizes, self.current, self.peak = WeakIdKeyDictionary(), 0, 0

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in torch.utils._pytree.tree_leaves(out):
                    if isinstance(t, torch.Tensor):
                        outer.add(t)
                return out

        self.mode = Mode()

    def add(self, t) -> None:
        import weakref

        st = t.untyped_storage()
        if st in self.sizes or st.nbytes() == 0:
            return
        self.sizes[st] = n = st.nbytes()
        self.current += n
        self.peak = max(self.peak, self.current)
        weakref.finalize(st, self._free, n)

    def _free(self, n: int) -> None:
        self.current -= n

    def track(self, tensors) -> None:
        for t in tensors:
            self.add(t)

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def measure(cfg: dict, keyframes: int = 4, seed: int = 0) -> dict:
    """Peak live tensor bytes of one steady-state training step (the optimizer state exists) of the
    model `cfg` builds, on a batch of `training.batch_size` real prompts (score and level questions)."""
    import numpy as np
    import torch

    from pipeline.core import resolve
    from pipeline.features.stores.store_reader import collate_videos
    from pipeline.model.lmm import LMMVQA, enable_checkpointing
    from pipeline.model.tokenizer import train_tokenizer
    from pipeline.prompts.shards import load_templates, question_for

    torch.set_num_threads(2)
    bank = load_templates()
    tok = train_tokenizer([{"question": q, "answer": "1.5"} for q in bank["score"] + bank["level"]])
    s = resolve.of(cfg)
    model = LMMVQA.build(s.models["llm"], s.training, s.prompts, tok, VISION, seed=seed)
    if cfg["training"]["gradient_checkpointing"]:
        enable_checkpointing(model.base_llm())
    model.train()
    b = int(cfg["training"]["batch_size"])
    rng = np.random.default_rng(seed)
    videos = [(rng.normal(size=(keyframes, VISION["vision_tokens"], VISION["vision_width"])).astype(np.float32),
               rng.normal(size=(keyframes, VISION["motion_dim"])).astype(np.float32)) for _ in range(b)]
    kinds = ["score" if i % 2 == 0 else "level" for i in range(b)]
    questions = [question_for(f"v{i}", k, 0, bank)[1] for i, k in enumerate(kinds)]
    answers = ["63.215" if k == "score" else "fair" for k in kinds]
    batch = collate_videos(videos)
    enc = model.formatter.batch(questions, answers)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step():
        loss = model(batch, enc["input_ids"], enc["attention_mask"], enc["labels"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # the optimizer state now exists: the next step is the steady state
    live = LiveTensors()
    state = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    live.track([*model.parameters(), *model.buffers(), *state])
    before = live.current
    with live:
        step()
    return {"total": live.peak, "parts": {"before_step": before, "step_peak": live.peak - before},
            "seq": int(enc["input_ids"].shape[1]),
            "answer": int(enc["labels"].shape[1]), "vocab": len(tok), "trainable": sum(p.numel() for p in params)}


def estimate(cfg: dict, measured: dict) -> dict:
    """The plan's figure for the same run: its shapes from the config, the same tokens per sample."""
    from pipeline.core import resolve
    from pipeline.core.settings import as_dict
    from pipeline.model.lmm import resolve_train_llm
    from pipeline.plan import model_shapes, training_memory

    s = resolve.resolve(cfg, validated=True)
    shapes = model_shapes(s.models, s.features.sampling, vocab=measured["vocab"], training=s.training)
    tr = s.training
    train_llm = resolve_train_llm(as_dict(tr), s.models["llm"].as_dict())
    return training_memory(shapes, tr, measured["seq"], measured["answer"], train_llm, "float32", "float32",
                           bool(tr.gradient_checkpointing))


def compare(layers: int, batch: int, lora: bool = False, checkpointing: bool = False) -> dict:
    cfg = tiny_config(layers, batch, lora, checkpointing)
    m = measure(cfg)
    e = estimate(cfg, m)
    return {"layers": layers, "batch": batch, "mode": e["mode"], "checkpointing": checkpointing, "seq": m["seq"],
            "measured": m, "estimate": e,
            "ratio": e["total"] / m["total"], "trainable_params": [m["trainable"], e["trainable_params"]]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--layers", type=int, nargs="+", default=[2, 4])
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "plan.json"))
    args = p.parse_args(argv)
    rows = [compare(n, args.batch, lora, ckpt) for n in args.layers for lora in (False, True) for ckpt in (False, True)]
    print(f"{'run (tiny preset, CPU, float32)':<46}{'seq':>5}{'measured MiB':>14}{'estimate MiB':>14}{'ratio':>7}")
    for r in rows:
        name = f"{r['mode']}, {r['layers']} layers, batch {r['batch']}, ckpt {'on' if r['checkpointing'] else 'off'}"
        print(f"{name:<46}{r['seq']:>5}"
              f"{r['measured']['total'] / 2**20:>14.1f}{r['estimate']['total'] / 2**20:>14.1f}{r['ratio']:>7.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
