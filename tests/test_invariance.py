"""The numba backend's answer for an image depends on that image only: a row of a batch equals the same image run
alone, and 1 thread equals 2, bit for bit (np.testing.assert_array_equal, no tolerance).

Every product splits its work by rows of the batch and never sums across threads, so neither the batch around an
image nor the number of threads can change the order of any floating-point sum; this holds the kernels to it. Both a
tiny model and LeViT-128S's real widths at 224 px (the shapes that take the BLAS and the packed micro-kernel paths).
"""

import numba
import numpy as np
import pytest

import levit_np
from levit_np.fast import blas

SHAPES = {
    "tiny": dict(hidden_sizes=[16, 24, 32], num_attention_heads=[2, 3, 4], depths=[1, 1, 1], key_dim=[4, 4, 4],
                 image_size=48),
    "128S": dict(hidden_sizes=[128, 256, 384], num_attention_heads=[4, 6, 8], depths=[2, 3, 4], key_dim=[16, 16, 16],
                 image_size=224),
}


@pytest.fixture(scope="module", params=list(SHAPES))
def model(request, checkpoint):
    _, path = checkpoint("LevitForImageClassificationWithTeacher", num_labels=10, **SHAPES[request.param])
    return levit_np.from_pretrained(path, backend="numba")


def outputs(model, x):
    out = model(x, output_hidden_states=True)
    return [out.logits, out.pooler_output, *out.hidden_states]


def test_a_row_of_a_batch_equals_the_image_alone(model):
    size = model.config.image_size
    x = np.random.default_rng(1).standard_normal((7, 3, size, size), dtype=np.float32)  # 7: ragged for 6-row tiles
    batch = outputs(model, x)
    for i in (0, 3, 6):
        alone = outputs(model, x[i:i + 1])
        for a, b in zip(alone, batch, strict=True):
            np.testing.assert_array_equal(a[0], b[i])


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 threads")
def test_one_thread_equals_two(model):
    size = model.config.image_size
    x = np.random.default_rng(2).standard_normal((5, 3, size, size), dtype=np.float32)
    threads = blas.get_num_threads()
    try:
        levit_np.set_num_threads(2)
        two = outputs(model, x)
        levit_np.set_num_threads(1)
        one = outputs(model, x)
    finally:
        levit_np.set_num_threads(threads)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)


def test_work_arrays_never_leak_between_calls(checkpoint):
    """The kernels keep their intermediates' buffers between calls (`kernels.work_array`): a call of another model,
    of other widths and batch sizes in between, changes neither the outputs an earlier call returned (they are
    never those buffers) nor what the next call computes (every element of a work array is written before it is
    read), bit for bit; and each thread has its own."""
    import threading

    models = {}
    for name in SHAPES:
        _, path = checkpoint("LevitForImageClassificationWithTeacher", num_labels=10, **SHAPES[name])
        models[name] = levit_np.from_pretrained(path, backend="numba")
    rng = np.random.default_rng(3)
    xs = {name: rng.standard_normal((b, 3, m.config.image_size, m.config.image_size), dtype=np.float32)
          for (name, m), b in zip(models.items(), (5, 2), strict=True)}
    first = {name: outputs(m, xs[name]) for name, m in models.items()}
    kept = {name: [a.copy() for a in out] for name, out in first.items()}
    for name, m in reversed(models.items()):  # the other model, then this one again
        again = outputs(m, xs[name][:1])
        for a, b in zip(again, first[name], strict=True):
            np.testing.assert_array_equal(a[0], b[0])
    for name in models:
        for a, b in zip(first[name], kept[name], strict=True):
            np.testing.assert_array_equal(a, b)  # the returned arrays were not overwritten

    from levit_np.fast import kernels

    seen = []
    thread = threading.Thread(target=lambda: seen.append(kernels.work_array("qkv", (4,), np.float32)))
    thread.start()
    thread.join()
    assert not np.shares_memory(seen[0], kernels.work_array("qkv", (4,), np.float32))
