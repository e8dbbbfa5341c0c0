"""Whether the fast kernels are compiled for this CPU and dtype, and compiling them ahead of time.

Numba compiles the kernels on their first call and keeps the result in its on-disk cache (beside the source, in
the user's cache directory when that is read-only, or in NUMBA_CACHE_DIR); a later process loads it instead. A
marker file in that cache directory records that every kernel of one dtype has been compiled for this source, this
Numba and this CPU, so that `backend="auto"` can tell a warm cache from a cold one without compiling anything.

Compiling ahead of time is calling every kernel once (`call_every_kernel`: one pass over a tiny model's layers).

A background compile (backend="auto", `start_background_compile`) holds a file lock in the cache directory while it
runs (`compiling_elsewhere`), so that other processes wait for it rather than compile the same kernels again.

    python -m levit_np.fast float32 float64     # what the background compile runs
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import filelock
import llvmlite
import numba
import numpy as np

from ..checkpoint import random_weights
from ..config import LevitConfig
from . import kernels, numba_internals
from .jit import DISABLE_JIT, SOURCE_HASH
from .target import numba_target
from .weights import prepare

DTYPES = ("float32", "float64")
BACKGROUND_ENV = "LEVIT_NP_BACKGROUND_COMPILE"  # "0": backend="auto" never starts a background compile


def cache_dir() -> Path:
    """Where Numba keeps the compiled kernels (and we keep the markers)."""
    return numba_internals.cache_dir(kernels._conv_kernel.dispatcher)


@functools.cache
def cache_key() -> str:
    """What the compiled code depends on: our kernel sources, Numba, Python and the CPU. Once per process, as the
    kernels this process compiled or loaded are."""
    parts = [numba.__version__, llvmlite.__version__, sys.version, SOURCE_HASH, *numba_target()]
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


# the smallest LeViT with every kind of layer: what compile_kernels runs
TINY = LevitConfig(hidden_sizes=(16, 24, 32), num_attention_heads=(2, 3, 2), depths=(1, 1, 1), key_dim=(4, 4, 8),
                   image_size=48, id2label={0: "a", 1: "b"})


def call_every_kernel(params, config: LevitConfig, pixel_values) -> None:
    """One pass over the layers of `config.plan` with the numba kernels, as `model.levit_forward` calls them (the
    same functions, argument types and order), which compiles (or loads) every kernel a forward pass calls. `params`:
    the prepared weights (`weights.prepare`)."""
    x = kernels.patch_embeddings(pixel_values, **params["patch_embeddings"], stride=config.stride,
                                 padding=config.padding)
    for stage, weights in zip(config.plan, params["stages"], strict=True):
        for layer, p in zip(stage.layers, weights["blocks"] + weights["downsample"], strict=True):
            if layer.kind == "attention":
                x = kernels.add(x, kernels.attention(x, **p, **layer.hyper(), output_attentions=False)[0])
            elif layer.kind == "mlp":
                x = kernels.add(x, kernels.mlp(x, **p))
            else:
                x = kernels.attention_subsample(x, **p, **layer.hyper(), output_attentions=False)[0]
    pooled = x.mean(axis=1)
    for head in ("classifier", "classifier_distill"):
        if head in params:
            kernels.classification_layer(pooled, **params[head])


def compile_kernels(dtype: str = "float32") -> None:
    """Compile (or load from the cache) every kernel of `dtype`, and mark them compiled: a pass over a tiny random
    LeViT (`TINY`)."""
    arch = "LevitForImageClassificationWithTeacher"
    params = prepare(random_weights(TINY, arch, np.dtype(dtype).type), TINY)
    call_every_kernel(params, TINY, np.zeros((1, TINY.num_channels, *TINY.image_shape), dtype))
    mark_compiled(dtype)


def _lock(dtype: str) -> filelock.FileLock:
    # held by the process that compiles `dtype` in the background, released when it ends (however it ends)
    return filelock.FileLock(cache_dir() / f"levit_np-compiling-{dtype}-{cache_key()}.lock")


def compiling_elsewhere(dtype: str) -> bool:
    """Whether a background compile of `dtype` (started by any process) is running now: its lock is held."""
    lock = _lock(dtype)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return True
    except OSError:  # a cache directory we cannot write to: nobody can compile into it
        return False
    lock.release()
    return False


def start_background_compile(dtype: str = "float32") -> subprocess.Popen | None:
    """Compile the kernels of `dtype` in a separate, low-priority process; None where that is switched off, cannot
    start, or another process is compiling them already. The process lives on if this one exits (so that the next
    run finds the cache warm)."""
    if os.environ.get(BACKGROUND_ENV, "1") == "0" or DISABLE_JIT or compiling_elsewhere(dtype):
        return None
    if os.name == "posix":  # its own session (a Ctrl-C of ours does not stop it), below our priority
        detach = dict(start_new_session=True, preexec_fn=lambda: os.nice(10))
    else:
        detach = dict(creationflags=subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.BELOW_NORMAL_PRIORITY_CLASS)
    try:
        return subprocess.Popen([sys.executable, "-m", "levit_np.fast", dtype], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **detach)
    except OSError:
        return None


def background_compile(dtype: str) -> None:
    """What the background process runs: compile_kernels under the lock of `dtype`; nothing where another process
    holds it (it is compiling them) or they are compiled already. The lock is waited for a moment, as another
    process may hold it only to look at it (`compiling_elsewhere`)."""
    try:
        with _lock(dtype).acquire(timeout=1):
            if not is_compiled(dtype):
                compile_kernels(dtype)
    except filelock.Timeout:
        pass


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    for dtype in argv or ["float32"]:
        if dtype not in DTYPES:
            print(f"unknown dtype {dtype!r}; choose from {DTYPES}", file=sys.stderr)
            return 2
        background_compile(dtype)
    return 0
