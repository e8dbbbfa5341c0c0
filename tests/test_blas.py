"""The kernels' BLAS (levit_np/fast/blas.py): SciPy's through cython_blas, the built-in GEMM, threads, the cache.

The paths other than this process's run in subprocesses, as the BLAS is chosen at import: LEVIT_NP_BLAS=none, and a
Python where SciPy cannot be imported. Under NUMBA_DISABLE_JIT `gemm` is NumPy's matmul and `builtin_gemm` plain
Python; the tests that need compiled code skip there.
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
# (M, K, N): odd sizes; one row; a column and depth past the built-in GEMM's blocks; no depth (c = 0)
SHAPES = [(7, 5, 6), (1, 9, 3), (3, 2 * blas.DEPTH_BLOCK + 3, blas.COLUMN_BLOCK + 5), (4, 0, 3)]

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


def whole_rows(x):
    """The view x (rows, cols) as rows as wide as its row stride, C-contiguous: what `builtin_gemm` gets from the C
    callback (a view of the buffer from x's first element on)."""
    ld = x.strides[0] // x.itemsize
    start = (x.__array_interface__["data"][0] - x.base.__array_interface__["data"][0]) // x.itemsize
    return x.base.reshape(-1)[start:start + x.shape[0] * ld].reshape(x.shape[0], ld)


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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transpose_a,transpose_b", TRANSPOSES)
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_builtin_gemm_on_whole_rows(dtype, transpose_a, transpose_b, M, K, N):
    a, b, c, big_c = operands(dtype, M, K, N, transpose_a, transpose_b)
    blas.builtin_gemm(whole_rows(a), whole_rows(b), whole_rows(c), M, N, K, transpose_a, transpose_b)
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
    if blas.BLAS != "scipy" or not pools:
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


# --- other processes: the built-in GEMM, a missing SciPy, the on-disk cache -------------------------------------

GEMM_CHECK = """
import json, sys
import numpy as np
from levit_np.fast import blas
from test_blas import DTYPES, SHAPES, TRANSPOSES, check, operands
for dtype in DTYPES:
    for transpose_a, transpose_b in TRANSPOSES:
        for shape in SHAPES:
            a, b, c, big_c = operands(dtype, *shape, transpose_a, transpose_b)
            blas.gemm(a, b, c, transpose_a, transpose_b)
            check(a, b, c, big_c, transpose_a, transpose_b, dtype)
print(json.dumps({"blas": blas.BLAS, "description": blas.blas_description()}))
"""


def run(code, tmp_path=None, prelude="", **env):
    """Run `code` in a fresh Python with tests/ on the path and `env` added; returns its stdout's last line."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]),
           **env}
    out = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", prelude + code], capture_output=True,
                         text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


@needs_jit
def test_gemm_without_a_blas():
    result = json.loads(run(GEMM_CHECK, LEVIT_NP_BLAS="none"))
    assert result == {"blas": "none", "description": "none: built-in GEMM (LEVIT_NP_BLAS=none)"}


@needs_jit
def test_missing_scipy_warns_once_and_falls_back():
    code = """
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from levit_np.fast import blas, kernels  # kernels imports blas again
    import levit_np.fast.blas
messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
assert len(messages) == 1 and "without a BLAS" in messages[0] and "pip install" in messages[0], messages
""" + GEMM_CHECK
    result = json.loads(run(code, prelude="import sys; sys.modules['scipy'] = None\n"))
    assert result["blas"] == "none" and result["description"].startswith("none: built-in GEMM (no SciPy BLAS")


@needs_jit
def test_cached_gemm_links_to_each_process_blas(tmp_path):
    # Compiled and cached with one BLAS, loaded from the cache with the other (and back): the machine code names its
    # BLAS, it holds no address from the process that compiled it.
    code = """
import json
import numpy as np
from levit_np.fast import blas
from test_blas import check, operands
for dtype, (ta, tb) in ((np.float32, (False, False)), (np.float64, (False, True))):
    a, b, c, big_c = operands(dtype, 5, 7, 9, ta, tb)
    blas.gemm(a, b, c, ta, tb)
    check(a, b, c, big_c, ta, tb, dtype)
print(json.dumps({"blas": blas.BLAS, "hits": sum(blas.gemm.stats.cache_hits.values()),
                  "misses": sum(blas.gemm.stats.cache_misses.values())}))
"""
    cache = {"NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    first = json.loads(run(code, LEVIT_NP_BLAS="none", **cache))
    assert first == {"blas": "none", "hits": 0, "misses": 2}
    second = json.loads(run(code, LEVIT_NP_BLAS="scipy", **cache))
    assert second == {"blas": "scipy", "hits": 2, "misses": 0}
    third = json.loads(run(code, LEVIT_NP_BLAS="none", **cache))
    assert third == {"blas": "none", "hits": 2, "misses": 0}


@needs_jit
def test_forward_without_a_blas_matches_the_numpy_backend(checkpoint, tmp_path):
    from helpers import random_pixels  # (helpers imports torch, which the subprocesses above need not)

    _, path = checkpoint("LevitForImageClassification", hidden_sizes=[16, 24, 32], num_attention_heads=[1, 2, 2],
                         depths=[1, 1, 1], key_dim=[8, 8, 8], image_size=64)
    np.save(tmp_path / "x.npy", random_pixels(2, 64))
    code = f"""
import json
import numpy as np
import levit_np
from levit_np.fast import blas
x, errors = np.load({str(tmp_path / "x.npy")!r}), {{}}
for dtype in ("float32", "float64"):
    ref = levit_np.from_pretrained({path!r}, backend="numpy", dtype=dtype)(x.astype(dtype)).logits
    ours = levit_np.from_pretrained({path!r}, backend="numba", dtype=dtype)(x.astype(dtype)).logits
    errors[dtype] = float(np.abs(ours - ref).max() / max(1.0, np.abs(ref).max()))
print(json.dumps({{"blas": blas.BLAS, "errors": errors}}))
"""
    result = json.loads(run(code, LEVIT_NP_BLAS="none"))
    assert result["blas"] == "none"
    assert result["errors"]["float32"] <= 1e-4 and result["errors"]["float64"] <= 1e-10, result


def test_import_levit_np_imports_neither_numba_nor_scipy():
    loaded = set(run("import sys, levit_np; print(' '.join(sys.modules))").split())
    assert "levit_np" in loaded
    assert not {"numba", "scipy", "threadpoolctl", "llvmlite"} & loaded
