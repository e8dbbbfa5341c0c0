"""The BLAS the kernels call from inside their tiles (SciPy's, through `scipy.linalg.cython_blas`), and thread control.

The attention products, the first conv and all float64 work call `gemm`: one single-threaded `sgemm`/`dgemm` per
tile, on the thread that runs the tile. The BLAS is SciPy's (a dependency), whatever it is built with (its bundled
OpenBLAS, MKL under conda, Accelerate, a distro's): `scipy.linalg.cython_blas` exports the address of each Fortran
BLAS routine, the same pointers Numba's own `np.dot` calls.

How a kernel reaches it: at every import, before any kernel runs, this module registers SciPy's `sgemm`/`dgemm`
addresses with LLVM under fixed names (`llvmlite.binding.add_symbol`: SYMBOLS), and `gemm` calls those names. The
machine code that Numba caches on disk therefore holds a name, never an address, and a later process links it to
its own SciPy, wherever that was loaded. Under NUMBA_DISABLE_JIT=1 `gemm` is NumPy's matmul (`jit.python_gemm`)
and no BLAS is loaded.

`cython_blas` is loaded from its file (`_load_cython_blas`) rather than imported: `import scipy.linalg.cython_blas`
runs scipy.linalg's __init__ first, which imports the whole of scipy.linalg (LAPACK wrappers, decompositions,
special matrices) that the kernels never call, on every start of the backend. It is in sys.modules under its own
name (the extension enters itself there), where Numba's own import of it and any later `import
scipy.linalg.cython_blas` or `from scipy.linalg import cython_blas` find it without running that __init__; only the
attribute `scipy.linalg.cython_blas` is not set on a scipy.linalg imported later (tests/test_blas.py).

SciPy's BLAS takes 32-bit integers (LP64): every dimension and row stride of a `gemm` must stay below 2^31
elements, which `gemm` checks.

Threads (`threadpoolctl`): the numba backend runs the kernels' BLAS on one thread (`one_blas_thread`); letting it
run its own threads between Numba's parallel loops makes two pools of spinning threads fight over the cores.
NumPy's BLAS, a separate library in the PyPI wheels, runs the numpy backend's matmuls on `set_num_threads` threads.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import importlib.util
import numbers
import sys
from pathlib import Path

import numba
import numpy as np
import threadpoolctl
from numba import types

from .jit import DISABLE_JIT, helper, helper_or_stand_in, python_gemm

SYMBOLS = {np.dtype(np.float32): "levit_np_sgemm", np.dtype(np.float64): "levit_np_dgemm"}  # what `gemm` calls
INT_MAX = 2**31 - 1  # the BLAS's integers are 32-bit
NO_TRANS, TRANS = ord("N"), ord("T")


# --- SciPy's BLAS -------------------------------------------------------------------------------------------------

def _load_cython_blas():
    """scipy.linalg.cython_blas, loaded from its file without running scipy.linalg's __init__ (see the top)."""
    name = "scipy.linalg.cython_blas"
    if sys.modules.get(name) is not None:
        return sys.modules[name]
    import scipy  # light (Numba imports it too); on Windows it sets up the wheel's DLL directories

    folder = str(Path(scipy.__file__).parent / "linalg")
    found = importlib.machinery.PathFinder.find_spec("cython_blas", [folder])
    if found is None:
        raise ImportError(f"no {name} extension module in {folder}")
    spec = importlib.util.spec_from_file_location(name, found.origin)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


def _capsule_address(capsule) -> int:
    """The address in a cython_blas `__pyx_capi__` capsule of ?gemm, after checking its 32-bit integer arguments."""
    get_name, get_pointer = ctypes.pythonapi.PyCapsule_GetName, ctypes.pythonapi.PyCapsule_GetPointer
    get_name.argtypes, get_name.restype = [ctypes.py_object], ctypes.c_char_p
    get_pointer.argtypes, get_pointer.restype = [ctypes.py_object, ctypes.c_char_p], ctypes.c_void_p
    name = get_name(capsule)  # "void (char *, char *, int *, int *, int *, <real> *, <real> *, int *, ...)"
    args = [arg.strip() for arg in name.decode().partition("(")[2].rpartition(")")[0].split(",")]
    if len(args) != 13 or any(args[i] != "int *" for i in (2, 3, 4, 7, 9, 12)):
        raise ImportError(f"cython_blas's gemm has other arguments than expected: {name.decode()!r}")
    return get_pointer(capsule, name)


def gemm_addresses() -> dict:
    """{dtype: the address of SciPy's ?gemm} for float32 and float64."""
    capi = _load_cython_blas().__pyx_capi__
    return {np.dtype(dtype): _capsule_address(capi[name]) for dtype, name in ((np.float32, "sgemm"),
                                                                            (np.float64, "dgemm"))}


if not DISABLE_JIT:
    import llvmlite.binding
    from llvmlite import ir
    from numba.extending import intrinsic

    from .numba_internals import array_data, declare_function, stack_slot

    for _dtype, _address in gemm_addresses().items():
        llvmlite.binding.add_symbol(SYMBOLS[_dtype], _address)  # this process's address, for cached code too

    @intrinsic
    def _fortran_gemm(typingctx, transa, transb, m, n, k, a, lda, b, ldb, c, ldc):
        # SYMBOLS[dtype](&transa, &transb, &m, &n, &k, &1, a, &lda, b, &ldb, &0, c, &ldc): the BLAS's ?gemm, its
        # characters and integers (int32) in stack slots, the arrays by their data pointers
        if not all(isinstance(x, types.Array) and x.dtype == c.dtype for x in (a, b, c)) or c.dtype not in (
                types.float32, types.float64):
            return None
        symbol = SYMBOLS[np.dtype(str(c.dtype))]

        def codegen(context, builder, signature, args):
            def slot(value, ty, to):
                return stack_slot(builder, context.cast(builder, value, ty, to))

            tys = signature.args
            chars = [slot(args[i], tys[i], types.int8) for i in (0, 1)]
            dims = [slot(args[i], tys[i], types.int32) for i in (2, 3, 4)]
            ld = {i: slot(args[i], tys[i], types.int32) for i in (6, 8, 10)}
            data = {i: array_data(context, builder, tys[i], args[i]) for i in (5, 7, 9)}
            one, zero = (stack_slot(builder, context.get_constant(c.dtype, v)) for v in (1.0, 0.0))
            values = [*chars, *dims, one, data[5], ld[6], data[7], ld[8], zero, data[9], ld[10]]
            fnty = ir.FunctionType(ir.VoidType(), [v.type for v in values])
            builder.call(declare_function(builder.module, fnty, symbol), values)
            return context.get_dummy_value()

        args = [types.unliteral(x) for x in (transa, transb, m, n, k, a, lda, b, ldb, c, ldc)]
        return types.void(*args), codegen


# --- gemm: c = a @ b, one BLAS call on the calling thread -------------------------------------------------------

@helper(inline=False)
def _check_blas_sizes(M, N, K, lda, ldb, ldc):
    # a call, not inlined: the `raise` (and its exception machinery) compiled once, not into every tile calling gemm
    if max(M, N, K, lda, ldb, ldc) > INT_MAX:
        raise ValueError("gemm: a dimension or row stride is 2^31 elements or more, past the BLAS's 32-bit integers")


@helper_or_stand_in(python_gemm)
def gemm(a, b, c, transpose_a, transpose_b):
    # c (M, N) = a (M, K) @ b (K, N), one BLAS call on this thread; a given as (K, M) if transpose_a, b as (N, K) if
    # transpose_b. Each operand may be a strided view (rows any distance apart, elements in a row adjacent).
    M, N = c.shape
    K = a.shape[0] if transpose_a else a.shape[1]
    lda = max(a.strides[0] // a.itemsize, a.shape[1], 1)  # leading dimensions; max() only matters for 1-row views
    ldb = max(b.strides[0] // b.itemsize, b.shape[1], 1)
    ldc = max(c.strides[0] // c.itemsize, N, 1)
    _check_blas_sizes(M, N, K, lda, ldb, ldc)
    if M == 0 or N == 0:
        return
    # row-major c = op(a) op(b) is column-major cᵀ = op(b)ᵀ op(a)ᵀ: the BLAS gets b first, and N rows by M columns
    _fortran_gemm(TRANS if transpose_b else NO_TRANS, TRANS if transpose_a else NO_TRANS, N, M, K, b, ldb, a, lda,
                  c, ldc)


# --- threads ------------------------------------------------------------------------------------------------------

def _pools_of(package: str, controller) -> list:
    """The BLAS thread pools (threadpoolctl controllers) that `package` ships in its wheel (inside it, or in the
    `<package>.libs` / `<package>/.dylibs` folder beside it); all BLAS pools if none is (a BLAS outside the wheels,
    such as conda's or a distro's, is the one NumPy and SciPy share)."""
    spec = importlib.util.find_spec(package)
    root = Path(spec.origin).resolve().parent if spec and spec.origin else None
    blas = [lib for lib in controller.lib_controllers if lib.user_api == "blas"]
    if root is None:
        return blas
    homes = (root, root.parent / f"{package}.libs")
    own = [lib for lib in blas if any(Path(lib.filepath).resolve().is_relative_to(home) for home in homes)]
    return own or blas


@functools.cache
def _kernel_pools() -> tuple:
    """The thread pools of the BLAS that `gemm` calls: SciPy's."""
    return tuple(_pools_of("scipy", threadpoolctl.ThreadpoolController()))


def _set_threads(pool, n: int) -> None:
    if pool.get_num_threads() == n:
        return
    pool.set_num_threads(n)
    # threadpoolctl >= 3.8 lets one Python thread alone size a shared OpenBLAS pool, and ignores the others
    if pool.get_num_threads() != n and hasattr(pool, "clear_controlling_thread"):
        pool.clear_controlling_thread(force=True)
        pool.set_num_threads(n)


def one_blas_thread(fn):
    """Run `fn` with the kernels' BLAS on one thread, as the kernels call it from Numba's threads (see the top).

    Process-wide and left so: setting the BLAS back to n threads after each call wakes its n - 1 workers, which then
    spin for a while and steal the cores from Numba's threads. Where NumPy shares this BLAS (conda, a distro), the
    numpy backend gets its threads back from `set_num_threads`.
    """
    if DISABLE_JIT:  # gemm is NumPy's matmul
        return fn

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for pool in _kernel_pools():
            if pool.get_num_threads() != 1:
                _set_threads(pool, 1)
        return fn(*args, **kwargs)
    return wrapper


def set_num_threads(n: int) -> None:
    """Use `n` cores: Numba's thread pool, which runs every kernel of the numba backend, and NumPy's BLAS threads,
    which run the numpy backend's matmuls (where NumPy and SciPy share one BLAS, until the next numba-backend call
    sets it back to one). `n` may not exceed NUMBA_NUM_THREADS (default: all cores), which Numba fixes when it
    starts."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"num_threads must be in 1..{numba.config.NUMBA_NUM_THREADS} (NUMBA_NUM_THREADS), found "
                         f"{n!r}")
    n = int(n)
    numba.set_num_threads(n)
    for pool in _pools_of("numpy", threadpoolctl.ThreadpoolController()):
        _set_threads(pool, n)


def get_num_threads() -> int:
    return numba.get_num_threads()


_API_NAMES = {"openblas": "OpenBLAS", "mkl": "MKL", "blis": "BLIS", "flexiblas": "FlexiBLAS"}


def blas_description() -> str:
    """Which BLAS the kernels call, for `levit-np info`: "scipy.linalg.cython_blas (OpenBLAS 0.3.30, ...)", or
    none under NUMBA_DISABLE_JIT=1."""
    if DISABLE_JIT:
        return "none: NUMBA_DISABLE_JIT=1 (the kernels run as Python, their products in NumPy)"
    pools = _kernel_pools()
    if not pools:
        return "scipy.linalg.cython_blas (a BLAS threadpoolctl does not know: its threads are left as they are)"
    libs = ", ".join(f"{_API_NAMES.get(p.internal_api, p.internal_api)} {p.version or '(version unknown)'}"
                     for p in pools)
    return f"scipy.linalg.cython_blas ({libs}, one thread in the kernels via threadpoolctl)"
