"""The package layout is the pipeline diagram: a stage's modules import only earlier stages and the
shared core (docs/DESIGN.md draws this graph)."""
from __future__ import annotations

from pipeline.core.versions import PACKAGE, _imports

# subpackage -> position in the data flow; the shared core (and the CLI's argument helpers) come first
ORDER = ["core", "ingest", "synth", "features", "prompts", "model", "training", "evaluation"]
ENTRY_POINTS = {"pipeline.cli", "pipeline.launch", "pipeline.workflow", "pipeline.plan"}  # they run, wire or size every stage


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if module in ("pipeline", "pipeline.cli_args"):
        return 0
    return ORDER.index(parts[1]) if len(parts) > 2 and parts[1] in ORDER else None


def _modules() -> list[str]:
    return sorted("pipeline." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts)
                  for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


def test_every_module_lives_in_a_stage_subpackage():
    loose = [m for m in _modules() if _layer(m) is None and m not in ENTRY_POINTS]
    assert loose == []


def test_stages_import_only_earlier_stages_and_the_core():
    backwards = []
    for module in _modules():
        if module in ENTRY_POINTS:
            continue
        for target in _imports(module, PACKAGE):
            if target in ENTRY_POINTS:
                # the code-version table is the command table: the one allowed reach up
                if (module, target) != ("pipeline.core.versions", "pipeline.cli"):
                    backwards.append((module, target))
            elif (_layer(target) or 0) > _layer(module):
                backwards.append((module, target))
    assert backwards == []
