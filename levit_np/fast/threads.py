"""The numba backend called from several Python threads, or from a process forked after it ran.

Numba's thread pool runs one parallel region at a time per process: its `workqueue` layer (what Numba falls back
to without OpenMP or TBB, common on macOS) aborts the process when two Python threads launch regions at once, and
two concurrent forwards would only share the same cores anyway. So forwards take turns (`FORWARD_LOCK`).

GNU OpenMP, behind Numba's `omp` layer, is not fork-safe: a child forked after the pool started (multiprocessing's
"fork" start method) hangs forever in its first parallel region. `check_not_forked` turns that into a clear error.
"""

from __future__ import annotations

import os
import threading

import numba

FORWARD_LOCK = threading.Lock()
_forked_after_launch = False


def _note_fork() -> None:
    global _forked_after_launch
    from numba.np.ufunc import parallel

    if parallel._is_initialized and numba.threading_layer() == "omp":
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
