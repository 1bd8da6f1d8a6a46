"""Code-version values: what a code change reruns, derived from the import graph."""
from __future__ import annotations

import shutil
import textwrap

import pytest

from pipeline.core import versions
from pipeline.core.versions import PACKAGE, STAGES, code_version, import_closure, stage_sources


@pytest.fixture
def package_copy(tmp_path):
    """A copy of the package's source, to edit without touching the real one."""
    root = tmp_path / "pipeline"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _versions(root):
    return {stage: code_version(stage, root) for stage in STAGES}


def _touch(root, rel):
    path = root / rel
    path.write_text(path.read_text() + "\n# edited\n")
    code_version.cache_clear()


def test_stage_sources_follow_the_imports():
    """The modules each stage imports (directly, through others, or inside a function) are in it."""
    assert {"model/tokenizer.py", "core/resolve.py", "prompts/selectors.py", "features/stores/store_reader.py", "model/lmm.py"} <= set(stage_sources("train"))
    assert {"evaluation/predict.py", "model/answers.py", "core/metrics.py", "model/constrained.py"} <= set(stage_sources("evaluate"))
    assert {"features/decoding/decode.py", "features/decoding/sampling.py", "features/decoding/views.py", "features/encoding/encoders.py",
            "features/encoding/statistics_encoders.py", "features/stores/store_writer.py", "features/encoding/weights.py",
            "core/presets.yaml"} <= set(stage_sources("extract"))
    assert "data/templates.yaml" in stage_sources("prompts")
    assert "core/versions.py" not in stage_sources("extract")  # computes the hashes, changes no output


def test_reader_changes_do_not_rerun_extraction():
    """Re-extracting LSVQ costs GPU-days: only what decides a store's bytes belongs to extraction."""
    assert "features/stores/store_reader.py" not in stage_sources("extract")
    assert {"features/stores/store_reader.py"} <= set(stage_sources("train")) & set(stage_sources("evaluate"))


@pytest.mark.parametrize("edited", ["model/tokenizer.py", "features/stores/store_reader.py", "core/metrics.py", "features/decoding/decode.py",
                                    "features/decoding/views.py", "features/encoding/statistics_encoders.py", "core/presets.yaml"])
def test_a_module_edit_reruns_exactly_the_stages_that_import_it(package_copy, edited):
    before = _versions(package_copy)
    _touch(package_copy, edited)
    after = _versions(package_copy)
    changed = {s for s in STAGES if before[s] != after[s]}
    expected = {s for s in STAGES if edited in stage_sources(s, package_copy)}
    assert changed == expected and changed  # some stage imports each of these
    assert set(STAGES) - changed  # and some does not


def test_import_forms_are_all_followed(tmp_path):
    """Relative, absolute, `from . import x` and function-level imports all count; others do not."""
    root = tmp_path / "pipeline"
    (root / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from . import b\nfrom .sub.c import thing\n",
        "b.py": "def f():\n    import pipeline.d\n",
        "d.py": "from .sub import e\nimport numpy\n",
        "unused.py": "",
        "sub/__init__.py": "",
        "sub/c.py": "from ..b import f\nthing = 1\n",
        "sub/e.py": "NAME = 'x'\n",
    }
    for rel, text in files.items():
        (root / rel).write_text(textwrap.dedent(text))
    assert import_closure("pipeline.a", root) == [
        "pipeline", "pipeline.a", "pipeline.b", "pipeline.d", "pipeline.sub", "pipeline.sub.c", "pipeline.sub.e"]


def test_code_version_is_a_stable_short_hash():
    assert code_version("extract") == code_version("extract") and len(code_version("extract")) == 12
    assert code_version("extract") != code_version("train")
    assert versions.stage_module("demo_data") == versions.stage_module("demo-data") == "pipeline.ingest.demo.dataset"
