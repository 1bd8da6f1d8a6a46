"""Code-version values: a short hash of the source of the modules a stage runs.

Rules put these in `params:`, so editing a stage's code reruns that stage (and what depends on it)
and nothing else.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).parent

# stage -> files (relative to the package) whose content defines the stage's output
STAGE_SOURCES: dict[str, tuple[str, ...]] = {
    "demo_data": ("demo_data.py",),
    "manifest": ("labels.py", "manifest.py"),
    "probe": ("probe.py",),
    "extract": ("decode.py", "probe.py", "encoders.py", "extract.py", "store.py", "presets.yaml"),
    "prompts": ("prompts.py", "data/templates.yaml"),
    "tokenizer": ("tokenizer.py",),
    "train": ("lmm.py", "train.py", "feature_store.py"),
    "evaluate": ("lmm.py", "constrained.py", "evaluate.py", "predict.py", "answers.py", "metrics.py",
                 "feature_store.py"),
    "feature_stats": ("feature_stats.py", "feature_store.py"),
    "aggregate": ("aggregate.py", "metrics.py", "experiments.py"),
    "report": ("report.py", "metrics.py"),
}


@lru_cache(maxsize=None)
def code_version(stage: str) -> str:
    digest = hashlib.sha256()
    for rel in STAGE_SOURCES[stage]:
        path = PACKAGE / rel
        digest.update(rel.encode())
        digest.update(path.read_bytes() if path.exists() else b"<missing>")
    return digest.hexdigest()[:12]
