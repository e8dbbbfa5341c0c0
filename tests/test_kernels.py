"""The numba backend (levit_np/fast/) against its NumPy twins (levit_np/layers.py), kernel by kernel.

Random weights and BatchNorm statistics, so that BatchNorm folding is really exercised. The shapes are small enough
that this file also runs as plain Python under NUMBA_DISABLE_JIT=1, which CI does too, to cover the kernel bodies
line by line. Odd token grids (10 -> 5 -> 3 and 7 -> 4) exercise the edges of the strided queries.
"""

import subprocess
import sys

import numba
import numpy as np
import pytest

import levit_np
from levit_np import layers
from levit_np.checkpoint import load_checkpoint
from levit_np.config import Layer
from levit_np.fast import blas, kernels, llvm_ir, weights
from levit_np.fast.tiles import Tiles

JIT = not numba.config.DISABLE_JIT
DTYPES = [np.float32, np.float64]
# Worst relative error, max|ours - ref| / max(1, max|ref|), of a kernel against its NumPy twin: float32 differs by
# rounding only (BatchNorm folded into the weights, a polynomial exp, another summation order); float64 proves that
# the arithmetic is the same.
RTOL = {np.float32: 1e-5, np.float64: 1e-12}


def assert_close(ours, ref, dtype):
    assert ours.shape == ref.shape and ours.dtype == ref.dtype == dtype
    err = np.abs(ours.astype(np.float64) - ref).max() / max(1.0, np.abs(ref).max())
    assert err <= RTOL[dtype], f"relative error {err:.3g} > {RTOL[dtype]:g}"


class Rand:
    """Random tensors and layer weights, scaled so activations stay O(1); everything in `dtype`."""

    def __init__(self, dtype, seed=0):
        self.rng, self.dtype = np.random.default_rng(seed), dtype

    def __call__(self, *shape, std=1.0):
        return (self.rng.standard_normal(shape) * std).astype(self.dtype)

    def uniform(self, lo, hi, *shape):
        return self.rng.uniform(lo, hi, shape).astype(self.dtype)

    def batch_norm(self, c):
        return {"weight": self.uniform(0.5, 1.5, c), "bias": self(c, std=0.2), "running_mean": self(c, std=0.2),
                "running_var": self.uniform(0.5, 2.0, c)}

    def linear_bn(self, cin, cout):
        return {"linear": {"weight": self(cout, cin, std=cin ** -0.5)}, "batch_norm": self.batch_norm(cout)}

    def conv_bn(self, cin, cout, k=3):
        return {"convolution": {"weight": self(cout, cin, k, k, std=(cin * k * k) ** -0.5)},
                "batch_norm": self.batch_norm(cout)}

    def attention(self, C, H, kd, ar, R):
        return {"queries_keys_values": self.linear_bn(C, H * (2 * kd + ar * kd)),
                "projection": self.linear_bn(H * ar * kd, C), "attention_biases": self(H, R * R)}

    def attention_subsample(self, C, C2, H, kd, ar, R):
        return {"keys_values": self.linear_bn(C, H * (kd + ar * kd)), "queries": self.linear_bn(C, H * kd),
                "projection": self.linear_bn(H * ar * kd, C2), "attention_biases": self(H, R * R)}


# --- load time ----------------------------------------------------------------------------------------------------

def test_fold_batchnorm_conv_equals_conv_then_batchnorm():
    r = Rand(np.float64)
    p, x = r.conv_bn(5, 7), r(2, 5, 9, 9)
    w, b = weights.fold_batchnorm(p["convolution"]["weight"], p["batch_norm"])
    folded = layers.conv2d(x, w) + b[:, None, None]
    assert_close(folded, layers.conv_bn(x, **p), np.float64)


def test_fold_batchnorm_linear_equals_linear_then_batchnorm():
    r = Rand(np.float64)
    p, x = r.linear_bn(6, 11), r(2, 4, 6)
    w, b = weights.fold_batchnorm(p["linear"]["weight"], p["batch_norm"])
    assert_close(x @ w.T + b, layers.linear_bn(x, **p), np.float64)


def test_fold_batchnorm_before_equals_batchnorm_then_linear():
    r = Rand(np.float64)
    p = {"batch_norm": r.batch_norm(6), "linear": {"weight": r(3, 6), "bias": r(3)}}
    x = r(4, 6)
    w, b = weights.fold_batchnorm_before(p["linear"], p["batch_norm"])
    assert_close(x @ w.T + b, layers.classification_layer(x, **p), np.float64)


def test_prepare_leaves_the_checkpoint_unchanged(tiny):
    config, _, params = load_checkpoint(tiny)
    before = [a.copy() for a in leaves(params)]
    weights.prepare(params, config)
    assert all(np.array_equal(a, b) for a, b in zip(leaves(params), before, strict=True))


# --- building blocks ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_exp_nonpositive(dtype):
    x = -np.concatenate([np.linspace(0, 87, 3001), np.random.default_rng(0).exponential(3, 1000)]).astype(dtype)
    ours = np.array([kernels._exp_nonpositive(v) for v in x])
    ref = np.exp(x.astype(np.float64))
    rel = np.abs(ours - ref) / ref
    assert rel.max() <= 2.4e-7, rel.max()  # 2 ulp, on every instruction set (the kernels use math.exp for float64)
    assert kernels._exp_nonpositive(dtype(-200)) < 1e-37  # flushed, not overflowed


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transpose_a,transpose_b", [(False, False), (True, False), (False, True)])
def test_gemm_on_strided_views(dtype, transpose_a, transpose_b):
    r = Rand(dtype)
    M, K, N = 7, 5, 6
    big_a, big_b, big_c = r(20, 30), r(20, 30), np.full((20, 30), np.nan, dtype)
    a = big_a[2:2 + K, 3:3 + M] if transpose_a else big_a[2:2 + M, 3:3 + K]  # rows 30 apart
    b = big_b[1:1 + N, 4:4 + K] if transpose_b else big_b[1:1 + K, 4:4 + N]
    c = big_c[5:5 + M, 7:7 + N]
    blas.gemm(a, b, c, transpose_a, transpose_b)
    assert_close(c, (a.T if transpose_a else a) @ (b.T if transpose_b else b), dtype)
    assert np.isnan(big_c[:5]).all() and np.isnan(big_c[:, :7]).all()  # nothing written outside the view


@pytest.mark.parametrize("K,N", [(5, 3), (9, 64), (7, 130)])
def test_pack_panels(K, N):
    w = Rand(np.float32)(K, N)
    packed = weights.pack_panels(w)
    panels, P = packed.data, -(-N // weights.PANEL)
    assert packed.columns == N
    assert panels.shape == (P, K, weights.PANEL) and panels.flags.c_contiguous
    assert panels.ctypes.data % weights.PANEL_ALIGN == 0
    np.testing.assert_array_equal(np.concatenate(list(panels), axis=1)[:, :N], w)  # the columns, in order
    assert not panels[-1][:, N - (P - 1) * weights.PANEL:].any()  # the padding is zero


# float32 runs the packed micro-kernel: rows not a multiple of MICRO_ROWS, fewer than it (1), N short of a panel (3,
# 40), whole panels (128) and a ragged last one (70); K = 600 splits 300 rows into several chunks. float64: OpenBLAS
# row tiles (300 rows) and column tiles (16 rows).
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,K,N", [(1, 9, 3), (16, 9, 40), (13, 20, 128), (300, 9, 70), (300, 600, 70)])
def test_linear_kernel(dtype, M, K, N):
    r = Rand(dtype)
    p, x = r.linear_bn(K, N), r(M, K)
    prepared = weights.fold_linear(**p)
    assert_close(kernels.linear_bn(x, **prepared), layers.linear_bn(x, **p), dtype)
    assert_close(kernels.linear_bn(x, **prepared, activate=True), layers.hardswish(layers.linear_bn(x, **p)), dtype)


# --- layers -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
# 5 > STEM_CHUNK; 8 // 8 = 1 channel; C0 = 128: float32 convs 3 and 4 (Cout >= PANEL) run packed, on odd grids
@pytest.mark.parametrize("batch,C0,size", [(1, 8, 32), (5, 16, 48), (2, 128, 40)])
def test_patch_embeddings(dtype, batch, C0, size):
    r = Rand(dtype)
    chans = [3, C0 // 8, C0 // 4, C0 // 2, C0]
    p = {f"embedding_layer_{i + 1}": r.conv_bn(chans[i], chans[i + 1]) for i in range(4)}
    x = r(batch, 3, size, size)
    ours = kernels.patch_embeddings(x, **weights.fold_patch_embeddings(**p))
    assert_close(ours, layers.patch_embeddings(x, **p), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("R", [10, 7, 5, 3, 1])
@pytest.mark.parametrize("output_attentions", [False, True])
def test_attention(dtype, R, output_attentions):
    r = Rand(dtype)
    C, H, kd, ar = 12, 3, 4, 2
    p, x = r.attention(C, H, kd, ar, R), r(2, R * R, C)
    layer = Layer("attention", C, C, R, num_attention_heads=H, key_dim=kd, attention_ratio=ar)
    hyper = dict(layer.hyper(), output_attentions=output_attentions)
    ours, ours_probs = kernels.attention(x, **weights.prepare_layer(layer, p), **hyper)
    ref, ref_probs = layers.attention(x, **p, **hyper)
    assert_close(ours, ref, dtype)
    if output_attentions:
        assert_close(ours_probs, ref_probs, dtype)
    else:
        assert ours_probs is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("R", [10, 7, 5, 1])  # 10 -> 5, 7 -> 4, 5 -> 3, 1 -> 1
@pytest.mark.parametrize("output_attentions", [False, True])
def test_attention_subsample(dtype, R, output_attentions):
    r = Rand(dtype)
    C, C2, H, kd, ar, stride = 8, 12, 2, 4, 3, 2
    p, x = r.attention_subsample(C, C2, H, kd, ar, R), r(2, R * R, C)
    layer = Layer("attention_subsample", C, C2, R, num_attention_heads=H, key_dim=kd, attention_ratio=ar,
                  stride=stride)
    hyper = dict(layer.hyper(), output_attentions=output_attentions)
    ours, ours_probs = kernels.attention_subsample(x, **weights.prepare_layer(layer, p), **hyper)
    ref, ref_probs = layers.attention_subsample(x, **p, **hyper)
    Rq = (R - 1) // stride + 1
    assert ref.shape == (2, Rq * Rq, C2)
    assert_close(ours, ref, dtype)
    if output_attentions:
        assert_close(ours_probs, ref_probs, dtype)
    else:
        assert ours_probs is None


# non-square grids (any input size): rows != columns, strided queries along each axis, 1-wide grids
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,grid", [("attention", (3, 5)), ("attention", (6, 2)), ("attention", (1, 4)),
                                       ("attention_subsample", (10, 18)), ("attention_subsample", (5, 2)),
                                       ("attention_subsample", (1, 7))])
def test_attention_on_non_square_grids(dtype, kind, grid):
    r = Rand(dtype)
    C, C2, H, kd, ar = 8, 12, 2, 4, 2
    N = grid[0] * grid[1]
    p = r.attention(C, H, kd, ar, 1) if kind == "attention" else r.attention_subsample(C, C2, H, kd, ar, 1)
    p["attention_biases"] = r(H, N)  # one entry per offset on the grid
    layer = Layer(kind, C, C if kind == "attention" else C2, grid, num_attention_heads=H, key_dim=kd,
                  attention_ratio=ar, stride=1 if kind == "attention" else 2)
    hyper = dict(layer.hyper(), output_attentions=True)
    x = r(2, N, C)
    ours, ours_probs = getattr(kernels, kind)(x, **weights.prepare_layer(layer, p), **hyper)
    ref, ref_probs = getattr(layers, kind)(x, **p, **hyper)
    assert ref_probs.shape == (2, H, layer.resolution_out[0] * layer.resolution_out[1], N)
    assert_close(ours, ref, dtype)
    assert_close(ours_probs, ref_probs, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C0,height,width", [(16, 32, 48), (128, 40, 24)])  # C0 = 128: the packed convs
def test_patch_embeddings_on_non_square_images(dtype, C0, height, width):
    r = Rand(dtype)
    chans = [3, C0 // 8, C0 // 4, C0 // 2, C0]
    p = {f"embedding_layer_{i + 1}": r.conv_bn(chans[i], chans[i + 1]) for i in range(4)}
    x = r(2, 3, height, width)
    ours = kernels.patch_embeddings(x, **weights.fold_patch_embeddings(**p))
    rows, cols = -(-height // 16), -(-width // 16)  # four 3x3 / stride-2 / pad-1 convs: ceil(n / 16)
    assert ours.shape == (2, rows * cols, C0)  # 40 x 24 -> 3 x 2 tokens
    assert_close(ours, layers.patch_embeddings(x, **p), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_is_stable_for_huge_logits(dtype):
    r = Rand(dtype)
    C, H, kd, ar, R = 8, 2, 4, 2, 3
    p, x = r.attention(C, H, kd, ar, R), r(1, R * R, C)
    p["attention_biases"] = p["attention_biases"] * 1000  # logits in the thousands: exp overflows without the max
    layer = Layer("attention", C, C, R, num_attention_heads=H, key_dim=kd, attention_ratio=ar)
    hyper = dict(layer.hyper(), output_attentions=True)
    ours, probs = kernels.attention(x, **weights.prepare_layer(layer, p), **hyper)
    ref, ref_probs = layers.attention(x, **p, **hyper)
    assert np.isfinite(ours).all()
    assert_close(probs, ref_probs, dtype)
    assert_close(ours, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mlp(dtype):
    r = Rand(dtype)
    p, x = {"linear_up": r.linear_bn(8, 16), "linear_down": r.linear_bn(16, 8)}, r(3, 10, 8)
    layer = Layer("mlp", 8, 8, 1, hidden_dim=16)
    assert_close(kernels.mlp(x, **weights.prepare_layer(layer, p)), layers.mlp(x, **p), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_classification_layer(dtype):
    r = Rand(dtype)
    p, x = {"batch_norm": r.batch_norm(8), "linear": {"weight": r(5, 8), "bias": r(5)}}, r(3, 8)
    assert_close(kernels.classification_layer(x, **weights.fold_classifier(**p)),
                 layers.classification_layer(x, **p), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_writes_the_sum_into_the_branch(dtype):
    r = Rand(dtype)
    x, branch = r(2, 5, 3), r(2, 5, 3)
    ref, x_before = x + branch, x.copy()
    out = kernels.add(x, branch)
    assert out is branch and np.array_equal(x, x_before)
    assert_close(out, ref, dtype)


# --- the whole model ----------------------------------------------------------------------------------------------

# A tiny LeViT: 48 px -> a 3 -> 2 -> 1 token grid, every layer kind, an odd MLP width, two heads.
TINY = dict(hidden_sizes=[16, 24, 32], num_attention_heads=[2, 3, 2], depths=[1, 2, 1], key_dim=[4, 4, 8],
            mlp_ratio=[2, 3, 1], attention_ratio=[2, 1, 2], image_size=48,
            down_ops=[["Subsample", 4, 4, 4, 2, 2], ["Subsample", 4, 6, 4, 2, 2]])


@pytest.fixture
def tiny(checkpoint):
    """A saved random TINY checkpoint (LevitForImageClassificationWithTeacher, 5 labels)."""
    return checkpoint("LevitForImageClassificationWithTeacher", num_labels=5, **TINY)[1]


def leaves(tree):
    if isinstance(tree, dict):
        tree = list(tree.values())
    if isinstance(tree, list):
        for t in tree:
            yield from leaves(t)
    elif isinstance(tree, np.ndarray):
        yield tree


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_whole_model_matches_numpy_backend(tiny, dtype):
    path = tiny
    ref_model = levit_np.from_pretrained(path, backend="numpy", dtype=dtype)
    model = levit_np.from_pretrained(path, backend="numba", dtype=dtype)
    x = Rand(np.dtype(dtype).type)(3, 3, 48, 48)
    ours = model(x, output_hidden_states=True, output_attentions=True)
    ref = ref_model(x, output_hidden_states=True, output_attentions=True)
    for name in ("logits", "cls_logits", "distillation_logits", "last_hidden_state", "pooler_output"):
        assert_close(getattr(ours, name), getattr(ref, name), np.dtype(dtype).type)
    for a, b in zip(ours.hidden_states + ours.attentions, ref.hidden_states + ref.attentions, strict=True):
        assert_close(a, b, np.dtype(dtype).type)


@pytest.mark.skipif(not JIT, reason="compiles nothing under NUMBA_DISABLE_JIT")
def test_batch_sizes_share_one_compilation(tiny):
    model = levit_np.from_pretrained(tiny, backend="numba")
    found = [v for module in (kernels, blas, llvm_ir) for v in vars(module).values()]
    dispatchers = [d for v in found for d in ((v.dispatcher, v.launcher) if isinstance(v, Tiles) else (v,))
                   if isinstance(d, numba.core.registry.CPUDispatcher)]
    assert sum(isinstance(v, Tiles) for v in found) == 5  # the add, two dense, conv and attention kernels
    model(Rand(np.float32)(1, 3, 48, 48))
    before = {d: len(d.signatures) for d in dispatchers}
    for batch in (2, 7, 33):
        assert model(Rand(np.float32)(batch, 3, 48, 48)).logits.shape == (batch, 5)
    assert {d: len(d.signatures) for d in dispatchers} == before


def test_set_num_threads():
    n = blas.get_num_threads()
    try:
        levit_np.set_num_threads(1)
        assert blas.get_num_threads() == 1
    finally:
        levit_np.set_num_threads(n)
    for bad in (0, numba.config.NUMBA_NUM_THREADS + 1):
        with pytest.raises(ValueError, match="NUMBA_NUM_THREADS"):
            levit_np.set_num_threads(bad)


def test_import_levit_np_does_not_import_numba():
    code = "import sys, levit_np; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(JIT, reason="with the JIT on, see the test below")
def test_auto_runs_the_numpy_reference_with_the_jit_off(tiny):
    model = levit_np.from_pretrained(tiny)  # nothing compiles, nothing waits: the reference
    assert model.backend == "numpy" and model(Rand(np.float32)(1, 3, 48, 48)).logits.shape == (1, 5)


@pytest.mark.skipif(not JIT, reason="auto never picks numba with the JIT off")
def test_auto_is_the_default_and_picks_numba_once_compiled(tiny):
    levit_np.from_pretrained(tiny, backend="numba")(Rand(np.float32)(1, 3, 48, 48))  # compiles (or loads) them all
    assert levit_np.from_pretrained(tiny).backend == "numba"
