"""The numba backend from two Python threads on every threading layer, and in a child forked after it ran."""

import json
import os
import re
import subprocess
import sys
import textwrap

import numba
import pytest

import levit_np

pytestmark = pytest.mark.skipif(numba.config.DISABLE_JIT, reason="no thread pool under NUMBA_DISABLE_JIT")


TWO_THREADS = textwrap.dedent("""
    import json, sys, threading
    import numpy as np, numba, levit_np

    model = levit_np.from_pretrained(sys.argv[1], backend="numba")
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64), dtype=np.float32)
    ref = model(x).logits
    results = []

    def work():
        for _ in range(20):
            results.append(bool(np.array_equal(model(x).logits, ref)))

    workers = [threading.Thread(target=work) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(json.dumps(dict(layer=numba.threading_layer(), calls=len(results), equal=all(results))))
""")

FORK = textwrap.dedent("""
    import multiprocessing, sys
    import numpy as np, numba, levit_np

    model = levit_np.from_pretrained(sys.argv[1], backend="numba")
    x = np.zeros((1, 3, 64, 64), np.float32)
    model(x)  # the thread pool starts

    def child(queue):
        try:
            model(x)
            queue.put("ran")
        except RuntimeError as e:
            queue.put("RuntimeError: " + str(e))

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    p = ctx.Process(target=child, args=(queue,))
    p.start()
    print(numba.threading_layer(), queue.get(timeout=60))
    p.join(60)
""")


def layer_available(layer):
    code = ("import numba, numpy as np, levit_np.fast\n"  # levit_np.fast loads pip's TBB, as the backend does
            "@numba.njit(parallel=True)\n"
            "def f(a):\n"
            "    for i in numba.prange(a.size):\n"
            "        a[i] += 1\n"
            "f(np.zeros(8)); print(numba.threading_layer())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "NUMBA_THREADING_LAYER": layer})
    return r.returncode == 0 and r.stdout.strip() == layer


@pytest.mark.parametrize("layer", ["omp", "tbb", "workqueue"])
def test_two_python_threads_share_one_model(small, layer):
    if not layer_available(layer):
        pytest.skip(f"Numba's {layer} threading layer is not installed here")
    env = {**os.environ, "NUMBA_THREADING_LAYER": layer}
    r = subprocess.run([sys.executable, "-c", TWO_THREADS, str(small)], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, f"rc {r.returncode}: {r.stderr[-2000:]}"  # workqueue used to abort (SIGABRT)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == dict(layer=layer, calls=40, equal=True)


@pytest.mark.parametrize("layer", ["default", "omp", "tbb", "workqueue"])
def test_fork_after_the_pool_started_fails_clearly_instead_of_hanging(small, layer):
    if layer != "default" and not layer_available(layer):
        pytest.skip(f"Numba's {layer} threading layer is not installed here")
    env = {**os.environ, "NUMBA_THREADING_LAYER": layer}
    r = subprocess.run([sys.executable, "-c", FORK, str(small)], capture_output=True, text=True, timeout=300,
                       env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    layer, result = r.stdout.strip().split(" ", 1)
    if layer == "omp":  # GNU OpenMP would hang in the child: a clear error that says what to do
        assert result.startswith("RuntimeError") and "spawn" in result
    else:  # fork-safe layers just run
        assert result == "ran"


def test_tbb_is_the_layer_chosen_where_it_is_installed():
    """pip's tbb wheel (a dependency where PyPI has it) sits where Numba does not look; the backend loads it, so that
    the default layer is TBB, and `levit-np info` says so."""
    from importlib import metadata

    try:
        metadata.distribution("tbb")
    except metadata.PackageNotFoundError:
        pytest.skip("tbb is not installed (no wheel for this platform)")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    code = "from levit_np.fast.report import threading_layer; print(threading_layer())"
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.startswith("tbb "), probe.stdout


@pytest.mark.parametrize("n", [None, "2", 1.5, True])
def test_set_num_threads_refuses_what_is_no_integer(n):
    message = f"num_threads must be in 1..\\d+ \\(NUMBA_NUM_THREADS\\), found {re.escape(repr(n))}"
    with pytest.raises(ValueError, match=message):
        levit_np.set_num_threads(n)
