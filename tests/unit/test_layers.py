"""The package's folders are its layers: no module imports, even lazily inside a
function, one that imports it back."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import sllm

ROOT = Path(sllm.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sllm"):
                module = node.module or ""
                found |= {
                    f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module
                    for a in node.names
                }
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("sllm")}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = imports_graph()
    assert graph["sllm.backends.dummy"] >= {"sllm.backends.server"}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None


def test_the_top_of_the_package_holds_the_cli_and_what_every_layer_shares() -> None:
    loose = sorted(p.stem for p in ROOT.glob("*.py"))
    assert loose == ["__init__", "__main__", "cli", "config", "metrics"], loose
