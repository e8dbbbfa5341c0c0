"""Whether the fast kernels are compiled for this CPU and dtype, and compiling them ahead of time.

Numba compiles the kernels on their first call and keeps the result in its on-disk cache (beside the source, in
the user's cache directory when that is read-only, or in NUMBA_CACHE_DIR); a later process loads it instead. A
marker file in that cache directory records that every kernel of one dtype has been compiled for this source, this
Numba and this CPU, so that `backend="auto"` can tell a warm cache from a cold one without compiling anything.

Numba compiles on one core, so `compile_for` splits the work where there is a second one: a worker process
compiles the conv stem's kernels (`patch_embeddings` on the model's own stem weights) while this process compiles
everything else (the forward pass with a stand-in stem); the forward pass then loads the stem's kernels from the
cache. The two halves share no function that they would compile with different signatures (both call
`kernels._panel_product` and `blas._check_blas_sizes` with the same types; every kernel's tile function and
launcher belong to one half), so their writes to Numba's per-function cache index never race.

    python -m levit_np.fast.compiled float32 float64     # what `levit-np compile` and the background compile run
    python -m levit_np.fast.compiled --stem               # compile_for's worker: reads its job on stdin
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import llvmlite
import numba
import numpy as np

from .. import __version__
from . import kernels, numba_internals
from .jit import DISABLE_JIT, SOURCE_HASH
from .target import numba_target

DTYPES = ("float32", "float64")
BACKGROUND_ENV = "LEVIT_NP_BACKGROUND_COMPILE"  # "0": backend="auto" never starts a background compile
PARALLEL_ENV = "LEVIT_NP_PARALLEL_COMPILE"  # "0": compile_for compiles in this process only
STEM_WORKER_TIMEOUT = 600  # seconds compile_for waits for its worker before going on without it


def cache_dir() -> Path:
    """Where Numba keeps the compiled kernels (and we keep the markers)."""
    return numba_internals.cache_dir(kernels._conv_kernel.dispatcher)


@functools.cache
def cache_key() -> str:
    """What the compiled code depends on: our kernel sources, Numba, Python and the CPU. Once per process, as the
    kernels this process compiled or loaded are."""
    parts = [__version__, numba.__version__, llvmlite.__version__, sys.version, SOURCE_HASH, *numba_target()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _marker(dtype: str) -> Path:
    return cache_dir() / f"levit_np-compiled-{dtype}-{cache_key()}"


def is_compiled(dtype: str = "float32") -> bool:
    """True when every kernel of `dtype` is in Numba's cache for this source and CPU (a first call only loads it)."""
    return not DISABLE_JIT and _marker(dtype).exists()


def mark_compiled(dtype: str) -> None:
    """Record that every kernel of `dtype` has been compiled and cached (after a whole forward pass ran)."""
    if DISABLE_JIT:
        return
    try:
        _marker(dtype).touch()
    except OSError:  # a cache directory we cannot write to: Numba cannot cache there either
        pass


def compile_kernels(dtype: str = "float32") -> None:
    """Compile (or load from the cache) every kernel of `dtype`: one forward pass of a tiny random LeViT (whose first
    call compiles on two processes: `compile_for`)."""
    from ..checkpoint import random_weights
    from ..config import LevitConfig
    from ..model import Levit

    config = LevitConfig(hidden_sizes=(16, 24, 32), num_attention_heads=(2, 3, 2), depths=(1, 1, 1),
                         key_dim=(4, 4, 8), image_size=48, id2label={0: "a", 1: "b"})
    arch = "LevitForImageClassificationWithTeacher"
    model = Levit(config, arch, random_weights(config, arch, np.dtype(dtype).type), backend="numba", dtype=dtype)
    model(np.zeros((1, 3, 48, 48), dtype))  # marks the dtype compiled


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def compile_for(model) -> str | None:
    """Compile the numba kernels that `model` (a numba-backend `Levit`) calls, before its first forward pass: the
    conv stem's in a worker process (`compile_stem`) while this one compiles the rest (`compile_all_but_stem`), where
    there are two cores, else all here. Returns None, or why the worker did not help (it could not start, failed
    or timed out). The stem's kernels reach this process through Numba's cache;
    where the worker did not compile them, the forward pass does, here (the same kernels, only later)."""
    if DISABLE_JIT:
        return None
    if _cores() < 2 or numba.get_num_threads() < 2 or os.environ.get(PARALLEL_ENV, "1") == "0":
        return None  # one core (or switched off): the forward pass compiles everything, here, as asked
    stderr = tempfile.TemporaryFile()  # the worker's, for the message if it fails
    try:
        worker = subprocess.Popen([sys.executable, "-m", "levit_np.fast.compiled", "--stem"],
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr)
    except OSError as e:
        stderr.close()
        return f"could not start the worker process that compiles the conv stem ({e})"
    try:
        worker.stdin.write(pickle.dumps(stem_job(model)))
        worker.stdin.close()
    except OSError:  # it died at once: its exit status and stderr say why, below
        pass
    timed_out = False
    try:
        compile_all_but_stem(model)
    finally:
        try:
            worker.wait(STEM_WORKER_TIMEOUT)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
            timed_out = True
    with stderr:
        stderr.seek(0)
        lines = stderr.read().decode(errors="replace").strip().splitlines()
    if worker.returncode == 0:
        return None
    why = (f"timed out after {STEM_WORKER_TIMEOUT} s" if timed_out else
           f"failed (exit status {worker.returncode}{': ' + lines[-1] if lines else ''})")
    return f"the worker process that compiles the conv stem {why}"


def stem_job(model) -> dict:
    """What `compile_stem` needs of a model (picklable): its dtype, channels, stem weights and conv geometry."""
    c = model.config
    return {"dtype": model.dtype.name, "channels": c.num_channels, "weights": model._params["patch_embeddings"],
            "stride": c.stride, "padding": c.padding}


def compile_stem(job: dict) -> None:
    """Compile the conv stem's kernels for the model of `job` (`stem_job`): its patch_embeddings on one small image."""
    from . import BACKEND

    pixels = np.zeros((1, job["channels"], 64, 64), job["dtype"])  # 64 -> 32 -> 16 -> 8 -> 4 pixels
    BACKEND.patch_embeddings(pixels, **job["weights"], stride=job["stride"], padding=job["padding"])


def compile_all_but_stem(model) -> None:
    """Compile every kernel `model` calls but the conv stem's: its forward pass on the stem's output shape, zeros."""
    from ..model import levit_forward

    c = model.config
    (rows, cols), width = c.resolutions[0], c.hidden_sizes[0]

    def stand_in_stem(pixel_values, **_):  # the stem's output: tokens (1, N, C0)
        return np.zeros((1, rows * cols, width), model.dtype)

    levit_forward(None, model._params, c, dataclasses.replace(model._ops, patch_embeddings=stand_in_stem),
                  model.architecture)


def _lock(dtype: str) -> Path:
    return cache_dir() / f"levit_np-compiling-{dtype}-{cache_key()}.pid"


def compiling_pid(dtype: str) -> int | None:
    """The pid of a background compile of `dtype` that is running now (started by any process), or None."""
    try:
        pid = int(_lock(dtype).read_text())
        os.kill(pid, 0)  # raises if there is no such process
        return pid
    except (OSError, ValueError):
        return None


def start_background_compile(dtype: str = "float32") -> subprocess.Popen | None:
    """Compile the kernels of `dtype` in a separate, low-priority process; None where that is switched off, cannot
    start, or another process is compiling them already. The process lives on if this one exits (so that the next
    run finds the cache warm)."""
    if os.environ.get(BACKGROUND_ENV, "1") == "0" or DISABLE_JIT or compiling_pid(dtype):
        return None
    if os.name == "posix":  # its own session (a Ctrl-C of ours does not stop it), below our priority
        detach = dict(start_new_session=True, preexec_fn=lambda: os.nice(10))
    else:
        detach = dict(creationflags=subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.BELOW_NORMAL_PRIORITY_CLASS)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "levit_np.fast.compiled", dtype], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, PARALLEL_ENV: "0"}, **detach)  # one core: the other answers
    except OSError:
        return None
    try:
        _lock(dtype).write_text(str(proc.pid))
    except OSError:
        pass
    return proc


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--stem"]:  # compile_for's worker
        compile_stem(pickle.loads(sys.stdin.buffer.read()))
        return 0
    for dtype in argv or ["float32"]:
        if dtype not in DTYPES:
            print(f"unknown dtype {dtype!r}; choose from {DTYPES}", file=sys.stderr)
            return 2
        try:
            compile_kernels(dtype)
        finally:
            if compiling_pid(dtype) == os.getpid():
                _lock(dtype).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
