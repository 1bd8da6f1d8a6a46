"""The package's shape: no import circle between its modules, and no module too long to read as one idea.

The import graph is read from the source (`ast`), with every import a module makes: at the top, inside
functions and under `if TYPE_CHECKING:` (a circle hidden there still means the two modules are one idea
split in two, and the first function-level import that closes it at run time can fail half-imported).
"""
from __future__ import annotations

import ast
import inspect

from plan_flow import follow

from pipeline.core.versions import PACKAGE, _imports

MAX_LINES = 500
# Over MAX_LINES today and being split on another branch; remove each entry once its split is merged.
TEMPORARILY_ALLOWED_LONG: set[str] = set()


def _module_name(path, root) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join((PACKAGE.name, *parts))


def import_graph(root=PACKAGE) -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its source (packages' __init__ included)."""
    modules = [_module_name(p, root) for p in sorted(root.rglob("*.py"))]
    return {m: _imports(m, root) - {m} for m in modules}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path back to its first module) per strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(sorted(group)[0], group, graph) for group in groups]


def _cycle_in(start: str, group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """The shortest path start -> ... -> start inside `group` (breadth first)."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & group):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start] if v != start else [start, start]
                if w not in came_from:
                    came_from[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is in a strongly connected group without a cycle")


def test_import_cycles_are_found_and_named():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert import_cycles(graph) == [["a", "b", "c", "a"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_function_level_and_type_checking_imports(tmp_path):
    graph = import_graph()
    # function-level: the still-image decoder is imported inside VideoSampler.decode
    assert "pipeline.features.decoding.decode_image" in graph["pipeline.features.decoding.decode"]
    assert "pipeline.features.encoding.encoders" in graph["pipeline.plan"]
    # a circle closed only under TYPE_CHECKING (as a batch stage typed with the extractor that uses it was)
    root = tmp_path / PACKAGE.name
    (root / "features").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "features" / "__init__.py").write_text("")
    (root / "features" / "extractor.py").write_text("from pipeline.features.staging import stack_host\n")
    (root / "features" / "staging.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipeline.features.extractor import Extractor\n")
    (root / "features" / "user.py").write_text("def f():\n    from .staging import stack_host\n")
    graph = import_graph(root)
    assert graph["pipeline.features.user"] == {"pipeline.features.staging"}
    assert import_cycles(graph) == [["pipeline.features.extractor", "pipeline.features.staging",
                                     "pipeline.features.extractor"]]


def test_no_import_cycle_in_the_package():
    cycles = [" -> ".join(c) for c in import_cycles(import_graph())]
    assert cycles == [], "import cycle(s):\n" + "\n".join(cycles)


def test_no_module_is_longer_than_the_limit():
    long = {p.relative_to(PACKAGE).as_posix(): n for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    over = {path: n for path, n in long.items() if path not in TEMPORARILY_ALLOWED_LONG}
    assert over == {}, f"modules over {MAX_LINES} lines (split them where their ideas part): {over}"


# The modules that read the workflow config dict itself: its validation, the resolver and the plan's
# objects, and the DAG's decisions. Every other module takes typed pieces of the resolved plan
# (pipeline/core/settings.py). The workflow config is spelled `cfg` (or `config`) wherever it travels.
CONFIG_READERS = {"core/config.py", "core/resolve.py", "core/settings.py", "workflow.py"}


def config_dict_uses(source: str) -> list[int]:
    """Lines that hold the workflow config dict: a name `cfg` (parameter, variable or use), or an index
    or `.get` of a name `config`."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and node.id == "cfg" or isinstance(node, ast.arg) and node.arg == "cfg":
            lines.append(node.lineno)
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "config":
            lines.append(node.lineno)
        elif (isinstance(node, ast.Attribute) and node.attr == "get" and isinstance(node.value, ast.Name)
              and node.value.id == "config"):
            lines.append(node.lineno)
    return sorted(set(lines))


def test_config_dict_uses_are_found():
    source = "def f(cfg):\n    return 1\n\ndef g(x, config):\n    return config['a'], config.get('b')\n\ndef h(record):\n    return record['x']\n"
    assert config_dict_uses(source) == [1, 5]


def test_only_the_resolver_reads_the_config_dict():
    found = {p.relative_to(PACKAGE).as_posix(): uses for p in sorted(PACKAGE.rglob("*.py"))
             if p.relative_to(PACKAGE).as_posix() not in CONFIG_READERS and (uses := config_dict_uses(p.read_text()))}
    assert found == {}, ("modules that hold the workflow config dict (take the typed settings of "
                         f"pipeline/core/resolve.py instead), with their lines: {found}")


def test_following_an_argument_counts_files_and_functions(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import use\nfrom pkg import c\n\n"
                              "def start(plan, other):\n    use(plan)\n    c.deeper(x=plan)\n    use(other)\n")
    (pkg / "b.py").write_text("def use(p):\n    return p\n")
    (pkg / "c.py").write_text("from pkg.b import use\n\ndef deeper(y, x=None):\n    use(y)\n    return use(x)\n")
    assert follow("pkg.a:start", "plan", tmp_path) == [("pkg.a", "start"), ("pkg.b", "use"), ("pkg.c", "deeper")]


def test_the_plan_enters_training_and_stays_near():
    """The resolved plan entering `train` reaches at most 12 files and 30 functions: it is handed out
    in pieces, not threaded through the house."""
    from pipeline.training.train import train

    assert list(inspect.signature(train).parameters)[0] == "settings"  # where the plan enters training
    visited = follow("pipeline.training.train:train", "settings")
    files = sorted({module for module, _ in visited})
    assert len(files) <= 12 and len(visited) <= 30, visited
