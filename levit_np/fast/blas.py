"""The BLAS the kernels call from inside their tiles (SciPy's, through `scipy.linalg.cython_blas`), and thread control.

The attention products, the first conv and all float64 work call `gemm`: one single-threaded `sgemm`/`dgemm` per
tile, on the thread that runs the tile. The BLAS is SciPy's, whatever it is built with (its bundled OpenBLAS, MKL
under conda, Accelerate, a distro's): `scipy.linalg.cython_blas` exports the address of each Fortran BLAS routine,
the same pointers Numba's own `np.dot` calls.

How a kernel reaches it: at every import, before any kernel runs, this module registers SciPy's `sgemm`/`dgemm`
addresses with LLVM under fixed names (`llvmlite.binding.add_symbol`: SYMBOLS), and `gemm` calls those names. The
machine code that Numba caches on disk therefore holds a name, never an address, and a later process links it to
its own SciPy, wherever that was loaded. Without SciPy (or with LEVIT_NP_BLAS=none) the same names are given to
`builtin_gemm`, a blocked loop nest (compiled as a C callback with the BLAS's arguments), and a warning says so
once: cached kernels never need recompiling when the BLAS comes or goes.

    LEVIT_NP_BLAS=scipy   the default: SciPy's BLAS, else the built-in GEMM with a warning
    LEVIT_NP_BLAS=none    the built-in GEMM (read at import; for tests, or to rule the BLAS out)

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
import os
import sys
import warnings
from pathlib import Path

import numba
import numpy as np
import threadpoolctl
from numba import types

from .jit import DISABLE_JIT, FASTMATH, helper, helper_or_stand_in, python_gemm

BLAS_ENV = "LEVIT_NP_BLAS"
SYMBOLS = {np.dtype(np.float32): "levit_np_sgemm", np.dtype(np.float64): "levit_np_dgemm"}  # what `gemm` calls
INT_MAX = 2**31 - 1  # the BLAS's integers are 32-bit
NO_TRANS, TRANS = ord("N"), ord("T")


# --- which BLAS: SciPy's, or the built-in GEMM -------------------------------------------------------------------

def _load_cython_blas():
    """scipy.linalg.cython_blas, loaded from its file without running scipy.linalg's __init__ (all of scipy.linalg,
    a large part of a warm start), and entered in sys.modules under its own name, so that a later import of it or
    of scipy.linalg finds this same module."""
    name = "scipy.linalg.cython_blas"
    if sys.modules.get(name) is not None:
        return sys.modules[name]
    import scipy  # light (Numba imports it too); on Windows it sets up the wheel's DLL directories

    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = Path(scipy.__file__).parent / "linalg" / f"cython_blas{suffix}"
        if path.exists():
            try:
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            except ImportError:
                break
            sys.modules[name] = module
            return module
    return importlib.import_module(name)


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


def _select():
    """(kind, {dtype: ?gemm address} or None, why not SciPy's BLAS, whether to warn); kind "scipy" or "none"."""
    choice = os.environ.get(BLAS_ENV, "scipy").strip().lower() or "scipy"
    if choice not in ("scipy", "none"):
        raise ValueError(f"{BLAS_ENV}={choice!r}: expected 'scipy' (the default) or 'none'")
    if DISABLE_JIT:
        return "none", None, "NUMBA_DISABLE_JIT=1", False
    if choice == "none":
        return "none", None, f"{BLAS_ENV}=none", False
    try:
        capi = _load_cython_blas().__pyx_capi__
        return "scipy", {dtype: _capsule_address(capi[name]) for dtype, name in
                         ((np.dtype(np.float32), "sgemm"), (np.dtype(np.float64), "dgemm"))}, "", False
    except (ImportError, AttributeError, KeyError) as e:
        return "none", None, f"no SciPy BLAS: {type(e).__name__}: {e}", True


BLAS, _ADDRESSES, _WHY_NOT, _WARN = _select()


# --- the built-in GEMM: no BLAS, still vectorised -----------------------------------------------------------------

COLUMN_BLOCK, DEPTH_BLOCK = 256, 128  # c columns x b rows per block: the block of b stays in cache across a's rows


@helper(inline=False)
def builtin_gemm(a, b, c, M, N, K, transpose_a, transpose_b):
    # c[:, :N] (M, ldc) = a (M, K) @ b (K, N) over C-contiguous arrays of whole rows (each as wide as its row
    # stride; only the leading columns are read); a given as (K, lda) if transpose_a, b as (N, ldb) if transpose_b.
    # The inner loop runs along contiguous rows of c and b, which LLVM vectorises.
    if transpose_b:  # b (N, K) -> (K, N), once per call
        b_rows = np.empty((K, N), c.dtype)
        for j in range(N):
            for k in range(K):
                b_rows[k, j] = b[j, k]
    else:
        b_rows = b
    for i in range(M):
        ci = c[i]
        for j in range(N):
            ci[j] = 0
    for j0 in range(0, N, COLUMN_BLOCK):
        j1 = min(j0 + COLUMN_BLOCK, N)
        for k0 in range(0, K, DEPTH_BLOCK):
            k1 = min(k0 + DEPTH_BLOCK, K)
            for i in range(M):
                ci = c[i, j0:j1]  # (j1 - j0,): 1-D views, so that LLVM vectorises the loop
                for k in range(k0, k1):
                    aik = a[k, i] if transpose_a else a[i, k]
                    bk = b_rows[k, j0:j1]
                    for j in range(ci.size):
                        ci[j] += aik * bk[j]


def _builtin_fortran_gemm(dtype):
    """`builtin_gemm` behind the BLAS's ?gemm arguments (all by pointer, column-major), as a C callback; only what
    `gemm` passes: alpha = 1, beta = 0."""
    real, i32, char = types.CPointer(numba.from_dtype(dtype)), types.CPointer(types.int32), types.CPointer(types.int8)
    signature = types.void(char, char, i32, i32, i32, real, real, i32, real, i32, real, real, i32)

    def fortran_gemm(transa, transb, m, n, k, alpha, a_f, lda, b_f, ldb, beta, c_f, ldc):
        # column-major C (m, n) = op(A) op(B) is row-major c (n, m) = op(b) op(a), b = B and a = A read row-major
        M, N, K = np.int64(n[0]), np.int64(m[0]), np.int64(k[0])
        transpose_a, transpose_b = transb[0] == TRANS, transa[0] == TRANS
        a = numba.carray(b_f, (K if transpose_a else M, np.int64(ldb[0])))
        b = numba.carray(a_f, (N if transpose_b else K, np.int64(lda[0])))
        builtin_gemm(a, b, numba.carray(c_f, (M, np.int64(ldc[0]))), M, N, K, transpose_a, transpose_b)

    return numba.cfunc(signature, cache=True, fastmath=FASTMATH)(fortran_gemm)


if _WARN:  # once: this runs at the module's one import
    warnings.warn(f"levit_np's numba backend runs without a BLAS ({_WHY_NOT}): its attention products, first conv "
                  "and float64 layers use a built-in GEMM, several times slower. Install SciPy (pip install "
                  f"'scipy>=1.10') to use its BLAS; {BLAS_ENV}=none chooses the built-in GEMM without this warning.",
                  RuntimeWarning, stacklevel=2)

if not DISABLE_JIT:
    import llvmlite.binding
    from llvmlite import ir
    from numba.core import cgutils
    from numba.extending import intrinsic

    if BLAS == "none":
        _CALLBACKS = {dtype: _builtin_fortran_gemm(dtype) for dtype in SYMBOLS}  # kept alive with their code
        _ADDRESSES = {dtype: callback.address for dtype, callback in _CALLBACKS.items()}
    for _dtype, _symbol in SYMBOLS.items():
        llvmlite.binding.add_symbol(_symbol, _ADDRESSES[_dtype])  # this process's address, for cached code too

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
                return cgutils.alloca_once_value(builder, context.cast(builder, value, ty, to))

            tys = signature.args
            chars = [slot(args[i], tys[i], types.int8) for i in (0, 1)]
            dims = [slot(args[i], tys[i], types.int32) for i in (2, 3, 4)]
            ld = {i: slot(args[i], tys[i], types.int32) for i in (6, 8, 10)}
            data = {i: context.make_array(tys[i])(context, builder, args[i]).data for i in (5, 7, 9)}
            one, zero = (cgutils.alloca_once_value(builder, context.get_constant(c.dtype, v)) for v in (1.0, 0.0))
            values = [*chars, *dims, one, data[5], ld[6], data[7], ld[8], zero, data[9], ld[10]]
            fnty = ir.FunctionType(ir.VoidType(), [v.type for v in values])
            builder.call(cgutils.get_or_insert_function(builder.module, fnty, symbol), values)
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
    """The thread pools of the BLAS that `gemm` calls: SciPy's (none for the built-in GEMM)."""
    if BLAS != "scipy":
        return ()
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
    if BLAS != "scipy":
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
    n = int(n)
    if not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"num_threads must be in 1..{numba.config.NUMBA_NUM_THREADS} (NUMBA_NUM_THREADS), found {n}")
    numba.set_num_threads(n)
    for pool in _pools_of("numpy", threadpoolctl.ThreadpoolController()):
        _set_threads(pool, n)


def get_num_threads() -> int:
    return numba.get_num_threads()


_API_NAMES = {"openblas": "OpenBLAS", "mkl": "MKL", "blis": "BLIS", "flexiblas": "FlexiBLAS"}


def blas_description() -> str:
    """Which BLAS the kernels call, for `levit-np info`: "scipy.linalg.cython_blas (OpenBLAS 0.3.30, ...)" or
    "none: built-in GEMM (why)"."""
    if DISABLE_JIT:
        return "none: NUMBA_DISABLE_JIT=1 (the kernels run as Python, their products in NumPy)"
    if BLAS != "scipy":
        return f"none: built-in GEMM ({_WHY_NOT})"
    pools = _kernel_pools()
    if not pools:
        return "scipy.linalg.cython_blas (a BLAS threadpoolctl does not know: its threads are left as they are)"
    libs = ", ".join(f"{_API_NAMES.get(p.internal_api, p.internal_api)} {p.version or '(version unknown)'}"
                     for p in pools)
    return f"scipy.linalg.cython_blas ({libs}, one thread in the kernels via threadpoolctl)"
