"""The package's layering, read from its source with `ast`: every import of every module of levit_np (at the top
and inside functions, absolute and relative) is an edge of a graph, which must hold no cycle, and only the
application layer (levit_np/app/) and the package's front door (levit_np/__init__.py, __main__.py) may import the
application layer."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "levit_np"
APP = "levit_np.app"
FRONT_DOOR = {"levit_np", "levit_np.__main__"}  # `levit_np.predict` and `python -m levit_np` reach into the app


def in_app(module: str) -> bool:
    return module == APP or module.startswith(APP + ".")


def module_names() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its __init__.py)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that module `name` imports anywhere in its source. `from X import y` imports X.y
    where that is a module, else X; a package's own __init__ run on the way to a submodule is no edge."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module
            targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in modules else stem
                       for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The modules that import one another round a cycle: each strongly connected component of `graph` of more
    than one module, sorted (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_the_graph_sees_imports_inside_functions_and_relative_ones():
    graph = import_graph()
    assert {"levit_np.app", "levit_np.app.cli", "levit_np.model", "levit_np.fast.kernels"} <= set(graph)
    assert "levit_np.app.prediction" in graph["levit_np"]  # `from .app.prediction import predict`
    assert "levit_np.fast.report" in graph["levit_np.app.cli"]  # inside `model_info`
    assert "levit_np.app.distributed" in graph["levit_np.app.cli"]  # inside `run_distributed`
    assert "levit_np.config" in graph["levit_np.app.prediction"]  # `from ..config import ...`


def test_cycles_are_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    graph = import_graph()
    found = list(cycles(graph))
    assert not found, "modules importing one another: " + "; ".join(
        ", ".join(f"{m} -> {sorted(set(graph[m]) & set(group))}" for m in group) for group in found)


def test_only_the_app_and_the_front_door_import_the_app():
    graph = import_graph()
    wrong = {name: sorted(m for m in targets if in_app(m))
             for name, targets in graph.items() if not in_app(name) and name not in FRONT_DOOR}
    wrong = {name: targets for name, targets in wrong.items() if targets}
    assert not wrong, f"the model layer imports the application layer: {wrong}"


def test_the_model_layer_never_reaches_the_app_through_the_front_door():
    """A model-layer module importing the package itself (`from .. import x`) would run levit_np/__init__.py,
    which imports the application layer."""
    graph = import_graph()
    wrong = sorted(name for name, targets in graph.items()
                   if "levit_np" in targets and not in_app(name) and name not in FRONT_DOOR)
    assert not wrong, f"model-layer modules importing the package's __init__ (and so the app): {wrong}"
