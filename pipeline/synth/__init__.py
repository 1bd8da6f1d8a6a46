"""Synthetic training data from reference clips: graded distortions scored by a full-reference metric.

plan (references -> one row per variant) -> segments (per reference: lossless cuts) -> variants (per
shard: encode + score) -> collect (generic label file + videos folder). docs/synth.md describes it.
"""
