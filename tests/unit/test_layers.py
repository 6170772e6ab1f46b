"""The core's folders are layers: faces -> gate -> trust -> state -> the adapter contract at the root.

Every import (at module level, inside functions, and for type checking alike) may only go down, and no
two modules import each other, directly or round a longer circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "safe_mcp"
ORDER = {"root": 0, "state": 1, "trust": 2, "gate": 3, "faces": 4}


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ORDER) else "root"


def _imports() -> dict[str, set[str]]:
    mods = _modules()
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("safe_mcp"):
                for alias in node.names:
                    deps.add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in mods else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("safe_mcp"))
        edges[name] = {d for d in deps if d in mods and d != name}
    return edges


def test_imports_only_go_down_the_layers() -> None:
    upward = [f"{m} imports {d}" for m, deps in _imports().items() for d in deps
              if m not in ("safe_mcp", "safe_mcp.__main__")
              and (ORDER[_layer(d)] > ORDER[_layer(m)])]
    assert upward == []


def test_no_import_circles() -> None:
    edges = _imports()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    assert circles == []


def test_every_layer_is_a_folder_and_the_root_holds_only_the_adapter_contract() -> None:
    root_modules = sorted(p.stem for p in ROOT.glob("*.py"))
    assert root_modules == ["__init__", "__main__", "adapter", "effects", "errors", "hooks", "registry", "sqlitetx", "text"]
    assert {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith("__")} == set(ORDER) - {"root"}
