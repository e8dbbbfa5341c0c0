"""How the numba backend runs a forward pass, and backend="auto": the two hooks of `backend.Backend` it fills in.

`run` (Backend.run): before the first forward pass of a dtype whose kernels are not in Numba's cache, say that it
compiles them; then one forward pass at a time (`threads.FORWARD_LOCK`), in a process that was not forked from one
running OpenMP threads; after the first whole pass (which compiled them), mark the dtype compiled.

`until_ready` (Backend.until_ready, what backend="auto" asks before each forward pass): numba when its kernels are
compiled for the dtype; else the numpy reference while a background process compiles them
(`compiled.start_background_compile`), with NumPy's BLAS on one core fewer meanwhile, then numba from the first
call after that process is done (looked for at most once a second).

What it has to say (it compiles the kernels now, auto runs numpy until they are compiled, the background compile
failed) it says as a `FastPathWarning`, once per process for each message.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
import warnings
from pathlib import Path

from ..cores import available_cpus
from . import compiled, threads


class FastPathWarning(UserWarning):
    """What the numba backend says of its compiling: shown once per process (a "once" warnings filter)."""


warnings.filterwarnings("once", category=FastPathWarning, append=True)  # after any filter the user sets
_PACKAGE = str(Path(__file__).resolve().parents[1])  # levit_np/: a warning names the first caller outside it
_RAN = set()  # the dtypes whose kernels have run a whole forward pass in this process (compiled, and marked so)


def say(message: str) -> None:
    """A FastPathWarning, attributed to the user's code that called into levit_np."""
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, FastPathWarning, stacklevel=level)


def run(forward, dtype: str):
    """Backend.run of the numba backend: forward(), which compiles the kernels where they are not cached yet."""
    threads.check_not_forked()
    if dtype not in _RAN and not compiled.DISABLE_JIT and not compiled.is_compiled(dtype):
        say(f"compiling the numba kernels ({dtype}) for this CPU (once: later runs load them from "
            f"{compiled.cache_dir()})...")
    with threads.FORWARD_LOCK:  # one forward at a time
        out = forward()
    if dtype not in _RAN:
        compiled.mark_compiled(dtype)  # a whole forward pass ran: every kernel of this dtype is cached
        _RAN.add(dtype)
    return out


def until_ready(dtype: str, numba, fallback) -> Auto:
    """Backend.until_ready of the numba backend: what backend="auto" runs (`Auto`)."""
    return Auto(dtype, numba, fallback)


class Auto:
    """Called before each forward pass of a backend="auto" model: the backend to run it on (see the module
    docstring). `compiling`: the background compile (subprocess.Popen) this model started, if any."""

    def __init__(self, dtype: str, numba, fallback):
        self.dtype, self.numba, self.fallback = dtype, numba, fallback
        self.compiling, self.waiting, self._next_check = None, False, 0.0
        if compiled.is_compiled(dtype) or compiled.DISABLE_JIT:  # JIT off: nothing to compile, the reference runs
            self.current = fallback if compiled.DISABLE_JIT else numba
            return
        self.compiling = compiled.start_background_compile(dtype)
        elsewhere = self.compiling is None and compiled.compiling_elsewhere(dtype)
        if self.compiling:
            how = "compiling them in a background process, then switching"
        elif elsewhere:
            how = "another process is compiling them; switching when it is done"
        else:
            how = f"{compiled.BACKGROUND_ENV}=0: not compiling them"
        self.waiting = bool(self.compiling or elsewhere)
        self.current = beside_a_compile(fallback) if self.waiting else fallback
        say(f"the numba kernels ({dtype}) are not compiled yet: running the numpy reference; {how}. "
            f"`levit-np compile` compiles them now, once.")

    def __call__(self):
        own_done = self.compiling is not None and self.compiling.poll() is not None
        if self.waiting and (own_done or time.monotonic() >= self._next_check):
            self._look()
        return self.current

    def _look(self) -> None:
        # the kernels compiled (by any process) -> numba; our own compile failed -> say so; nobody compiling -> stop
        self._next_check = time.monotonic() + 1.0
        status = None if self.compiling is None else self.compiling.poll()
        if compiled.is_compiled(self.dtype):
            self.current, self.waiting = self.numba, False
            say("the numba kernels are compiled: switched to the numba backend")
        elif status not in (None, 0):
            self.current, self.waiting = self.fallback, False
            say("compiling the numba kernels in the background failed: staying on the numpy reference; run "
                "`levit-np compile` to see why")
        elif (self.compiling is None or status == 0) and not compiled.compiling_elsewhere(self.dtype):
            self.current, self.waiting = self.fallback, False  # the compile ended without finishing


def beside_a_compile(backend):
    """`backend` with NumPy's BLAS on one core fewer while the numba kernels compile on this machine: its threads
    wait for each other at every product, so one that shares a core with the compiler stalls them all."""
    def run(forward, dtype):
        controller = _blas_controller()
        current = max((lib["num_threads"] for lib in controller.info() if lib["user_api"] == "blas"), default=1)
        with controller.limit(limits=max(1, min(current, available_cpus() - 1)), user_api="blas"):
            return backend.run(forward, dtype)
    return dataclasses.replace(backend, run=run)


@functools.cache
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()
