"""Code-version values: what a code change reruns."""
from __future__ import annotations

from pipeline.versions import PACKAGE, STAGE_SOURCES, code_version


def test_every_listed_source_exists():
    missing = [(stage, f) for stage, files in STAGE_SOURCES.items() for f in files if not (PACKAGE / f).exists()]
    assert missing == []


def test_reader_changes_do_not_rerun_extraction():
    """Re-extracting LSVQ costs GPU-days: only what decides a store's bytes belongs to extraction."""
    assert "feature_store.py" not in STAGE_SOURCES["extract"] and "store.py" in STAGE_SOURCES["extract"]
    assert "feature_store.py" in STAGE_SOURCES["train"] and "feature_store.py" in STAGE_SOURCES["evaluate"]
    assert "predict.py" in STAGE_SOURCES["evaluate"]


def test_code_version_is_a_stable_short_hash():
    assert code_version("extract") == code_version("extract") and len(code_version("extract")) == 12
    assert code_version("extract") != code_version("train")
