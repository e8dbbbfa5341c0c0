"""The first run on a fresh install: backend="auto" answers with the numpy reference while the numba kernels compile
in the background, then moves to numba; a warm cache is recognised without compiling; a read-only install caches
in the user's cache directory. Each case runs in fresh processes with an empty Numba cache of its own.

Timings are not asserted here (benchmarks/bench.py measures the cold start); what is asserted is which backend ran
and that its answer equals the numpy reference's.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numba
import numpy as np
import pytest

from helpers import SMALL

pytestmark = pytest.mark.skipif(numba.config.DISABLE_JIT, reason="nothing compiles under NUMBA_DISABLE_JIT")

NOBODY = 65534  # the conventional uid and gid of `nobody`

# Runs in a fresh process: loads the checkpoint with `backend`, runs it, waits for a background compile if asked,
# runs it again; prints JSON with the backends used, the compilations Numba did, and the outputs' error against
# the numpy backend (float32 rounding: 1e-5 relative, as tests/test_kernels.py bounds a kernel against its twin).
CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from numba.core import event
    import levit_np
    from levit_np.fast import compiled

    path, backend, wait = sys.argv[1], sys.argv[2], sys.argv[3] == "wait"
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64), dtype=np.float32)
    ref = levit_np.from_pretrained(path, backend="numpy")(x).logits
    compiles = []
    with event.install_recorder("numba:compile") as rec:
        model = levit_np.from_pretrained(path, backend=backend)
        first_backend, first = model.backend, model(x).logits
        compiling = getattr(model._choose, "compiling", None)  # backend="auto": the compile it started (fast.runtime)
        if wait and compiling is not None:
            compiling.wait(timeout=600)
        second_backend, second = model.backend, model(x).logits
        second_backend = model.backend
    err = lambda a: float(np.abs(a - ref).max() / max(1.0, np.abs(ref).max()))
    print(json.dumps(dict(first_backend=first_backend, second_backend=second_backend, first_err=err(first),
                          second_err=err(second), compilations=len(rec.buffer), cache_dir=str(compiled.cache_dir()),
                          warm=compiled.is_compiled("float32"))))
""")


def run_child(path, backend, wait=False, env=None, user=None):
    cmd = [sys.executable, "-c", CHILD, str(path), backend, "wait" if wait else "no"]
    if user:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


@pytest.fixture
def small_copy(checkpoint, tmp_path):
    _, path = checkpoint("LevitForImageClassificationWithTeacher", num_labels=10, **SMALL)
    copy = tmp_path / "ckpt"
    shutil.copytree(path, copy)
    return copy


def test_auto_answers_with_numpy_then_moves_to_numba(small_copy, tmp_path):
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "numba-cache"), "LEVIT_NP_BACKGROUND_COMPILE": "1"}
    cold, stderr = run_child(small_copy, "auto", wait=True, env=env)
    assert cold["first_backend"] == "numpy" and cold["first_err"] == 0  # the reference itself, no compile waited for
    assert "not compiled yet" in stderr and "switched to the numba backend" in stderr  # said, once each
    assert cold["second_backend"] == "numba" and cold["second_err"] <= 1e-5
    assert cold["warm"] and Path(cold["cache_dir"]) == tmp_path / "numba-cache" / Path(cold["cache_dir"]).name

    warm, stderr = run_child(small_copy, "auto", env=env)  # a later process: the cache is warm, nothing compiles
    assert warm["first_backend"] == warm["second_backend"] == "numba"
    assert warm["compilations"] == 0 and warm["first_err"] <= 1e-5
    assert "not compiled" not in stderr and "compiling" not in stderr


def test_explicit_numba_compiles_in_the_foreground_and_says_so(small_copy, tmp_path):
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    cold, stderr = run_child(small_copy, "numba", env=env)
    assert cold["first_backend"] == "numba" and cold["compilations"] > 0 and cold["first_err"] <= 1e-5
    assert stderr.count("compiling the numba kernels") == 1 and cold["warm"]


# Runs in a fresh process: two backend="auto" models on a cold cache whose background compiles fail; prints the
# FastPathWarnings shown (with the default warnings filters, as a user has them)
SAID_ONCE = textwrap.dedent("""
    import json, subprocess, sys, warnings
    import numpy as np
    import levit_np
    from levit_np.fast import compiled

    compiled.is_compiled = lambda dtype="float32": False
    compiled.start_background_compile = lambda dtype="float32": subprocess.Popen([sys.executable, "-c", "exit(3)"])
    shown = []
    warnings.showwarning = lambda message, category, *rest: shown.append(f"{category.__name__}: {message}")
    x = np.zeros((1, 3, 64, 64), np.float32)
    for _ in range(2):
        model = levit_np.from_pretrained(sys.argv[1], backend="auto")
        model._choose.compiling.wait()
        model(x)
        model(x)
        assert model.backend == "numpy"
    print(json.dumps(shown))
""")


def test_a_fallback_is_said_once_per_process(small_copy):
    """backend="auto" falling back to the numpy reference says so once per process, however many models do, and
    so does a background compile that fails (each model then stays on numpy)."""
    out = subprocess.run([sys.executable, "-c", SAID_ONCE, str(small_copy)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    shown = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(shown) == 2 and all(m.startswith("FastPathWarning: ") for m in shown), shown
    assert "not compiled yet: running the numpy reference" in shown[0]
    assert "compiling the numba kernels in the background failed" in shown[1]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to run as another user")
def test_read_only_install_caches_in_the_users_cache_directory(small_copy):
    """As `nobody`, who cannot write next to the package (as in a system or Docker install), Numba caches in that
    user's cache directory, and a second process finds it warm."""
    base = Path(tempfile.mkdtemp(prefix="levit-nobody-"))  # not under pytest's 0700 tmp: nobody must reach it
    try:
        base.chmod(0o755)
        shutil.copytree(small_copy, base / "ckpt")
        for p in [base / "ckpt", *(base / "ckpt").iterdir()]:
            p.chmod(0o755)
        home = base / "home"
        home.mkdir()
        os.chown(home, NOBODY, NOBODY)
        env = {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "NUMBA_CACHE_DIR": ""}
        cold, _ = run_child(base / "ckpt", "numba", env=env, user=NOBODY)
        assert Path(cold["cache_dir"]).is_relative_to(home), cold["cache_dir"]
        assert cold["first_err"] <= 1e-5 and cold["compilations"] > 0 and cold["warm"]
        warm, _ = run_child(base / "ckpt", "auto", env=env, user=NOBODY)
        assert warm["first_backend"] == "numba" and warm["compilations"] == 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_levit_np_compile_then_info_says_auto_runs_numba(small_copy, tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}

    def cli(*args):
        out = subprocess.run([sys.executable, "-m", "levit_np", *args], capture_output=True, text=True, env=env,
                             timeout=900)
        assert out.returncode == 0, out.stderr[-2000:]
        return out

    assert json.loads(cli("info", str(small_copy), "--json").stdout)["fast_path"]["auto_backend"]["float32"] != "numba"
    done = cli("compile")
    assert "compiling the numba kernels (float32)" in done.stderr and "float32: compiled in" in done.stdout
    fast = json.loads(cli("info", str(small_copy), "--json").stdout)["fast_path"]
    assert fast["auto_backend"]["float32"] == "numba"
    assert Path(fast["numba_cache"]).is_relative_to(tmp_path / "numba-cache")
    assert "already compiled" in cli("compile").stdout


def test_an_edit_to_any_fast_path_source_is_a_fresh_compile(tmp_path):
    """Numba checks only the timestamp of the file defining a kernel; the kernels also depend on llvm_ir.py,
    target.py and blas.py. An edit to any of those (here a copy of the package with one comment added to
    llvm_ir.py) must give every kernel new cache files and a new compiled-marker, never a stale cached kernel."""
    package = Path(__file__).resolve().parents[1] / "levit_np"
    probe = ("import json, levit_np; from levit_np.fast import compiled, kernels; "
             "print(json.dumps([levit_np.__file__, kernels._conv_kernel.dispatcher._cache._cache_file._index_name, "
             "kernels._attention_kernel.dispatcher._cache._cache_file._index_name, compiled.cache_key()]))")

    def names(root):
        env = {**os.environ, "PYTHONPATH": str(root), "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300,
                             cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        found = json.loads(out.stdout)
        assert Path(found[0]).is_relative_to(root), found[0]  # the copy was imported, not the installed package
        return found[1:]

    for copy in ("same", "edited"):
        shutil.copytree(package, tmp_path / copy / "levit_np", ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "edited" / "levit_np" / "fast" / "llvm_ir.py", "a") as f:
        f.write("\n# an edit\n")
    same, edited = names(tmp_path / "same"), names(tmp_path / "edited")
    assert same == names(tmp_path / "same")  # stable across processes
    assert all(a != b for a, b in zip(same, edited, strict=True)), (same, edited)


def test_numpy_path_leaves_a_core_to_the_background_compile(small_copy, monkeypatch):
    """While backend="auto" waits for a compile on this machine, the numpy reference runs NumPy's BLAS on one core
    fewer (threads that wait for each other at every product, one of them sharing a core with the compiler, made a
    folder of photos several times slower), and gets its threads back afterwards."""
    import threadpoolctl

    import levit_np
    from levit_np import model as model_module
    from levit_np.fast import compiled

    def blas_threads():
        return max(lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas")

    class Compiling:  # a background compile that is still running
        pid = 0

        def poll(self):
            return None

    seen = []
    forward = model_module.levit_forward
    monkeypatch.setattr(model_module, "levit_forward",
                        lambda *a, **kw: seen.append(blas_threads()) or forward(*a, **kw))
    monkeypatch.setattr(compiled, "is_compiled", lambda dtype="float32": False)
    monkeypatch.setattr(compiled, "start_background_compile", lambda dtype="float32": Compiling())
    x = np.zeros((1, 3, 64, 64), np.float32)
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        levit_np.from_pretrained(small_copy, backend="numpy")(x)
        waiting = levit_np.from_pretrained(small_copy, backend="auto")  # as backend="auto" is while a compile runs
        waiting._choose._next_check = float("inf")
        assert waiting.backend == "numpy" and waiting._choose.waiting
        waiting(x)
        assert blas_threads() == 2
    assert seen == [2, max(1, min(2, os.cpu_count() - 1))]


def test_without_the_source_hash_an_edit_to_another_file_leaves_a_stale_kernel(tmp_path):
    """What jit.SOURCE_HASH prevents. kernels._hardswish inlines llvm_ir.clamp; an edit to clamp (here: it returns
    lo, so that hardswish(1) becomes 0 instead of 2/3) must reach the cached kernel. With the hash in every kernel's
    name it does; without it, Numba sees kernels.py unchanged and loads the stale kernel from its cache."""
    package = Path(__file__).resolve().parents[1] / "levit_np"
    probe = "import numpy as np; from levit_np.fast import kernels; print(float(kernels._hardswish(np.float32(1))))"

    def hardswish_of_1(root):
        env = {**os.environ, "PYTHONPATH": str(root), "NUMBA_CACHE_DIR": str(root / "cache")}
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300,
                             cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        return float(out.stdout)

    found = {}
    for variant in ("with the hash", "without the hash"):
        root = tmp_path / variant.replace(" ", "-")
        shutil.copytree(package, root / "levit_np", ignore=shutil.ignore_patterns("__pycache__"))
        if variant == "without the hash":
            jit = root / "levit_np" / "fast" / "jit.py"
            jit.write_text(jit.read_text().replace("SOURCE_HASH = hashlib", "SOURCE_HASH = 'same' or hashlib"))
        before = hardswish_of_1(root)  # compiled, and cached
        llvm_ir = root / "levit_np" / "fast" / "llvm_ir.py"
        edited = llvm_ir.read_text().replace('v = builder.select(builder.fcmp_ordered(">", v, lo), v, lo)',
                                             "v = lo")
        assert edited != llvm_ir.read_text()
        llvm_ir.write_text(edited)
        found[variant] = before, hardswish_of_1(root)
    assert found["with the hash"] == (pytest.approx(2 / 3), 0.0)  # the edit is compiled
    assert found["without the hash"] == (pytest.approx(2 / 3), pytest.approx(2 / 3))  # the stale kernel is loaded
