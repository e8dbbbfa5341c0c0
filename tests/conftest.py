"""Fixtures: randomised HF checkpoints saved once per session, and a deterministic hypothesis profile."""

import os

import pytest
import transformers
from hypothesis import HealthCheck, settings

from helpers import RTOL, SMALL, WORST, build_hf, save_hf

# CI and local runs see the same examples: derandomize draws them from a hash of the test, not a clock.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
transformers.utils.logging.disable_progress_bar()  # save_pretrained's "Writing model shards" bar, per checkpoint
# backend="auto" models must not leave compiling processes behind the suite; tests/test_cold_start.py turns it on
os.environ.setdefault("LEVIT_NP_BACKGROUND_COMPILE", "0")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """checkpoint(cls_name, seed=0, num_labels=1000, **config) -> (hf_model, saved_dir); built once per args."""
    cache = {}

    def make(cls_name="LevitForImageClassificationWithTeacher", seed=0, num_labels=1000, **config_kw):
        key = (cls_name, seed, num_labels, tuple(sorted((k, str(v)) for k, v in config_kw.items())))
        if key not in cache:
            model = build_hf(cls_name, seed=seed, num_labels=num_labels, **config_kw)
            cache[key] = model, save_hf(model, tmp_path_factory.mktemp(cls_name))
        return cache[key]

    return make


@pytest.fixture(scope="session")
def small_hf(checkpoint):
    """(hf_model, checkpoint_dir): the tests' usual random checkpoint, a 64 px helpers.SMALL with 10 labels."""
    return checkpoint("LevitForImageClassificationWithTeacher", seed=3, num_labels=10, **SMALL)


@pytest.fixture(scope="session")
def small(small_hf):
    """The directory of `small_hf`'s checkpoint."""
    return small_hf[1]


def pytest_terminal_summary(terminalreporter):
    """The worst parity error against HF this run measured, per dtype (what docs/parity.md's tolerance is about)."""
    for dtype, (err, output, test) in sorted(WORST.items()):
        terminalreporter.write_line(f"worst relative error vs HF, {dtype}: {err:.2e} (bound {RTOL[dtype]:g}), "
                                    f"{output} in {test}")
