"""levit_np/fast/tiles.py: a tile function run on Numba's threads through its launcher, against NumPy.

Each case also runs under NUMBA_DISABLE_JIT=1 (the tiles then run one after another in Python), but for the
properties of compiled code: exceptions from compiled tiles, and the launcher compiled without the tile's code.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

from levit_np.fast.tiles import tiles

JIT = not numba.config.DISABLE_JIT
needs_jit = pytest.mark.skipif(not JIT, reason="NUMBA_DISABLE_JIT: the tiles run as plain Python")


@tiles
def _doubled_plus_row(t, x, out, rows):
    # tile t: out[r] = 2 x[r] + r for rows t*rows ... (exact in any precision: the doubling does not round)
    for r in range(t * rows, min(x.shape[0], (t + 1) * rows)):
        for c in range(x.shape[1]):
            out[r, c] = 2 * x[r, c] + r
    return True


@tiles
def _count_runs(t, counts):
    # tile t: one more run of tile t
    counts[t] += 1
    return True


@tiles
def _fails_on_tile_3(t, done):
    if t == 3:
        raise ValueError("tile 3 cannot be done")
    done[t] = 1
    return True


@pytest.fixture(params=[1, 2], ids=["1 thread", "2 threads"])
def threads(request):
    if request.param > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("one core")
    before = numba.get_num_threads()
    numba.set_num_threads(request.param)
    yield request.param
    numba.set_num_threads(before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M,rows", [(0, 4), (1, 1), (7, 3), (100, 1), (100, 64)])
def test_tiles_compute_what_numpy_does(threads, dtype, M, rows):
    x = np.random.default_rng(M).standard_normal((M, 5)).astype(dtype)
    out = np.full_like(x, np.nan)
    _doubled_plus_row(-(-M // rows), x, out, rows)
    np.testing.assert_array_equal(out, 2 * x + np.arange(M, dtype=dtype)[:, None])


def test_every_tile_runs_once(threads):
    counts = np.zeros(1000, np.int64)
    _count_runs(counts.size, counts)
    assert (counts == 1).all()


def test_arguments_of_another_layout_get_their_own_compilation():
    """A column-strided x is not the C-contiguous array the float64 tile was first compiled for: the launcher's type
    check sends it to a compilation of its own, not to code that would read it as contiguous."""
    x = np.random.default_rng(0).standard_normal((9, 10))
    out = np.empty((9, 5))
    _doubled_plus_row(3, np.ascontiguousarray(x[:, ::2]), out, 3)  # the usual types first
    np.testing.assert_array_equal(out, 2 * x[:, ::2] + np.arange(9.0)[:, None])
    out[...] = np.nan
    _doubled_plus_row(3, x[:, ::2], out, 3)  # (9, 5), rows 10 apart, columns 2 apart
    np.testing.assert_array_equal(out, 2 * x[:, ::2] + np.arange(9.0)[:, None])
    if JIT:
        float64 = [sig[1] for sig in _doubled_plus_row.dispatcher.signatures if str(sig[1].dtype) == "float64"]
        assert {x.layout for x in float64} == {"C", "A"}


@needs_jit
def test_a_tile_that_raises_fails_the_call_and_the_others_still_run(monkeypatch):
    shown = []  # Numba's C wrapper hands the tile's exception to sys.unraisablehook (which prints it)
    monkeypatch.setattr(sys, "unraisablehook", lambda u: shown.append(repr(u.exc_value)))
    done = np.zeros(8, np.int64)
    with pytest.raises(RuntimeError, match="_fails_on_tile_3: 1 of 8 tiles raised"):
        _fails_on_tile_3(8, done)
    assert done.tolist() == [1, 1, 1, 0, 1, 1, 1, 1]
    assert shown == ["ValueError('tile 3 cannot be done')"]


# Runs in a fresh process with an empty Numba cache (cached code keeps no IR to inspect)
LAUNCHER_IR = """
import json, numpy as np, test_tiles
kernel = test_tiles._count_runs
kernel(4, np.zeros(4, np.int64))
tile = kernel.dispatcher.overloads[kernel.dispatcher.signatures[0]]
launcher_ir = "".join(kernel.launcher.inspect_llvm().values())
print(json.dumps([tile.fndesc.mangled_name, launcher_ir]))
"""


@needs_jit
def test_the_launcher_calls_the_tile_without_its_code(tmp_path):
    """The point of tiles.py: the tile's code is compiled once, in its own library; the launcher (the only parallel
    function) reaches it through a pointer, so that Numba neither links nor generates the tile's code again."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(Path(__file__).parent)}
    out = subprocess.run([sys.executable, "-c", LAUNCHER_IR], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    tile_name, launcher_ir = json.loads(out.stdout.strip().splitlines()[-1])
    assert "inttoptr" in launcher_ir and "@do_scheduling" in launcher_ir  # a parallel loop calling through a pointer
    assert tile_name not in launcher_ir
