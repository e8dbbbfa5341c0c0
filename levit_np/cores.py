"""The cores a job may use: how many there are, and how a `threads` argument defaults to them."""

from __future__ import annotations

import os


def available_cpus() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def thread_count(threads, what: str = "threads") -> int:
    """`threads` if it is a positive integer, every available core for None; else a ValueError naming it."""
    if threads is None:
        return available_cpus()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"{what} must be a positive integer or None (every core), found {threads!r}")
    return threads
