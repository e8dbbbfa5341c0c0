"""The thread pool the numba backend runs on: which one, and its use from several Python threads or forked processes.

Numba runs parallel kernels on one of three threading layers: `tbb` (Intel TBB), `omp` (GNU OpenMP) or `workqueue`
(its own), the first that loads in NUMBA_THREADING_LAYER_PRIORITY order unless NUMBA_THREADING_LAYER names one.
levit-np prefers TBB (a dependency where PyPI has its wheels): a parallel region of GNU OpenMP ends only when every
thread has reached its barrier, so a thread that a busy neighbour has descheduled stalls each of the forward pass's
many regions; TBB's regions end when their work is done, taken by whichever threads are running, and TBB is
fork-safe. pip's tbb wheel puts the library in the environment's lib/ folder, where Numba's TBB layer does not look
(conda's does), so `load_tbb` loads it from there first.

Numba's thread pool runs one parallel region at a time per process: its `workqueue` layer (what Numba falls back
to without OpenMP or TBB, common on macOS) aborts the process when two Python threads launch regions at once, and
two concurrent forwards would only share the same cores anyway. So forwards take turns (`FORWARD_LOCK`).

GNU OpenMP, behind Numba's `omp` layer, is not fork-safe: a child forked after the pool started (multiprocessing's
"fork" start method) hangs forever in its first parallel region. `check_not_forked` turns that into a clear error.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from pathlib import Path

import numba

from .numba_internals import thread_pool_started

FORWARD_LOCK = threading.Lock()
# where pip's tbb wheel installs the library, by platform (its soname, which Numba's TBB layer asks for)
TBB_LIBRARIES = {"linux": "lib/libtbb.so.12", "darwin": "lib/libtbb.12.dylib", "win32": "Library/bin/tbb12.dll"}


def load_tbb() -> bool:
    """Load pip's TBB from this environment before Numba starts its thread pool, so that Numba can use it; True if
    it is loaded. Does nothing once the pool has started (the layer is chosen then) or where TBB is not installed."""
    name = next((lib for platform, lib in TBB_LIBRARIES.items() if sys.platform.startswith(platform)), None)
    if thread_pool_started() or name is None:
        return False
    for prefix in dict.fromkeys([sys.prefix, sys.base_prefix]):
        path = Path(prefix) / name
        if path.is_file():
            try:
                ctypes.CDLL(str(path), mode=getattr(ctypes, "RTLD_GLOBAL", 0))
                return True
            except OSError:  # a broken or foreign library: Numba falls back to OpenMP, and `levit-np info` says so
                return False
    return False


load_tbb()
_forked_after_launch = False


def _note_fork() -> None:
    global _forked_after_launch
    if thread_pool_started() and numba.threading_layer() == "omp":
        _forked_after_launch = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_note_fork)


def check_not_forked() -> None:
    """RuntimeError in a child forked after the OpenMP thread pool started, instead of a hang."""
    if _forked_after_launch:
        raise RuntimeError(
            "this process was forked after the numba backend's OpenMP thread pool started (multiprocessing's "
            "'fork' start method), and GNU OpenMP cannot run in such a child: it would hang. Start the pool with "
            "multiprocessing.get_context('spawn') (or 'forkserver'), or load the model in each worker with "
            "backend='numpy'.")
