"""`import levit_np` and a NumPy forward pass must not pull in torch or transformers; no import cycles in levit_np."""

import ast
import subprocess
import sys
from pathlib import Path

import levit_np
from helpers import random_pixels


def modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_import_levit_np_imports_no_framework():
    loaded = modules_after("import levit_np")
    assert "levit_np" in loaded
    assert not {"torch", "transformers"} & loaded


def test_loading_and_running_a_model_imports_no_framework(checkpoint, tmp_path):
    _, path = checkpoint("LevitForImageClassification", hidden_sizes=[16, 24, 32], num_attention_heads=[1, 2, 2],
                         depths=[1, 1, 1], key_dim=[8, 8, 8], image_size=64)
    import numpy as np
    np.save(tmp_path / "x.npy", random_pixels(1, 64))
    loaded = modules_after(f"import levit_np, numpy as np\n"
                           f"m = levit_np.from_pretrained({str(path)!r}, backend='numpy')\n"
                           f"assert m(np.load({str(tmp_path / 'x.npy')!r})).logits.shape == (1, 1000)")
    assert not {"torch", "transformers"} & loaded


def imports_of_each_module(package: Path) -> dict[str, set[str]]:
    """{module: the modules of the package it imports}, from its source: every import statement, at top level or
    inside a function. `from . import x` counts as an import of the submodule x where there is one, else of the
    package itself; a submodule's import does not count as one of the packages above it."""
    root, modules = package.parent, {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = path, is_package

    def known(name):  # the module itself, or the deepest package of the package above it that exists
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, (path, is_package) in modules.items():
        here = name.split(".") if is_package else name.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(known(a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[:len(here) - node.level + 1] + [node.module or ""] if node.level
                                else [node.module]).strip(".")
                found.update(known(f"{base}.{a.name}") if f"{base}.{a.name}" in modules else known(base)
                             for a in node.names)
        graph[name] = found - {"", name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: each strongly connected set of two or more modules, sorted."""
    found, index, low, stack = [], {}, {}, []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


# config.normalize's bias-index rule is imported from layers inside a function (config.py is not the fast path's)
KNOWN_CYCLES = [["levit_np.config", "levit_np.layers"]]


def test_no_import_cycles():
    """No module of levit_np imports (at top level or inside a function) one that imports it back, directly or
    through others; in particular the fast path never imports the model, nor the backend module that builds it."""
    graph = imports_of_each_module(Path(levit_np.__file__).parent)
    assert all(c in KNOWN_CYCLES for c in cycles(graph)), cycles(graph)
    fast = {m for m in graph if m.startswith("levit_np.fast")}
    assert not any({"levit_np.model", "levit_np.backend", "levit_np"} & graph[m] for m in fast)
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check itself
