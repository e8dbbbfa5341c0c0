"""JIT settings for every kernel of the fast path, and every stand-in it uses under NUMBA_DISABLE_JIT=1.

With the JIT off (stumpy-style coverage: the kernel bodies run line by line as plain Python), the hand-written
LLVM IR (`llvm_ir.py`) and the BLAS call (`blas.py`) cannot run; the plain-Python functions at the bottom of this
file compute the same thing and take their place. Nothing else in the fast path forks on the JIT setting.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numba
import numpy as np

DISABLE_JIT = bool(numba.config.DISABLE_JIT)

# Numba names a function's cache files after its __qualname__ and, to tell a stale entry, looks only at the
# timestamp of the file that defines it; the kernels also depend on the IR, tile and BLAS binding in the other
# files here. Every jitted function carries this hash of all of them in its name, so an edit to any is a fresh
# compile, never a stale (possibly crashing) kernel loaded from the cache.
_SOURCES = sorted(Path(__file__).parent.glob("*.py"))
SOURCE_HASH = hashlib.sha256(b"".join(f.read_bytes() for f in _SOURCES)).hexdigest()[:12]


def _named_for_its_sources(fn):
    fn.__qualname__ = f"{fn.__qualname__}_{SOURCE_HASH}"
    return fn

# Floating-point freedoms for the hot loops: reassociation (vectorised sums) and FMA contraction; not 'nnan'/'ninf'
# (only `llvm_ir.fast_max` assumes there are no NaNs).
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


def kernel(parallel: bool = False, nogil: bool = False):
    """@njit for a kernel's tile function (`tiles.py`) or launcher: cached on disk, compiled once per dtype (never
    per shape), with FASTMATH."""
    decorate = numba.njit(cache=True, fastmath=FASTMATH, parallel=parallel, nogil=nogil)
    return lambda fn: decorate(_named_for_its_sources(fn))


def helper(fn=None, *, inline: bool = True):
    """@njit for a function that kernels call, inlined into them unless `inline=False`."""
    njit = numba.njit(cache=True, fastmath=FASTMATH, inline="always" if inline else "never")

    def decorate(f):
        return njit(_named_for_its_sources(f))
    return decorate if fn is None else decorate(fn)


def intrinsic_or_stand_in(stand_in):
    """An LLVM-IR function (`numba.extending.intrinsic`), or `stand_in` when the JIT is off."""
    def decorate(fn):
        return stand_in if DISABLE_JIT else numba.extending.intrinsic(fn)
    return decorate


def helper_or_stand_in(stand_in, *, inline: bool = True):
    """A `helper` that calls LLVM IR or a C library, or `stand_in` when the JIT is off."""
    def decorate(fn):
        return stand_in if DISABLE_JIT else helper(fn, inline=inline)
    return decorate


# --- the stand-ins ------------------------------------------------------------------------------------------------

def python_max(a, b):
    # llvm_ir.fast_max
    return max(a, b)


def python_clamp(v, lo, hi):
    # llvm_ir.clamp: min(max(v, lo), hi), a NaN v giving lo
    v = v if v > lo else lo
    return v if v < hi else hi


def python_pow2(n):
    # llvm_ir.pow2: 2^n as a float32
    return np.float32(2.0 ** int(n))


def python_micro_gemm(x, panel, c):
    # llvm_ir.micro_gemm: c (rows, cols) = x (rows, K) @ panel (K, cols)
    c[...] = x @ panel


def python_gemm(a, b, c, transpose_a, transpose_b):
    # blas.gemm: c (M, N) = a (M, K) @ b (K, N); a given as (K, M) if transpose_a, b as (N, K) if transpose_b
    c[...] = (a.T if transpose_a else a) @ (b.T if transpose_b else b)
