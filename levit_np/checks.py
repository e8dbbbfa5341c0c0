"""The checks of a count an argument gives (threads, workers, top_k, batch_size, retries...): one rule, one message,
for the library and the command line alike."""

from __future__ import annotations

import numbers


def positive_int(value, what: str) -> int:
    """`value` as an int if it is an integer of at least 1 (a NumPy integer too, never a bool), else a ValueError
    naming `what`: "top_k must be a positive integer, found 0"."""
    return _at_least(value, 1, what, "a positive integer")


def non_negative_int(value, what: str) -> int:
    """`value` as an int if it is an integer of at least 0 (as positive_int), else a ValueError naming `what`."""
    return _at_least(value, 0, what, "a non-negative integer")


def _at_least(value, minimum: int, what: str, kind: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{what} must be {kind}, found {value!r}")
    return int(value)
