"""`lmmvqa` command line: one subcommand per stage, each implemented by one module of the package.

Each module named in COMMANDS defines `configure_parser(parser)` and `main(args) -> int`.
Modules are imported lazily so `lmmvqa --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from pipeline.core.errors import UserError

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo-data": ("pipeline.ingest.demo.dataset", "generate the synthetic demo dataset (videos + generic label CSV)"),
    "synth-plan": ("pipeline.synth.plan", "plan a synth dataset: references, segments, one row per graded variant"),
    "synth-segments": ("pipeline.synth.segments", "cut one reference's planned segments to lossless files"),
    "synth-variants": ("pipeline.synth.variants", "encode one shard of variants and score them against their segments"),
    "synth-labels": ("pipeline.synth.collect", "gather a synth dataset's shards: generic label file, videos, failures"),
    "manifest": ("pipeline.ingest.manifest", "label file + video folder -> manifest table (+ missing table)"),
    "probe": ("pipeline.ingest.probe", "probe the videos of a manifest (duration, fps, size, codec, ...)"),
    "extract": ("pipeline.features.extract", "decode a shard of videos once; the preset's vision and motion features into a Zarr store"),
    "adapt-encoder": ("pipeline.features.encoding.adapt_encoder", "learn a quality adapter on the frozen vision tokens from synth "
                      "datasets (full-reference labels, no MOS)"),
    "feature-stats": ("pipeline.features.stores.stats", "dataset-level feature statistics with dask (out of core, optionally distributed)"),
    "prompts": ("pipeline.prompts.shards", "build Q&A prompt shards (JSONL) for a dataset"),
    "tokenizer": ("pipeline.model.tokenizer", "train the tokenizer of an LLM built at random init (tiny, offline presets) on prompt shards"),
    "train": ("pipeline.training.train", "train the projector (+ LoRA / LLM) from cached features and prompts"),
    "evaluate": ("pipeline.evaluation.evaluate", "predict scores for a test set from cached features, with metrics"),
    "aggregate": ("pipeline.evaluation.aggregate", "aggregate the folds of a `folds: all` experiment (each fold, mean, std, median)"),
    "report": ("pipeline.evaluation.report", "write the HTML report of experiments"),
    "score": ("pipeline.evaluation.score_files", "score video files with a trained model (decode -> features -> model)"),
    "ship": ("pipeline.evaluation.ship", "a trained model + its cross-validated figures -> a model folder to commit "
             "(the one `lmmvqa score` uses when it has no other, with its card)"),
    "launch": ("pipeline.launch", "run a command on N GPUs of this machine (train: DDP through torchrun)"),
    "fetch-weights": ("pipeline.features.encoding.fetch", "download the pretrained weights a preset names (where there is "
                      "internet), for offline runs"),
    "plan": ("pipeline.plan", "what a config will cost: jobs per stage, disk per feature store, GPU memory per stage"),
}
# commands no rule runs (no code version of their own)
TOOLS = ("score", "ship", "launch", "fetch-weights", "plan")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmmvqa", description="LMM-VQA video quality assessment pipeline")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or only == name:
            importlib.import_module(module).configure_parser(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=command if command in COMMANDS else "")
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        if getattr(args, "device", None) in ("cuda", "auto"):
            from pipeline.core.devices import assign_device

            args.device = assign_device(args.device)  # a GPU of its own when the box has several
        return int(module.main(args) or 0)
    except UserError as exc:
        print(f"lmmvqa {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if not offline_weights_missing(exc):
            raise
        print(f"lmmvqa {args.command}: error: pretrained weights are not on this machine and jobs run offline "
              "(HF_HUB_OFFLINE=1): run `lmmvqa fetch-weights --preset paper` where there is internet, then set "
              f"HF_HOME / TORCH_HOME or models.<role>.source as it prints ({str(exc).splitlines()[0][:160]})",
              file=sys.stderr)
        return 2


# what huggingface_hub / transformers say when an offline run lacks a model's files
OFFLINE_MESSAGES = ("outgoing traffic has been disabled", "couldn't find them in the cached files",
                    "offline mode", "local_files_only")


def offline_weights_missing(exc: OSError) -> bool:
    """Whether an error is a hub model missing from the local cache while offline."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    text = str(exc).lower()
    return offline and (type(exc).__name__ == "LocalEntryNotFoundError" or any(m in text for m in OFFLINE_MESSAGES))


if __name__ == "__main__":
    sys.exit(main())
