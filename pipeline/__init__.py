"""LMM-VQA video quality assessment pipeline.

The subpackages follow the pipeline: `ingest` (labels, manifest, probing, demo data) -> `features`
(decode, encode, feature stores) -> `prompts` (Q&A shards) -> `model` + `training` -> `evaluation`
(predictions, metrics, aggregate, report, scoring files); `core` is what they share (the config and
its resolved plan, paths, code versions, devices). docs/DESIGN.md draws the module graph.
"""
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"  # package data: the prompt template bank, the report template
