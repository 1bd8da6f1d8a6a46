"""Follow one argument through the package's calls, as a reader following the code would.

`follow(function, parameter)` starts at a function (`"pipeline.training.train:train"`) and one of its
parameters, finds every call in its body that passes that name on whole (positionally or by keyword),
resolves the callee through the module's imports (functions, and classes' methods and constructors),
and goes on with the callee's parameter that receives it. It returns the functions visited (module,
qualified name): how many files the argument enters and how many functions it stays in. A read of the
code as written, not a trace of a run: calls through attributes of objects are not followed.
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"


def _module_file(module: str, root: Path = ROOT) -> Path | None:
    rel = Path(*module.split("."))
    for candidate in (root / rel.with_suffix(".py"), root / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@lru_cache(maxsize=None)
def _module(module: str, root: Path = ROOT):
    """(functions: qualname -> FunctionDef, imports: local name -> (module, attr or None))."""
    path = _module_file(module, root)
    if path is None:
        return {}, {}
    tree = ast.parse(path.read_text())
    functions, imports = {}, {}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions[node.name] = node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    functions[f"{node.name}.{item.name}"] = item
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                imports[alias.asname or alias.name] = (sub, None) if _module_file(sub, root) else (base, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                imports[alias.asname or alias.name.split(".")[0]] = (alias.name if alias.asname else
                                                                     alias.name.split(".")[0], None)
    return functions, imports


def _callee(module: str, func: ast.expr, root: Path) -> tuple[str, str] | None:
    """(module, qualname) of a call's function, where the code names it through imports or locally."""
    functions, imports = _module(module, root)
    if isinstance(func, ast.Name):
        name = func.id
        if name in functions:
            return module, name
        if f"{name}.__init__" in functions:
            return module, f"{name}.__init__"
        if name in imports and imports[name][1]:
            target, attr = imports[name]
            their = _module(target, root)[0]
            if attr in their:
                return target, attr
            if f"{attr}.__init__" in their:
                return target, f"{attr}.__init__"
        return None
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        owner, attr = func.value.id, func.attr
        if owner in imports:
            target, name = imports[owner]
            if name is None:  # a module: module.function
                their = _module(target, root)[0]
                if attr in their:
                    return target, attr
                if f"{attr}.__init__" in their:
                    return target, f"{attr}.__init__"
            elif f"{name}.{attr}" in _module(target, root)[0]:  # an imported class: Class.method
                return target, f"{name}.{attr}"
        elif f"{owner}.{attr}" in _module(module, root)[0]:
            return module, f"{owner}.{attr}"
    return None


def _receiving(fn: ast.FunctionDef, call: ast.Call, name: str, method: bool) -> str | None:
    """The callee's parameter that receives the argument `name` in this call (None: not passed whole)."""
    params = [a.arg for a in [*fn.args.posonlyargs, *fn.args.args]]
    if method and params and params[0] in ("self", "cls"):
        params = params[1:]
    for i, arg in enumerate(call.args):
        if isinstance(arg, ast.Name) and arg.id == name and i < len(params):
            return params[i]
    for kw in call.keywords:
        if isinstance(kw.value, ast.Name) and kw.value.id == name and kw.arg:
            return kw.arg
    return None


def follow(start: str, parameter: str, root: Path = ROOT) -> list[tuple[str, str]]:
    """Functions the argument `parameter` of `start` ("module:qualname") is passed to, transitively,
    in the order first reached (`start` first)."""
    module, qualname = start.split(":")
    seen, order, todo = set(), [], [(module, qualname, parameter)]
    while todo:
        module, qualname, param = todo.pop(0)
        if (module, qualname, param) in seen:
            continue
        seen.add((module, qualname, param))
        if (module, qualname) not in order:
            order.append((module, qualname))
        fn = _module(module, root)[0][qualname]
        for node in ast.walk(fn):
            if not isinstance(node, ast.Call):
                continue
            target = _callee(module, node.func, root)
            if target is None:
                continue
            callee = _module(target[0], root)[0][target[1]]
            received = _receiving(callee, node, param, "." in target[1])
            if received is not None:
                todo.append((*target, received))
    return order
