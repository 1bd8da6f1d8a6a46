"""Code-version values: a short hash of the source a stage runs.

Rules put these in `params:`, so editing a stage's code reruns that stage (and what depends on it)
and nothing else. What a stage runs is derived, not listed by hand: the stage's command module
(`cli.COMMANDS`) and every module of the package it imports, directly or through others (imports
inside functions included), plus the package data files those modules name (`presets.yaml`, the
template bank, ...). A list kept by hand drifted: it missed modules a stage imported.

This module is left out (and not followed): it computes the hashes and changes no stage's output.
"""
from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

from pipeline.cli import COMMANDS, TOOLS

PACKAGE = Path(__file__).parents[1]
PACKAGE_NAME = PACKAGE.name
_SELF = __name__


def stage_module(stage: str) -> str:
    """The command module of a stage (`demo_data` or `demo-data` -> `pipeline.ingest.demo.dataset`)."""
    return COMMANDS[stage.replace("_", "-")][0]


def _module_file(module: str, root: Path) -> Path | None:
    """File of a module of the package under `root` (None when it is not one of ours)."""
    parts = module.split(".")
    if parts[0] != PACKAGE_NAME:
        return None
    base = root.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _resolve(node: ast.ImportFrom, current: str, is_package: bool) -> str:
    """Absolute module name of a `from X import ...` (relative levels resolved against `current`)."""
    if not node.level:
        return node.module or ""
    base = current.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, root: Path) -> set[str]:
    """Package modules that `module` imports anywhere in its source (function-level imports too)."""
    path = _module_file(module, root)
    return {m for m in _imported_names(path.read_text(), module, path.name == "__init__.py")
            if _module_file(m, root) is not None}


@lru_cache(maxsize=4096)
def _imported_names(source: str, module: str, is_package: bool) -> frozenset[str]:
    tree = ast.parse(source)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node, module, is_package)
            found.add(target)
            # `from . import paths` names a module; `from pipeline.core.config import deep_merge` a name in one
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return frozenset(found)


def _parents(module: str) -> list[str]:
    """Packages whose __init__ runs when `module` is imported."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_closure(module: str, root: Path = PACKAGE) -> list[str]:
    """`module` and every package module it imports, directly or indirectly (sorted)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current in seen or current == _SELF or _module_file(current, root) is None:
            continue
        seen.add(current)
        todo.extend(_imports(current, root) | set(_parents(current)))
    return sorted(seen)


def _data_files(modules: list[str], root: Path) -> list[Path]:
    """Package data files (not .py) whose file name appears as a string in one of the modules."""
    data = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts:
            data.setdefault(path.name, []).append(path)
    used: set[Path] = set()
    for module in modules:
        for name in _string_constants(_module_file(module, root).read_text()) & data.keys():
            used.update(data[name])
    return sorted(used)


@lru_cache(maxsize=4096)
def _string_constants(source: str) -> frozenset[str]:
    return frozenset(node.value for node in ast.walk(ast.parse(source))
                     if isinstance(node, ast.Constant) and isinstance(node.value, str))


def stage_sources(stage: str, root: Path = PACKAGE) -> list[str]:
    """Files (relative to the package) whose content defines a stage's output."""
    modules = import_closure(stage_module(stage), root)
    files = [_module_file(m, root) for m in modules] + _data_files(modules, root)
    return sorted({f.relative_to(root).as_posix() for f in files})


@lru_cache(maxsize=None)
def code_version(stage: str, root: Path = PACKAGE) -> str:
    digest = hashlib.sha256()
    for rel in stage_sources(stage, root):
        digest.update(rel.encode())
        digest.update((root / rel).read_bytes())
    return digest.hexdigest()[:12]


STAGES = tuple(sorted(name.replace("-", "_") for name in COMMANDS if name not in TOOLS))
