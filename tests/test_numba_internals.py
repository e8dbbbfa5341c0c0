"""Numba's private internals are used in one module only: levit_np/fast/numba_internals.py.

Every module of levit_np is parsed (never imported) with `ast`, and these count as private internals:

- an import of a Numba module other than the public ones: `numba` itself, `numba.extending`, `numba.types` and
  `numba.typed`. So `numba.core.*` (codegen, config, cgutils, registry, ...), `numba.np.*` (`numba.np.ufunc`'s
  thread pool), `numba.misc.*`, `numba.parfors.*`, `numba.cpython.*` are private, whether imported as a module
  (`import numba.core.config`, `from numba.core import cgutils`) or taken from its package (`from numba import
  core`), or reached as an attribute (`numba.core.registry`);
- an import of an llvmlite module other than `llvmlite`, `llvmlite.ir` and `llvmlite.binding`, its public API;
- any name starting with "_" imported from numba or llvmlite;
- the attributes of Numba's objects that its documentation does not give, by name: a dispatcher's `_cache`
  (`_cache_path`, `_cache_file`), a compile result's `library` and `fndesc` (`llvm_cfunc_wrapper_name`), the thread
  pool's `_is_initialized` and `_launch_threads`, and the array data model behind `make_array` (`meminfo`,
  `_getvalue`).

What stays public and allowed everywhere: `numba.njit`/`cfunc`/`prange`/`typeof`/`carray`/`config`/
`threading_layer`, `numba.extending.intrinsic` and the target context and IR builder that an intrinsic's code
generator is handed (`context.get_value_type`, `context.cast`, `context.get_constant`, `builder.*`).
"""

import ast
from pathlib import Path

import levit_np

PACKAGE = Path(levit_np.__file__).parent
INTERNALS = PACKAGE / "fast" / "numba_internals.py"
PUBLIC_MODULES = {"numba", "numba.extending", "numba.types", "numba.typed", "llvmlite", "llvmlite.ir",
                  "llvmlite.binding"}
PRIVATE_SUBPACKAGES = {"core", "np", "misc", "parfors", "cpython"}  # of numba, as names or attributes
PRIVATE_ATTRIBUTES = {"_cache", "_cache_path", "_cache_file", "library", "fndesc", "llvm_cfunc_wrapper_name",
                      "_is_initialized", "_launch_threads", "make_array", "meminfo", "_getvalue"}


def _ours(module: str) -> bool:
    return module.split(".")[0] in ("numba", "llvmlite")


def private_uses(path: Path) -> list[str]:
    """Each use of a private Numba/llvmlite internal in the module at `path`, as 'line: what'."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {a.name}" for a in node.names
                      if _ours(a.name) and a.name not in PUBLIC_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _ours(node.module):
            if node.module not in PUBLIC_MODULES:
                found.append(f"{node.lineno}: from {node.module} import ...")
            found += [f"{node.lineno}: from {node.module} import {a.name}" for a in node.names
                      if a.name.startswith("_") or (node.module == "numba" and a.name in PRIVATE_SUBPACKAGES)]
        elif isinstance(node, ast.Attribute):
            if node.attr in PRIVATE_ATTRIBUTES:
                found.append(f"{node.lineno}: .{node.attr}")
            elif (isinstance(node.value, ast.Name) and node.value.id == "numba"
                  and node.attr in PRIVATE_SUBPACKAGES):
                found.append(f"{node.lineno}: numba.{node.attr}")
    return found


def test_only_numba_internals_uses_numbas_private_internals():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert INTERNALS in modules and len(modules) > 20
    elsewhere = {str(path.relative_to(PACKAGE)): uses for path in modules if path != INTERNALS
                 for uses in [private_uses(path)] if uses}
    assert elsewhere == {}, "use Numba's internals through levit_np/fast/numba_internals.py"


def test_the_check_finds_what_numba_internals_uses():
    # the rule above is live: it sees each kind of internal in the module that is allowed them
    uses = "\n".join(private_uses(INTERNALS))
    for expected in ("from numba.core import", "from numba.core.codegen import", "from numba.np.ufunc import",
                     "._cache", "._cache_path", ".fndesc", ".library", ".llvm_cfunc_wrapper_name",
                     "._is_initialized", "._launch_threads", ".make_array", ".meminfo", "._getvalue"):
        assert f": {expected}" in uses, expected


def test_the_check_flags_each_form(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import numba.core.config\nfrom numba import core, njit\nfrom numba.np.ufunc import parallel\n"
                      "from numba.extending import intrinsic\nimport llvmlite.binding\nfrom llvmlite import _x\n"
                      "r = numba.core.registry\nd = f.dispatcher._cache._cache_path\nfrom .numba import core\n")
    assert sorted(private_uses(source)) == ["1: import numba.core.config", "2: from numba import core",
                                            "3: from numba.np.ufunc import ...", "6: from llvmlite import _x",
                                            "7: numba.core", "8: ._cache", "8: ._cache_path"]
