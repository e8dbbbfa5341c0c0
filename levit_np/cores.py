"""The cores a job may use: how many there are, and how a `threads` argument defaults to them."""

from __future__ import annotations

import os

from .checks import positive_int


def available_cpus() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def thread_count(threads, what: str = "threads") -> int:
    """`threads` if it is a positive integer, every available core for None; else a ValueError naming it."""
    return available_cpus() if threads is None else positive_int(threads, what)


def threads_per_worker(workers: int) -> int:
    """The threads each of `workers` processes on this machine runs with: the cores // workers, at least 1."""
    return max(1, available_cpus() // workers)
