"""The kernels' BLAS (levit_np/fast/blas.py): SciPy's through cython_blas, threads, the on-disk cache.

What happens at import (loading cython_blas, registering its addresses with LLVM) is checked in fresh processes.
Under NUMBA_DISABLE_JIT `gemm` is NumPy's matmul; the tests that need compiled code skip there.
"""

import json
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

from levit_np.fast import blas

JIT = not numba.config.DISABLE_JIT
DTYPES = [np.float32, np.float64]
TOL = {np.float32: 1e-5, np.float64: 1e-12}  # relative to max(1, max|ref|)
TRANSPOSES = [(False, False), (True, False), (False, True), (True, True)]
# (M, K, N): odd sizes; one row; a deep and wide product; no depth (c = 0)
SHAPES = [(7, 5, 6), (1, 9, 3), (3, 259, 261), (4, 0, 3)]

needs_jit = pytest.mark.skipif(not JIT, reason="NUMBA_DISABLE_JIT: gemm is NumPy's matmul")


def operands(dtype, M, K, N, transpose_a, transpose_b, seed=0):
    """Strided views a, b, c inside larger NaN-free / NaN-filled buffers (rows further apart than they are wide),
    and the buffer around c, to check that nothing outside c is written."""
    rng = np.random.default_rng(seed)
    big = max(M, K, N) + 9
    big_a, big_b = (rng.standard_normal((big, big + 3)).astype(dtype) for _ in range(2))
    big_c = np.full((big, big + 3), np.nan, dtype)
    a = big_a[2:2 + K, 3:3 + M] if transpose_a else big_a[2:2 + M, 3:3 + K]
    b = big_b[1:1 + N, 4:4 + K] if transpose_b else big_b[1:1 + K, 4:4 + N]
    return a, b, big_c[5:5 + M, 7:7 + N], big_c


def check(a, b, c, big_c, transpose_a, transpose_b, dtype):
    ref = (a.T if transpose_a else a).astype(np.float64) @ (b.T if transpose_b else b).astype(np.float64)
    assert c.dtype == dtype and not np.isnan(c).any()
    if c.size:
        assert np.abs(c - ref).max() / max(1.0, np.abs(ref).max()) <= TOL[dtype]
    assert np.isnan(big_c).sum() == big_c.size - c.size  # nothing written outside the view


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transpose_a,transpose_b", TRANSPOSES)
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_gemm_on_strided_views(dtype, transpose_a, transpose_b, M, K, N):
    a, b, c, big_c = operands(dtype, M, K, N, transpose_a, transpose_b)
    blas.gemm(a, b, c, transpose_a, transpose_b)
    check(a, b, c, big_c, transpose_a, transpose_b, dtype)


@needs_jit
def test_gemm_refuses_sizes_past_32_bit_integers():
    x = np.zeros(4, np.float32)
    a = np.lib.stride_tricks.as_strided(x, shape=(2, 2), strides=(2**31 * 4, 4))  # rows 2^31 elements apart
    b, c = np.zeros((2, 2), np.float32), np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="32-bit"):
        blas.gemm(a, b, c, False, False)


@needs_jit
def test_one_blas_thread_puts_the_kernels_blas_on_one_thread():
    pools = blas._kernel_pools()
    if not pools:
        pytest.skip(f"no BLAS threadpoolctl controls: {blas.blas_description()}")
    for pool in pools:
        pool.set_num_threads(2)
    inside = blas.one_blas_thread(lambda: [pool.get_num_threads() for pool in pools])()
    assert inside == [1] * len(pools)
    assert blas.blas_description().startswith("scipy.linalg.cython_blas (")


def test_set_num_threads_sets_numpys_blas_threads():
    import threadpoolctl

    n = blas.get_num_threads()
    numpy_pools = blas._pools_of("numpy", threadpoolctl.ThreadpoolController())
    try:
        blas.set_num_threads(1)
        assert blas.get_num_threads() == 1
        assert all(pool.get_num_threads() == 1 for pool in numpy_pools)
    finally:
        blas.set_num_threads(n)


# --- other processes: loading SciPy's BLAS, a missing SciPy, the on-disk cache ----------------------------------

def run(code, tmp_path=None, prelude="", **env):
    """Run `code` in a fresh Python with tests/ on the path and `env` added; returns its stdout's last line."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]),
           **env}
    out = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", prelude + code], capture_output=True,
                         text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


@needs_jit
def test_cython_blas_is_loaded_without_scipy_linalg():
    # the reason blas._load_cython_blas loads the extension from its file: scipy.linalg's __init__ is not run ...
    code = """
import sys
import numpy as np
from levit_np.fast import blas
a, b, c = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32), np.zeros((2, 4), np.float32)
blas.gemm(a, b, c, False, False)
assert (c == 3).all()
assert "scipy.linalg" not in sys.modules, sorted(m for m in sys.modules if m.startswith("scipy"))
loaded = blas._load_cython_blas()
import scipy.linalg
import scipy.linalg.cython_blas as imported
from scipy.linalg import cython_blas
assert imported is loaded and cython_blas is loaded  # ... and a later import gets the same module
print("ok")
"""
    assert run(code) == "ok"


@needs_jit
def test_numba_backend_needs_scipy():
    code = """
try:
    from levit_np.fast import blas
except ImportError as e:
    print(f"ImportError: {e}")
"""
    result = run(code, prelude="import sys; sys.modules['scipy'] = None\n")
    assert result.startswith("ImportError") and "scipy" in result, result


@needs_jit
def test_cached_gemm_links_to_each_process_blas(tmp_path):
    # Compiled and cached in one process, loaded from the cache in others: the machine code names the BLAS routine,
    # it holds no address from the process that compiled it (each process loads SciPy's BLAS where it can).
    code = """
import json
import numpy as np
from levit_np.fast import blas
from test_blas import check, operands
for dtype, (ta, tb) in ((np.float32, (False, False)), (np.float64, (False, True))):
    a, b, c, big_c = operands(dtype, 5, 7, 9, ta, tb)
    blas.gemm(a, b, c, ta, tb)
    check(a, b, c, big_c, ta, tb, dtype)
print(json.dumps({"hits": sum(blas.gemm.stats.cache_hits.values()),
                  "misses": sum(blas.gemm.stats.cache_misses.values())}))
"""
    cache = {"NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    assert json.loads(run(code, **cache)) == {"hits": 0, "misses": 2}
    for _ in range(2):
        assert json.loads(run(code, **cache)) == {"hits": 2, "misses": 0}


def test_import_levit_np_imports_neither_numba_nor_scipy():
    loaded = set(run("import sys, levit_np; print(' '.join(sys.modules))").split())
    assert "levit_np" in loaded
    assert not {"numba", "scipy", "threadpoolctl", "llvmlite"} & loaded
