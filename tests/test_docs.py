"""The README and the pages under docs/ (and benchmarks/README.md) name only things that exist: every
relative link (and its #anchor), every `lmmvqa <command>`, and every config key, whether written as a
dotted path (`training.dtype`, `models.<role>.source`, `split.k`) or in a YAML example."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from pipeline.cli import COMMANDS
from pipeline.core.config import schema

DOCS = [REPO / "README.md", REPO / "benchmarks" / "README.md", *sorted((REPO / "docs").glob("**/*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CODE_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
COMMAND = re.compile(r"\blmmvqa ([a-z][a-z-]*)\b(?![.\w])")
TOP = set(schema()["properties"])
# where a dotted key that does not start at the top of the config lives
NESTED = {"split": ("datasets", "<dataset>"), "generate": ("datasets", "<dataset>"),
          "lora": ("training",), "stage1": ("experiments", "<experiment>")}


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = CODE_BLOCK.sub("", path.read_text())
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def _links() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        text = CODE_BLOCK.sub("", doc.read_text())
        out += [(_rel(doc), m.group(1)) for m in LINK.finditer(text)
                if not re.match(r"^[a-z]+:", m.group(1))]  # http:, https:, mailto: are not checked here
    return sorted(set(out))


@pytest.mark.parametrize("doc, target", _links(), ids=[f"{d} -> {t}" for d, t in _links()])
def test_relative_link_exists(doc, target):
    path, _, anchor = target.partition("#")
    file = (REPO / doc).parent / path if path else REPO / doc
    assert file.exists(), f"{doc} links to {target}: {file.relative_to(REPO) if file.is_relative_to(REPO) else file} is missing"
    if anchor and file.suffix == ".md":
        assert anchor in _anchors(file), f"{doc} links to {target}: no heading '#{anchor}' in {path or doc}"


def _text_of(doc: Path) -> str:
    return doc.read_text()


def test_every_lmmvqa_command_named_exists():
    named = {(_rel(doc), m.group(1)) for doc in DOCS for m in COMMAND.finditer(_text_of(doc))}
    assert {c for _, c in named} >= {"score", "manifest"}  # the check sees the commands the README shows
    assert sorted((d, c) for d, c in named if c not in COMMANDS) == []


def _node(node: dict, key: str) -> list[dict]:
    """The schema nodes a key (or a `<placeholder>`) leads to from an object node."""
    node = schema()["$defs"][node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node
    props = node.get("properties") or {}
    if key.startswith("<") and key.endswith(">"):
        found = list(props.values())
        if isinstance(node.get("additionalProperties"), dict):
            found.append(node["additionalProperties"])
        return found
    if key in props:
        return [props[key]]
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):  # a map whose names the user chooses (synth.families: {x264: ...})
        return [extra]
    if not props and extra is not False and "object" in _types(node):  # a free-form object
        return [{"type": "object"}]
    return []


def _types(node: dict) -> list:
    t = node.get("type", [])
    return t if isinstance(t, list) else [t]


def _resolves(parts: list[str]) -> bool:
    if parts[0] in NESTED:
        parts = [*NESTED[parts[0]], *parts]
    nodes = [schema()]
    for key in parts:
        nodes = [n for node in nodes for n in _node(_free_form(node), key)]
        if not nodes:
            return False
    return True


def _free_form(node: dict) -> dict:
    """`experiments.<E>.training` and `.stage1` take the top-level `training` keys."""
    if node is schema()["properties"]["experiments"]["additionalProperties"]["properties"].get("training") or \
            node is schema()["properties"]["experiments"]["additionalProperties"]["properties"].get("stage1"):
        return schema()["properties"]["training"]
    return node


def _is_module(span: str) -> bool:
    """`training.plots` (pipeline/training/plots.py), `dask.distributed`: a module, not a config key."""
    import importlib.util

    if (REPO / "pipeline" / Path(*span.split("."))).with_suffix(".py").is_file():
        return True
    try:
        return importlib.util.find_spec(span) is not None
    except (ImportError, ValueError):
        return False


def _dotted_keys() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for m in INLINE.finditer(CODE_BLOCK.sub("", _text_of(doc))):
            span = m.group(1).split(":")[0].split("=")[0].strip()
            if re.fullmatch(r"[a-z_]+(\.(<[\w-]+>|[a-z_0-9]+))+", span) and span.split(".")[0] in TOP | set(NESTED) \
                    and not _is_module(span):
                out.append((_rel(doc), span))
    return out


def test_the_key_check_tells_config_keys_from_others():
    assert _resolves(["training", "dtype"]) and _resolves(["models", "<role>", "source"])
    assert _resolves(["split", "k"]) and _resolves(["experiments", "<E>", "training", "lora", "r"])
    assert _resolves(["experiments", "<x>", "stage1", "epochs"]) and _resolves(["datasets", "<x>", "mos_scale"])
    assert not _resolves(["training", "dtypes"]) and not _resolves(["models", "<role>", "weights"])
    assert not _resolves(["split", "group"]) and not _resolves(["experiments", "<E>", "training", "lora", "rank"])
    assert _is_module("training.plots") and not _is_module("training.dtype")
    assert _resolves(["datasets", "<x>", "synth", "families", "x264", "crf"])
    assert not _resolves(["datasets", "<x>", "synth", "familes"])


def test_every_dotted_config_key_named_exists():
    keys = _dotted_keys()
    assert ("README.md", "features.batch_size") in keys  # the check sees the README's keys
    assert sorted((d, k) for d, k in keys if not _resolves(k.split("."))) == []


def _yaml_keys(node, prefix=()) -> list[tuple[str, ...]]:
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            out.append((*prefix, str(key)))
            out += _yaml_keys(value, (*prefix, str(key)))
    return out


def test_every_key_of_a_yaml_example_exists():
    """YAML examples in the docs are (parts of) configs: every key exists where it is written."""
    examples = [(_rel(doc), m.group(2)) for doc in DOCS for m in CODE_BLOCK.finditer(_text_of(doc)) if m.group(1) == "yaml"]
    assert examples, "the README shows a config"
    bad = []
    for doc, text in examples:
        cfg = yaml.safe_load(text)
        for path in _yaml_keys(cfg):
            # names chosen by the user (datasets, experiments) stand for the placeholder
            parts = [("<x>" if i == 1 and path[0] in ("datasets", "experiments") else p) for i, p in enumerate(path)]
            if not _resolves(parts):
                bad.append((doc, ".".join(path)))
    assert bad == []


def test_the_development_data_is_marked_wherever_the_docs_name_it():
    """`../shared` (the development data beside the repository) is not on the README's path; every
    paragraph of docs/ that names it says it is absent in a user's clone or links the page that does."""
    assert "../shared" not in (REPO / "README.md").read_text()
    unmarked = []
    for doc in sorted((REPO / "docs").glob("**/*.md")):
        if doc.name == "development-data.md":  # the page that explains it
            continue
        for paragraph in re.split(r"\n\s*\n", doc.read_text()):
            if "../shared" in paragraph and "absent in a user's clone" not in paragraph \
                    and "development-data.md" not in paragraph:
                unmarked.append((_rel(doc), paragraph[:80]))
    assert unmarked == []
