"""paths.py is the one source of artifact paths: the rules' patterns and the commands' paths agree."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.core import paths

ROOT = Path(__file__).resolve().parents[1]
RULE_FILES = sorted((ROOT / "rules").glob("*.smk")) + [ROOT / "Snakefile"]
SECTION = re.compile(r"^(\s+)(input|output|log|benchmark):\s*$")
ARTIFACT = re.compile(r"""["'](results|cache)/""")


def _sections(path: Path):
    """(rule file, section name, its text) for every input/output/log/benchmark block."""
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        m = SECTION.match(line)
        if not m:
            continue
        indent, body = len(m.group(1)), []
        for nxt in lines[i + 1:]:
            if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                break
            body.append(nxt)
        yield path.name, m.group(2), "\n".join(body)


def _code(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def test_no_rule_spells_an_artifact_path():
    by_hand = [(p.name, line.strip()) for p in RULE_FILES for line in _code(p.read_text()).splitlines()
               if ARTIFACT.search(line)]
    assert by_hand == []


def test_every_output_log_and_benchmark_comes_from_paths():
    sections = [s for p in RULE_FILES for s in _sections(p) if s[1] != "input"]
    assert len(sections) > 20
    # the demo data rule writes where the user's config says (labels file, videos folder): not an artifact
    bad = [s for s in sections if "paths." not in s[2] and "DATASETS[" not in s[2]]
    assert bad == []


@pytest.mark.parametrize("pattern, wildcards, concrete", [
    (paths.store("{dataset}", "{settings}", "{shard}"), dict(dataset="d", settings="abc", shard="00003"),
     paths.store("d", "abc", 3)),
    (paths.probe("{dataset}", "{shard}"), dict(dataset="d", shard="00012"), paths.probe("d", 12)),
    (paths.probe_failures("{dataset}", "{shard}"), dict(dataset="d", shard="00000"), paths.probe_failures("d", 0)),
    (paths.model_dir("{experiment}", "{fold}"), dict(experiment="e", fold="2"), paths.model_dir("e", 2)),
    (paths.model_dir("{experiment}", paths.FULL_MODEL), dict(experiment="e"), paths.model_dir("e", "all")),
    (paths.predictions("{experiment}", "{dataset}:{subset}", "{fold}"),
     dict(experiment="e", dataset="d", subset="test", fold="1"), paths.predictions("e", "d:test", 1)),
    (paths.metrics("{experiment}", "{dataset}:{subset}"), dict(experiment="e", dataset="lsvq", subset="test_1080p"),
     paths.metrics("e", "lsvq:test_1080p")),
])
def test_patterns_expand_to_the_paths_commands_use(pattern, wildcards, concrete):
    """A rule's pattern, its wildcards filled in as Snakemake fills them, is the path the package
    computes for the same values."""
    assert str(pattern).format(**wildcards) == str(concrete)


def test_each_test_selector_has_its_own_results_folder():
    assert str(paths.metrics("x", "lsvq:test")) == "results/eval/x/lsvq/test/metrics.json"
    assert str(paths.predictions("x", "lsvq:test_1080p", 2)) == "results/eval/x/fold2/lsvq/test_1080p/predictions.csv"
    assert str(paths.model_dir("x", "all")) == "results/models/x/all"
    for bad in ("lsvq", "../x:test", "a:b/c", "a:..", "a:", ":b"):
        with pytest.raises(ValueError, match="not a test selector"):
            paths.metrics("x", bad)


def test_log_and_benchmark_layout():
    assert str(paths.log("report")) == "results/logs/report.log"
    assert str(paths.log("extract", "d", "s", "00001")) == "results/logs/extract/d/s/00001.log"
    assert str(paths.benchmark("train", "e", paths.fold_part(3))) == "results/benchmarks/train/e/fold3.tsv"
