"""The one check of a count an argument gives (levit_np.checks), as the library and the command line use it."""

import re

import numpy as np
import pytest

from levit_np.app.cli import main
from levit_np.checks import non_negative_int, positive_int
from levit_np.cores import thread_count, threads_per_worker


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.uint8(2)])
def test_positive_int_takes_any_integer_from_1(value):
    assert positive_int(value, "top_k") == value and type(positive_int(value, "top_k")) is int


@pytest.mark.parametrize("value", [0, -1, 1.0, 2.5, "2", True, None, np.float32(2)])
def test_positive_int_refuses_the_rest_naming_it(value):
    with pytest.raises(ValueError, match=f"^batch_size must be a positive integer, found {re.escape(repr(value))}$"):
        positive_int(value, "batch_size")


def test_non_negative_int_takes_0():
    assert non_negative_int(0, "retries") == 0
    with pytest.raises(ValueError, match="retries must be a non-negative integer, found -1"):
        non_negative_int(-1, "retries")


def test_thread_counts():
    assert thread_count(None) >= 1 and thread_count(3) == 3
    with pytest.raises(ValueError, match="workers must be a positive integer, found 0"):
        thread_count(0, "workers")
    assert threads_per_worker(10**6) == 1 and threads_per_worker(1) == thread_count(None)


@pytest.mark.parametrize("argv, message", [
    (["predict", "x.png", "--top-k", "0"], "argument --top-k: expected a positive integer, found 0"),
    (["predict", "x.png", "--batch-size", "many"], "argument --batch-size: expected a positive integer, found 'many'"),
    (["distributed", "x.png", "--output", "out", "--local-cluster", "2", "--retries", "-1"],
     "argument --retries: expected a non-negative integer, found -1"),
])
def test_command_line_counts(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err
