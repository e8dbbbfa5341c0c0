"""The BLAS the kernels call from inside their tiles (NumPy's bundled OpenBLAS), and the thread control.

The attention products, the first conv and all float64 work call `gemm`: one single-threaded `sgemm`/`dgemm` per
tile, on the thread that runs the tile. OpenBLAS is therefore set to one thread for the numba backend: letting it
run its own threads between Numba's parallel loops makes two pools of spinning threads fight over the cores.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numba
import numpy as np
from numba import types

from .jit import helper_or_stand_in, python_gemm


def _find_openblas():
    """(library path, symbol prefix, loaded library) of NumPy's bundled 64-bit-integer OpenBLAS, or None."""
    libs = Path(np.__file__).resolve().parent.parent / "numpy.libs"
    for lib in sorted(libs.glob("lib*openblas*.so*")):
        try:
            dll = ctypes.CDLL(str(lib))
        except OSError:
            continue
        for prefix in ("scipy_", ""):  # NumPy >= 2: scipy_cblas_sgemm64_; NumPy 1.2x: cblas_sgemm64_
            if all(hasattr(dll, f"{prefix}{name}64_") for name in ("cblas_sgemm", "cblas_dgemm",
                                                                   "openblas_set_num_threads",
                                                                   "openblas_get_num_threads")):
                return lib, prefix, dll
    return None


_OPENBLAS = _find_openblas()
if _OPENBLAS is not None:
    _blas_set_threads = getattr(_OPENBLAS[2], f"{_OPENBLAS[1]}openblas_set_num_threads64_")
    _blas_set_threads.argtypes, _blas_set_threads.restype = [ctypes.c_int], None
    _blas_get_threads = getattr(_OPENBLAS[2], f"{_OPENBLAS[1]}openblas_get_num_threads64_")
    _blas_get_threads.argtypes, _blas_get_threads.restype = [], ctypes.c_int


def one_blas_thread(fn):
    """Run `fn` with NumPy's OpenBLAS on one thread, as the kernels call it from Numba's threads (see the top).

    Process-wide and left so: setting OpenBLAS back to n threads after each call wakes its n - 1 workers, which then
    spin for a while and steal the cores from Numba's threads. The numpy backend gets its BLAS threads back from
    `set_num_threads`.
    """
    if _OPENBLAS is None:
        return fn

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _blas_get_threads() != 1:
            _blas_set_threads(1)
        return fn(*args, **kwargs)
    return wrapper


def set_num_threads(n: int) -> None:
    """Use `n` cores: Numba's thread pool, which runs every kernel of the numba backend, and NumPy's BLAS threads,
    which run the numpy backend's matmuls until the next numba-backend call sets them back to one.
    `n` may not exceed NUMBA_NUM_THREADS (default: all cores), which Numba fixes when it starts."""
    n = int(n)
    if not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"num_threads must be in 1..{numba.config.NUMBA_NUM_THREADS} (NUMBA_NUM_THREADS), found {n}")
    numba.set_num_threads(n)
    if _OPENBLAS is not None:
        _blas_set_threads(n)


def get_num_threads() -> int:
    return numba.get_num_threads()


# --- gemm: c = a @ b, one BLAS call on the calling thread -------------------------------------------------------

if _OPENBLAS is not None:
    import llvmlite.binding

    llvmlite.binding.load_library_permanently(str(_OPENBLAS[0]))  # lets Numba link (and cache) calls into it by name

    def _cblas(name, real):
        # cblas_?gemm64_(order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc); 64-bit ints, and
        # pointers passed as uintp (an array's .ctypes.data), which the x86-64/aarch64 C ABIs pass like a pointer
        i32, i64, ptr = types.int32, types.int64, types.uintp
        sig = types.void(i32, i32, i32, i64, i64, i64, real, ptr, i64, ptr, i64, real, ptr, i64)
        return types.ExternalFunction(f"{_OPENBLAS[1]}{name}64_", sig)

    _sgemm, _dgemm = _cblas("cblas_sgemm", types.float32), _cblas("cblas_dgemm", types.float64)

    @helper_or_stand_in(python_gemm, inline=False)
    def gemm(a, b, c, transpose_a, transpose_b):
        # c (M, N) = a (M, K) @ b (K, N), one BLAS call on this thread; a given as (K, M) if transpose_a, b as (N, K)
        # if transpose_b. Each operand may be a strided view (rows any distance apart, elements in a row adjacent).
        M, N = c.shape
        K = a.shape[0] if transpose_a else a.shape[1]
        lda = max(a.strides[0] // a.itemsize, a.shape[1])  # leading dimensions; max() only matters for 1-row views
        ldb = max(b.strides[0] // b.itemsize, b.shape[1])
        ldc = max(c.strides[0] // c.itemsize, N)
        ta = 112 if transpose_a else 111  # CblasTrans / CblasNoTrans
        tb = 112 if transpose_b else 111
        if a.itemsize == 4:  # 101 = CblasRowMajor
            _sgemm(101, ta, tb, M, N, K, np.float32(1), a.ctypes.data, lda, b.ctypes.data, ldb, np.float32(0),
                   c.ctypes.data, ldc)
        else:
            _dgemm(101, ta, tb, M, N, K, 1.0, a.ctypes.data, lda, b.ctypes.data, ldb, 0.0, c.ctypes.data, ldc)

else:  # a NumPy without its bundled OpenBLAS (MKL, Accelerate, ...): correct, but far slower loops
    @helper_or_stand_in(python_gemm, inline=False)
    def gemm(a, b, c, transpose_a, transpose_b):
        M, N = c.shape
        K = a.shape[0] if transpose_a else a.shape[1]
        for i in range(M):
            for j in range(N):
                c[i, j] = 0
            for k in range(K):
                aik = a[k, i] if transpose_a else a[i, k]
                for j in range(N):
                    c[i, j] += aik * (b[j, k] if transpose_b else b[k, j])
