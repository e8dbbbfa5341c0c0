"""The fast path: Numba twins of the `layers.py` functions, with every BatchNorm folded into the weights at load.

`backend="numba"` runs this module. Each public function has the name of the `layers.py` function it replaces and is
called the same way by `model.levit_forward`; `prepare` turns the checkpoint's weights into the form they take, once:

- every Linear/Conv + BatchNorm pair becomes one weight and bias (`fold_batchnorm`), laid out for `x @ weight`;
  float32 weights are then packed into 64-column panels (`pack_panels`) for our own GEMM micro-kernel;
- each attention layer's (H, R*R) bias table is gathered once into the dense (H, Nq, Nk) bias it adds.

One thread pool does all the work. Every kernel is a `prange` loop over independent tiles (row chunks x weight
panels of a dense layer, output rows of a conv, (image, head) pairs of an attention), each finished while it is
still in cache: bias, Hardswish, im2col, softmax. The float32 dense layers and stem convs multiply with
`_micro_gemm`, a 6-row x 64-column AVX-512 micro-kernel written in LLVM IR that keeps its 24 accumulators in
registers (~97% of the FMA peak of one core, measured) and streams the weights in the order they were packed, once
at load: OpenBLAS, which cannot keep weights packed, repacks them on every call, which dominates at batch 1. The
attention GEMMs, the first conv and all float64 work call NumPy's own OpenBLAS `sgemm`/`dgemm` single-threaded from
inside the tiles. (Letting OpenBLAS run its own threads between Numba's parallel loops makes two pools of spinning
threads fight over the cores: on a 2-core machine that is ~100x slower, not 2x faster.)

Every kernel is a private `@njit(cache=True)` function `_..._kernel` behind a documented public function; they also
run, slowly, as plain Python under NUMBA_DISABLE_JIT=1 (with NumPy's matmul as the GEMMs and the micro-kernel).
Kernels are compiled per dtype (float32 / float64), never per shape: batch sizes 1..256 share one compilation. Inner
loops run over 1-D views (LLVM vectorises those); two LLVM one-liners (`_max`, `_pow2`) give the softmax a vectorised
max and exp. Shapes: B batch, N tokens, C channels, H heads, kd key dim, vd = attention_ratio * kd value dim, Nq/Nk
query/key tokens, M = B*N rows of a token-wise GEMM.
"""

from __future__ import annotations

import ctypes
import functools
import math
from pathlib import Path

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .config import BN_EPS

# Floating-point freedoms for the hot loops: reassociation (vectorised sums) and FMA contraction; not 'nnan'/'ninf'
# (only the `_max` intrinsic assumes there are no NaNs).
_FAST = {"reassoc", "contract", "nsz", "arcp"}
# Rows per GEMM tile: at most 256 (the tile stays in L2 for its epilogue); at least 64, below which it pays to split
# the columns instead: every tile's BLAS call repacks all of the weights it touches, which dominates for few rows.
# (The weights cannot stay packed between calls: OpenBLAS has no API for it.)
TILE_ROWS = (64, 256)
# Our own float32 GEMM for the dense layers and stem convs 2-4 (OpenBLAS keeps float64): the weights are packed once,
# at load, into PANEL-column panels, and a micro-kernel multiplies MICRO_ROWS rows of x by one panel with its 6 x 4
# AVX-512 accumulators in registers (24 of the 32 vector registers; 4 more hold the panel row, 1 the broadcast x).
PANEL = 64  # weight columns per panel: 4 vectors of 16 float32
MICRO_ROWS = 6  # x rows per micro-kernel call
PREFETCH = 8192  # bytes ahead in the panel that the micro-kernel asks the cache to fetch (32 panel rows)
PANEL_ALIGN = 64  # bytes: each panel row is one whole number of cache lines
X_CHUNK_BYTES = 1 << 18  # x rows per task: at most this many bytes of x (they stay in L2 while panels stream past)
CONV_TILE_PIXELS = 256  # output pixels per conv tile; its im2col, 256 x (9 Cin + 1), is 0.6 MB for 128S's last conv
STEM_CHUNK = 4  # images per pass through the conv stem: their activations (<= 15 MB for LeViT-384) stay in L3


# --- BLAS: NumPy's bundled OpenBLAS, called from inside the kernels -----------------------------------------------

def _find_openblas():
    """(library path, symbol prefix) of NumPy's bundled 64-bit-integer OpenBLAS, or None."""
    libs = Path(np.__file__).resolve().parent.parent / "numpy.libs"
    for lib in sorted(libs.glob("lib*openblas*.so*")):
        try:
            dll = ctypes.CDLL(str(lib))
        except OSError:
            continue
        for prefix in ("scipy_", ""):  # NumPy >= 2: scipy_cblas_sgemm64_; NumPy 1.2x: cblas_sgemm64_
            if all(hasattr(dll, f"{prefix}{name}64_") for name in ("cblas_sgemm", "cblas_dgemm",
                                                                   "openblas_set_num_threads",
                                                                   "openblas_get_num_threads")):
                return lib, prefix, dll
    return None


_OPENBLAS = _find_openblas()
if _OPENBLAS is not None:
    _blas_set_threads = getattr(_OPENBLAS[2], f"{_OPENBLAS[1]}openblas_set_num_threads64_")
    _blas_set_threads.argtypes, _blas_set_threads.restype = [ctypes.c_int], None
    _blas_get_threads = getattr(_OPENBLAS[2], f"{_OPENBLAS[1]}openblas_get_num_threads64_")
    _blas_get_threads.argtypes, _blas_get_threads.restype = [], ctypes.c_int


def _one_thread_pool(fn):
    """Run `fn` with NumPy's OpenBLAS on one thread, as the kernels call it from Numba's threads (see the top).

    Process-wide and left so: setting OpenBLAS back to n threads after each call wakes its n - 1 workers, which then
    spin for a while and steal the cores from Numba's threads. The numpy backend gets its BLAS threads back from
    `set_num_threads`.
    """
    if _OPENBLAS is None:
        return fn

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _blas_get_threads() != 1:
            _blas_set_threads(1)
        return fn(*args, **kwargs)
    return wrapper


if numba.config.DISABLE_JIT:  # plain Python: NumPy's matmul is the BLAS call
    def _gemm(a, b, c, transpose_a, transpose_b):
        # c (M, N) = a (M, K) @ b (K, N); a given as (K, M) if transpose_a, b as (N, K) if transpose_b
        c[...] = (a.T if transpose_a else a) @ (b.T if transpose_b else b)

elif _OPENBLAS is not None:
    import llvmlite.binding

    llvmlite.binding.load_library_permanently(str(_OPENBLAS[0]))  # lets Numba link (and cache) calls into it by name

    def _cblas(name, real):
        # cblas_?gemm64_(order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc); 64-bit ints, and
        # pointers passed as uintp (an array's .ctypes.data), which the x86-64/aarch64 C ABIs pass like a pointer
        i32, i64, ptr = types.int32, types.int64, types.uintp
        sig = types.void(i32, i32, i32, i64, i64, i64, real, ptr, i64, ptr, i64, real, ptr, i64)
        return types.ExternalFunction(f"{_OPENBLAS[1]}{name}64_", sig)

    _sgemm, _dgemm = _cblas("cblas_sgemm", types.float32), _cblas("cblas_dgemm", types.float64)

    @njit(cache=True)
    def _gemm(a, b, c, transpose_a, transpose_b):
        # c (M, N) = a (M, K) @ b (K, N), one BLAS call on this thread; a given as (K, M) if transpose_a, b as (N, K)
        # if transpose_b. Each operand may be a strided view (rows any distance apart, elements in a row adjacent).
        M, N = c.shape
        K = a.shape[0] if transpose_a else a.shape[1]
        lda = max(a.strides[0] // a.itemsize, a.shape[1])  # leading dimensions; max() only matters for 1-row views
        ldb = max(b.strides[0] // b.itemsize, b.shape[1])
        ldc = max(c.strides[0] // c.itemsize, N)
        ta = 112 if transpose_a else 111  # CblasTrans / CblasNoTrans
        tb = 112 if transpose_b else 111
        if a.itemsize == 4:  # 101 = CblasRowMajor
            _sgemm(101, ta, tb, M, N, K, np.float32(1), a.ctypes.data, lda, b.ctypes.data, ldb, np.float32(0),
                   c.ctypes.data, ldc)
        else:
            _dgemm(101, ta, tb, M, N, K, 1.0, a.ctypes.data, lda, b.ctypes.data, ldb, 0.0, c.ctypes.data, ldc)

else:  # a NumPy without its bundled OpenBLAS (MKL, Accelerate, ...): correct, but far slower loops
    @njit(cache=True, fastmath=_FAST)
    def _gemm(a, b, c, transpose_a, transpose_b):
        M, N = c.shape
        K = a.shape[0] if transpose_a else a.shape[1]
        for i in range(M):
            for j in range(N):
                c[i, j] = 0
            for k in range(K):
                aik = a[k, i] if transpose_a else a[i, k]
                for j in range(N):
                    c[i, j] += aik * (b[j, k] if transpose_b else b[k, j])


# --- our float32 GEMM micro-kernel: MICRO_ROWS rows of x times one packed weight panel ----------------------------

if numba.config.DISABLE_JIT:
    def _micro_gemm(x, panel, c):
        # c (MICRO_ROWS, PANEL) = x (MICRO_ROWS, K) @ panel (K, PANEL)
        c[...] = x @ panel

else:
    @intrinsic
    def _micro_gemm_ptr(typingctx, x, lda, panel, K, c, ldc):
        # The micro-kernel in LLVM IR, one loop over k (K >= 1): c[r, :] = sum_k x[r, k] * panel[k, :] for r < 6,
        # with the 6 x 4 vectors of c in registers. x, panel, c: float32 addresses; lda, ldc: row strides in
        # elements (panel rows are PANEL apart). Each k: 4 vector loads of the panel row, a prefetch PREFETCH bytes
        # ahead, and per row r one broadcast of x[r, k] and 4 fused multiply-adds.
        def codegen(context, builder, signature, args):
            x_addr, lda, panel_addr, K, c_addr, ldc = args
            f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
            vec = ir.VectorType(f32, 16)
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3), "llvm.fma.v16f32")
            prefetch = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer(), i32, i32, i32]),
                "llvm.prefetch.p0i8")
            x0, p0, c0 = (builder.inttoptr(a, f32.as_pointer()) for a in (x_addr, panel_addr, c_addr))
            lanes = PANEL // 16

            def at(base, index):  # &base[index], index an i64 value
                return builder.gep(base, [index])

            def vector_at(base, index):
                return builder.bitcast(at(base, index), vec.as_pointer())

            entry = builder.block
            loop, done = builder.append_basic_block("micro.k"), builder.append_basic_block("micro.done")
            builder.branch(loop)
            builder.position_at_end(loop)
            k = builder.phi(i64)
            k.add_incoming(ir.Constant(i64, 0), entry)
            acc = []
            for _ in range(MICRO_ROWS * lanes):
                acc.append(builder.phi(vec))
                acc[-1].add_incoming(ir.Constant(vec, [0.0] * 16), entry)
            row = builder.mul(k, ir.Constant(i64, PANEL))  # offset of panel row k
            ahead = builder.add(row, ir.Constant(i64, PREFETCH // 4))
            b = []
            for v in range(lanes):
                builder.call(prefetch, [builder.bitcast(at(p0, builder.add(ahead, ir.Constant(i64, 16 * v))),
                                                        ir.IntType(8).as_pointer()),
                                        ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
                b.append(builder.load(vector_at(p0, builder.add(row, ir.Constant(i64, 16 * v))), align=4))
            new, undef = [], ir.Constant(vec, ir.Undefined)
            for r in range(MICRO_ROWS):
                a = builder.load(at(x0, builder.add(builder.mul(ir.Constant(i64, r), lda), k)), align=4)  # x[r, k]
                splat = builder.shuffle_vector(builder.insert_element(undef, a, ir.Constant(i32, 0)), undef,
                                               ir.Constant(ir.VectorType(i32, 16), [0] * 16))  # 16 x x[r, k]
                new.extend(builder.call(fma, [splat, b[v], acc[r * lanes + v]]) for v in range(lanes))
            k_next = builder.add(k, ir.Constant(i64, 1))
            k.add_incoming(k_next, loop)
            for phi, value in zip(acc, new, strict=True):
                phi.add_incoming(value, loop)
            builder.cbranch(builder.icmp_signed("<", k_next, K), loop, done)
            builder.position_at_end(done)
            for r in range(MICRO_ROWS):
                for v in range(lanes):
                    index = builder.add(builder.mul(ir.Constant(i64, r), ldc), ir.Constant(i64, 16 * v))
                    builder.store(new[r * lanes + v], vector_at(c0, index), align=4)
            return context.get_dummy_value()

        return types.void(types.uintp, types.intp, types.uintp, types.intp, types.uintp, types.intp), codegen

    @njit(cache=True, inline="always")
    def _micro_gemm(x, panel, c):
        # c (MICRO_ROWS, PANEL) = x (MICRO_ROWS, K) @ panel (K, PANEL), float32; x and c may be strided row views
        _micro_gemm_ptr(x.ctypes.data, x.strides[0] // 4, panel.ctypes.data, panel.shape[0], c.ctypes.data,
                        c.strides[0] // 4)


# --- threads ------------------------------------------------------------------------------------------------------

def set_num_threads(n: int) -> None:
    """Use `n` cores: Numba's thread pool, which runs every kernel of this module (the numba backend), and NumPy's
    BLAS threads, which run the numpy backend's matmuls until the next numba-backend call sets them back to one.
    `n` may not exceed NUMBA_NUM_THREADS (default: all cores), which Numba fixes when it starts."""
    n = int(n)
    if not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"num_threads must be in 1..{numba.config.NUMBA_NUM_THREADS} (NUMBA_NUM_THREADS), found {n}")
    numba.set_num_threads(n)
    if _OPENBLAS is not None:
        _blas_set_threads(n)


def get_num_threads() -> int:
    return numba.get_num_threads()


# --- load time: BatchNorm folding and weight layout ---------------------------------------------------------------

def batchnorm_affine(batch_norm):
    """Eval BatchNorm as the per-channel affine map it is: bn(x) = s x + t, s = gamma / sqrt(var + eps),
    t = beta - s mu. Returns (s, t), each (C,)."""
    scale = batch_norm["weight"] / np.sqrt(batch_norm["running_var"] + BN_EPS)  # (C,)
    return scale, batch_norm["bias"] - batch_norm["running_mean"] * scale  # (C,), (C,)


def fold_batchnorm(weight, batch_norm):
    """Conv/Linear (no bias) followed by eval BatchNorm -> one (weight, bias): bn(W x) = (s W) x + t.

    weight (Cout, ...) -> (Cout, ...) scaled per output channel; bias (Cout,).
    """
    scale, bias = batchnorm_affine(batch_norm)  # (Cout,), (Cout,)
    return weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1)), bias


def fold_batchnorm_before(linear, batch_norm):
    """Eval BatchNorm followed by Linear(bias) -> one (weight, bias): W bn(x) + c = (W s) x + (W t + c).

    linear {"weight" (L, C), "bias" (L,)} -> weight (L, C), bias (L,). The classifier heads.
    """
    scale, shift = batchnorm_affine(batch_norm)  # (C,), (C,)
    return linear["weight"] * scale, linear["bias"] + linear["weight"] @ shift


def pack_panels(weight):
    """A float32 weight (K, N), for x @ weight -> (ceil(N / PANEL), K, PANEL): PANEL-column panels, each one
    contiguous, the last zero-padded, starting on a cache line. The layout the float32 micro-kernel streams."""
    K, N = weight.shape
    P = -(-N // PANEL)
    padded = np.zeros((K, P * PANEL), weight.dtype)  # (K, P*PANEL)
    padded[:, :N] = weight
    buffer = np.empty(P * K * PANEL + PANEL_ALIGN // weight.itemsize, weight.dtype)
    start = (-buffer.ctypes.data % PANEL_ALIGN) // weight.itemsize  # first element on a cache-line boundary
    panels = buffer[start:start + P * K * PANEL].reshape(P, K, PANEL)
    panels[...] = padded.reshape(K, P, PANEL).transpose(1, 0, 2)  # (K, P, PANEL) -> (P, K, PANEL)
    return panels


def _dense(weight, bias):
    # weight (K, N) for x @ weight, bias (N,) -> the form _linear takes: float32 weights packed into panels (our
    # micro-kernel), float64 ones left (K, N) (OpenBLAS)
    weight = pack_panels(weight) if weight.dtype == np.float32 else np.ascontiguousarray(weight)
    return {"weight": weight, "bias": np.ascontiguousarray(bias)}


def _fold_linear(p):
    # {"linear": {weight (Cout, Cin)}, "batch_norm"} -> {"weight": (Cin, Cout) for x @ weight, packed, "bias": (Cout,)}
    w, b = fold_batchnorm(p["linear"]["weight"], p["batch_norm"])
    return _dense(w.T, b)


def _fold_conv(p, pack=True):
    # {"convolution": {weight (Cout, Cin, k, k)}, "batch_norm"} -> {"weight": (k*k*Cin + 1, Cout), "kernel_size",
    # "out_channels"}: rows in im2col order (ky, kx, cin), then the bias as one more row (the im2col tile has a
    # column of ones). Packed into panels if `pack`, the weight is float32 and Cout fills at least one panel.
    w, b = fold_batchnorm(p["convolution"]["weight"], p["batch_norm"])
    Cout, Cin, k, _ = w.shape
    rows = np.concatenate([w.transpose(2, 3, 1, 0).reshape(k * k * Cin, Cout), b[None]])  # (k*k*Cin + 1, Cout)
    pack = pack and rows.dtype == np.float32 and Cout >= PANEL
    return {"weight": pack_panels(rows) if pack else np.ascontiguousarray(rows), "kernel_size": k,
            "out_channels": Cout}


def fold_patch_embeddings(p):
    """The four stem convs' checkpoint weights -> their prepared form. All but the first (3 input channels; its
    transposed im2col takes the (k*k*Cin + 1, Cout) weight to OpenBLAS) are packed into panels where they can be."""
    return {name: _fold_conv(conv, pack=name != "embedding_layer_1") for name, conv in p.items()}


def prepare(params, config):
    """Checkpoint weights (nested as `layers.py` takes them) -> this module's folded, pre-laid-out weights. Once."""
    stages = [{"layers": [prepare_layer(layer.kind, p) for p, layer in zip(stage["layers"], layers, strict=True)]}
              for stage, layers in zip(params["encoder"]["stages"], config.plan, strict=True)]
    out = {"patch_embeddings": fold_patch_embeddings(params["patch_embeddings"]),
           "encoder": {"stages": stages}}
    for head in ("classifier", "classifier_distill"):
        if head in params:
            out[head] = _fold_classifier(params[head])
    return out


def prepare_layer(kind, p):
    """One encoder layer's checkpoint weights (as levit_forward passes them to layers.py) -> its prepared form."""
    if kind == "mlp":
        m = p["module"]
        return {"module": {"linear_up": _fold_linear(m["linear_up"]), "linear_down": _fold_linear(m["linear_down"])}}
    m = p["module"] if kind == "attention" else p
    names = ("queries_keys_values", "projection") if kind == "attention" else ("keys_values", "queries", "projection")
    folded = {name: _fold_linear(m[name]) for name in names}
    folded["attention_bias"] = np.ascontiguousarray(m["attention_biases"][:, m["attention_bias_idxs"]])  # (H, Nq, Nk)
    return {"module": folded} if kind == "attention" else folded


def _fold_classifier(p):
    # {"batch_norm", "linear": {weight (L, C), bias (L,)}} -> {"weight": (C, L) for x @ weight, "bias": (L,)}
    w, b = fold_batchnorm_before(p["linear"], p["batch_norm"])
    return _dense(w.T, b)


# --- element-wise helpers ----------------------------------------------------------------------------------------

if numba.config.DISABLE_JIT:  # plain-Python stand-ins for the two LLVM one-liners below
    def _max(a, b):
        return max(a, b)

    def _pow2(n):
        return np.float32(2.0 ** int(n))

else:
    @intrinsic
    def _max(typingctx, a, b):
        # max(a, b) as a fast-math compare + select, which LLVM vectorises as a reduction (Numba's max() it does not)
        def codegen(context, builder, signature, args):
            greater = builder.fcmp_ordered(">", args[0], args[1], flags=("fast",))
            return builder.select(greater, args[0], args[1], flags=("fast",))
        return a(a, a), codegen

    @intrinsic
    def _pow2(typingctx, n):
        # 2^n as a float32, for an int32 n in -126..127: its bit pattern is just the biased exponent (n + 127) << 23
        def codegen(context, builder, signature, args):
            i32 = ir.IntType(32)
            bits = builder.shl(builder.add(args[0], ir.Constant(i32, 127)), ir.Constant(i32, 23))
            return builder.bitcast(bits, ir.FloatType())
        return types.float32(types.int32), codegen


@njit(cache=True, inline="always")
def _hardswish(v):
    # twin of layers.hardswish, on a scalar: x * relu6(x + 3) / 6 in x's own precision (a bare 3 would promote
    # float32 to float64)
    t = type(v)
    return v * min(max(v + t(3), t(0)), t(6)) / t(6)


@njit(cache=True, inline="always")
def _exp_nonpositive(x):
    # the exp of layers.softmax: e^x for float32 x <= 0 without a libm call, so that a loop over it vectorises
    # (~1 ulp; the float64 kernels use math.exp). Cody-Waite: x = n ln2 + r, |r| <= ln2/2; e^r by Cephes' expf
    # polynomial; 2^n from its bits. Below -87.3, where e^x < 2^-126 would be a denormal, it is flushed to ~1e-38.
    t = type(x)
    x = _max(x, t(-87.3))
    n = np.int32(x * t(1.4426950408889634) - t(0.5))  # round(x / ln2), x <= 0 (the cast truncates toward 0)
    fn = t(n)
    r = x - fn * t(0.693359375) - fn * t(-2.12194440e-4)  # x - n ln2, ln2 split in two for exactness
    p = t(1.9875691500e-4) * r + t(1.3981999507e-3)
    p = p * r + t(8.3334519073e-3)
    p = p * r + t(4.1665795894e-2)
    p = p * r + t(1.6666665459e-1)
    p = p * r + t(5.0000001201e-1)
    p = p * r * r + r + t(1)  # e^r
    return p * _pow2(n)  # e^r * 2^n


@njit(cache=True, fastmath=_FAST, inline="always")
def _bias_act(y, bias, activate):
    # one row (n,) of an output tile, in place: y += bias (n,) unless bias is None, then Hardswish if activate.
    # 1-D views, so that LLVM vectorises the loop (it does not for the same loop written with 2-D indexing)
    if bias is None:
        if activate:
            for c in range(y.size):
                y[c] = _hardswish(y[c])
    elif activate:
        for c in range(y.size):
            y[c] = _hardswish(y[c] + bias[c])
    else:
        for c in range(y.size):
            y[c] += bias[c]


# --- dense layers: tiled GEMM + epilogue --------------------------------------------------------------------------

@njit(cache=True)
def _tiles(M, N, threads):
    # split an (M, N) GEMM output into (row tiles, column tiles): rows in TILE_ROWS, at least one tile per thread
    lo, hi = TILE_ROWS
    mt = min(-(-M // lo), max(threads, -(-M // hi)))
    if mt >= threads:
        return -(-mt // threads) * threads, 1  # a multiple of the thread count, for balance
    # few rows (small batch, late stages): split the columns too, into 64-wide tiles, which OpenBLAS multiplies up to
    # twice as fast as wider ones when the rows are few
    return mt, max(-(-threads // mt), -(-N // 64))


@njit(cache=True, parallel=True, fastmath=_FAST)
def _linear_kernel(x, weight, bias, activate, out, threads):
    # out (M, N) = act(x (M, K) @ weight (K, N) + bias (N,)); tile by tile: one BLAS call, then bias/act in cache
    M, N = out.shape
    mt, nt = _tiles(M, N, threads)
    rows = -(-M // mt)  # ceil(M / mt)
    cols = -(-N // (16 * nt)) * 16  # ceil(N / nt), rounded up to whole AVX-512 vectors
    for t in prange(mt * nt):
        r0, c0 = (t // nt) * rows, (t % nt) * cols
        r1, c1 = min(M, r0 + rows), min(N, c0 + cols)
        if r0 >= r1 or c0 >= c1:
            continue
        _gemm(x[r0:r1], weight[:, c0:c1], out[r0:r1, c0:c1], False, False)  # (r, K) @ (K, c) -> (r, c)
        for r in range(r0, r1):
            _bias_act(out[r, c0:c1], bias[c0:c1], activate)  # (c,) while the tile is in cache


@njit(cache=True, fastmath=_FAST)
def _panel_product(x, panel, out, bias, activate):
    # out (m, cols) = act(x (m, K) @ panel (K, PANEL)[:, :cols] [+ bias (cols,)]), float32, cols <= PANEL: micro-tile
    # by micro-tile, each written straight into `out` and finished while in cache; a ragged edge (the last
    # < MICRO_ROWS rows, or cols < PANEL) goes through a small buffer instead
    m, cols = out.shape
    for r0 in range(0, m, MICRO_ROWS):
        rows = min(MICRO_ROWS, m - r0)
        if rows == MICRO_ROWS and cols == PANEL:
            _micro_gemm(x[r0:r0 + MICRO_ROWS], panel, out[r0:r0 + MICRO_ROWS])  # (6, PANEL)
        else:
            edge = np.zeros((MICRO_ROWS, x.shape[1]), x.dtype)  # (6, K), rows past the end zero
            edge[:rows] = x[r0:r0 + rows]
            tile = np.empty((MICRO_ROWS, PANEL), x.dtype)  # (6, PANEL)
            _micro_gemm(edge, panel, tile)
            out[r0:r0 + rows] = tile[:rows, :cols]
        for r in range(r0, r0 + rows):
            _bias_act(out[r], bias, activate)  # (cols,) while the micro-tile is in cache


@njit(cache=True, parallel=True, fastmath=_FAST)
def _linear_packed_kernel(x, panels, bias, activate, out, threads):
    # out (M, N) = act(x (M, K) @ weight + bias (N,)), float32, the weight packed as panels (P, K, PANEL).
    # One task = a chunk of x rows (<= X_CHUNK_BYTES, kept in L2) times one panel; the tasks of one chunk are
    # adjacent, so that each thread keeps its x rows in cache while the panels stream past.
    M, N = out.shape
    P, K, _ = panels.shape
    blocks = -(-M // MICRO_ROWS)  # micro-tiles down the rows
    chunks = -(-blocks * MICRO_ROWS * K * x.itemsize // X_CHUNK_BYTES)  # chunks of x that fit in L2 ...
    chunks = max(chunks, -(-2 * threads // P))  # ... and at least 2 tasks per thread
    while (chunks * P) % threads and chunks < blocks:  # whole rounds of tasks: static scheduling, balanced
        chunks += 1
    chunks = min(chunks, blocks)
    rows = -(-blocks // chunks) * MICRO_ROWS  # equal chunks (the last one may be shorter, or empty)
    for t in prange(chunks * P):
        r0, c0 = (t // P) * rows, (t % P) * PANEL
        r1, c1 = min(M, r0 + rows), min(N, c0 + PANEL)
        if r0 >= r1:
            continue
        _panel_product(x[r0:r1], panels[t % P], out[r0:r1, c0:c1], bias[c0:c1], activate)


def _linear(x, p, activate=False):
    # twin of layers.linear_bn [+ layers.hardswish], BatchNorm folded in p: (..., Cin) -> (..., Cout)
    x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))  # (M, Cin), rows adjacent
    weight, bias = p["weight"], p["bias"]
    out = np.empty((x2.shape[0], bias.shape[0]), x.dtype)  # (M, Cout)
    if weight.ndim == 3:  # float32, packed panels (P, Cin, PANEL): our micro-kernel
        _linear_packed_kernel(x2, weight, bias, activate, out, numba.get_num_threads())
    else:  # float64 (Cin, Cout): OpenBLAS
        _linear_kernel(x2, weight, bias, activate, out, numba.get_num_threads())
    return out.reshape(*x.shape[:-1], out.shape[-1])


@njit(cache=True, parallel=True, fastmath=_FAST)
def _add_kernel(x, out):
    # out (M, C) += x (M, C), rows in parallel
    for r in prange(x.shape[0]):
        xr, o = x[r], out[r]  # (C,), (C,)
        for c in range(o.size):
            o[c] += xr[c]


def add(x, out):
    """The residual connection `x + out` of levit_forward, written into `out` (a branch's fresh output) by all
    threads instead of a new array by one: (B, N, C)."""
    _add_kernel(x.reshape(-1, x.shape[-1]), out.reshape(-1, out.shape[-1]))
    return out


@_one_thread_pool
def mlp(x, linear_up, linear_down):
    """Twin of layers.mlp (the residual branch): (B, N, C) -> (B, N, C*r) -> Hardswish -> (B, N, C)."""
    return _linear(_linear(x, linear_up, activate=True), linear_down)


@_one_thread_pool
def classification_layer(x, weight, bias):
    """Twin of layers.classification_layer with its BatchNorm folded in: (B, C) -> (B, num_labels)."""
    return _linear(x, {"weight": weight, "bias": bias})


# --- conv stem: im2col tile + GEMM + bias/Hardswish ---------------------------------------------------------------

@njit(cache=True, fastmath=_FAST, inline="always")
def _im2col(x, b, oy0, oy1, kernel_size, stride, padding, cols):
    # cols ((oy1 - oy0) * Wo, k*k*Cin + 1), zeroed = image b's receptive fields of output rows oy0..oy1, in
    # (ky, kx, cin) order, then a 1 for the bias row of the weight; x (B, H, W, Cin) channels-last
    _, H, W, Cin = x.shape
    k = kernel_size
    KK = cols.shape[1]  # k*k*Cin + 1
    Wo = cols.shape[0] // (oy1 - oy0)
    for oy in range(oy0, oy1):
        dst = cols[(oy - oy0) * Wo:(oy - oy0 + 1) * Wo].reshape(Wo * KK)  # this output row's im2col rows, flat
        for ox in range(Wo):
            dst[np.uint64(ox * KK + KK - 1)] = 1  # times the bias row of the weight
        for ky in range(k):
            iy = oy * stride + ky - padding
            if iy < 0 or iy >= H:
                continue
            src = x[b, iy].reshape(W * Cin)  # one input row, channels-last, flat
            for kx in range(k):
                lo = min(Wo, max(0, -(-(padding - kx) // stride)))  # first ox whose input column ix >= 0
                hi = max(lo, min(Wo, (W - 1 + padding - kx) // stride + 1))  # past the last with ix < W
                for ox in range(lo, hi):  # copy pixel (iy, ix)'s Cin channels; unsigned: no wraparound checks
                    s0 = np.uint64((ox * stride + kx - padding) * Cin)
                    d0 = np.uint64(ox * KK + (ky * k + kx) * Cin)
                    for c in range(Cin):
                        dst[d0 + np.uint64(c)] = src[s0 + np.uint64(c)]


@njit(cache=True)
def _conv_tiles(B, Ho, Wo, threads):
    # (output rows per tile, tiles per image): about CONV_TILE_PIXELS pixels, and enough tiles for every thread
    rows = max(1, min(CONV_TILE_PIXELS // Wo, -(-B * Ho // threads)))
    return rows, -(-Ho // rows)


@njit(cache=True, parallel=True, fastmath=_FAST)
def _conv_kernel(x, weight, kernel_size, stride, padding, activate, out, threads):
    # twin of layers.conv_bn [+ layers.hardswish]: out (B, Ho, Wo, Cout) = act(conv(x) + bias), x (B, H, W, Cin)
    # channels-last, weight (k*k*Cin + 1, Cout) in (ky, kx, cin) order with the bias as its last row (OpenBLAS;
    # float64). One tile = a block of output rows of one image: its im2col, one GEMM, then Hardswish over the
    # contiguous output tile.
    B = x.shape[0]
    _, Ho, Wo, Cout = out.shape
    out2 = out.reshape(B * Ho * Wo, Cout)  # (pixels, Cout)
    flat = out.reshape(B * Ho * Wo * Cout)  # the same memory, 1-D, for the element-wise epilogue
    rows, blocks = _conv_tiles(B, Ho, Wo, threads)
    for t in prange(B * blocks):
        b, oy0 = t // blocks, (t % blocks) * rows
        oy1 = min(Ho, oy0 + rows)
        cols = np.zeros(((oy1 - oy0) * Wo, weight.shape[0]), x.dtype)  # (tile pixels, k*k*Cin + 1)
        _im2col(x, b, oy0, oy1, kernel_size, stride, padding, cols)
        p0, p1 = (b * Ho + oy0) * Wo, (b * Ho + oy1) * Wo
        _gemm(cols, weight, out2[p0:p1], False, False)  # (pixels, k*k*Cin+1) @ (k*k*Cin+1, Cout) -> (pixels, Cout)
        if activate:
            tile = flat[p0 * Cout:p1 * Cout]  # (pixels * Cout,)
            for i in range(tile.size):
                tile[i] = _hardswish(tile[i])


@njit(cache=True, parallel=True, fastmath=_FAST)
def _conv_packed_kernel(x, panels, kernel_size, stride, padding, activate, out, threads):
    # _conv_kernel for float32, the weight packed as panels (P, k*k*Cin + 1, PANEL): each im2col tile times every
    # panel, by the micro-kernel, Hardswish applied micro-tile by micro-tile
    B = x.shape[0]
    _, Ho, Wo, Cout = out.shape
    out2 = out.reshape(B * Ho * Wo, Cout)  # (pixels, Cout)
    rows, blocks = _conv_tiles(B, Ho, Wo, threads)
    for t in prange(B * blocks):
        b, oy0 = t // blocks, (t % blocks) * rows
        oy1 = min(Ho, oy0 + rows)
        cols = np.zeros(((oy1 - oy0) * Wo, panels.shape[1]), x.dtype)  # (tile pixels, k*k*Cin + 1)
        _im2col(x, b, oy0, oy1, kernel_size, stride, padding, cols)
        p0, p1 = (b * Ho + oy0) * Wo, (b * Ho + oy1) * Wo
        for p in range(panels.shape[0]):  # (pixels, k*k*Cin+1) @ (k*k*Cin+1, PANEL) -> (pixels, PANEL)
            c0 = p * PANEL
            _panel_product(cols, panels[p], out2[p0:p1, c0:min(Cout, c0 + PANEL)], None, activate)


@njit(cache=True, parallel=True, fastmath=_FAST)
def _conv_first_kernel(x, weight, kernel_size, stride, padding, out, threads):
    # twin of layers.conv_bn + layers.hardswish for the first conv, on the channels-first pixels:
    # out (B, Ho, Wo, Cout) = Hardswish(conv(x) + bias), x (B, Cin, H, W). As _conv_kernel, but the im2col tile
    # is built transposed, (k*k*Cin + 1, pixels), so that it copies (strided) input rows, not 27-long pixel rows.
    B, Cin, H, W = x.shape
    _, Ho, Wo, Cout = out.shape
    k = kernel_size
    out2 = out.reshape(B * Ho * Wo, Cout)  # (pixels, Cout)
    flat = out.reshape(B * Ho * Wo * Cout)  # the same memory, 1-D
    rows, blocks = _conv_tiles(B, Ho, Wo, threads)
    for t in prange(B * blocks):
        b, oy0 = t // blocks, (t % blocks) * rows
        oy1 = min(Ho, oy0 + rows)
        P = (oy1 - oy0) * Wo
        cols = np.zeros((k * k * Cin + 1, P), x.dtype)  # (k*k*Cin + 1, tile pixels); zero = padding
        for ky in range(k):
            for kx in range(k):
                lo = min(Wo, max(0, -(-(padding - kx) // stride)))  # first ox whose input column ix >= 0
                hi = max(lo, min(Wo, (W - 1 + padding - kx) // stride + 1))  # past the last with ix < W
                for ci in range(Cin):
                    tap = cols[(ky * k + kx) * Cin + ci]  # (P,)
                    for oy in range(oy0, oy1):
                        iy = oy * stride + ky - padding
                        if 0 <= iy < H:
                            src = x[b, ci, iy, lo * stride + kx - padding:]  # input row from ox = lo's column
                            dst = tap[(oy - oy0) * Wo + lo:(oy - oy0) * Wo + hi]  # (hi - lo,)
                            for j in range(dst.size):  # a strided copy; unsigned index: no negative-index check
                                dst[j] = src[np.uint64(j) * np.uint64(stride)]
        ones = cols[k * k * Cin]  # (P,) times the bias row of `weight`
        for p in range(P):
            ones[p] = 1
        p0, p1 = (b * Ho + oy0) * Wo, (b * Ho + oy1) * Wo
        _gemm(cols, weight, out2[p0:p1], True, False)  # (k*k*Cin+1, pixels)ᵀ @ (k*k*Cin+1, Cout) -> (pixels, Cout)
        tile = flat[p0 * Cout:p1 * Cout]  # (pixels * Cout,)
        for i in range(tile.size):
            tile[i] = _hardswish(tile[i])


@_one_thread_pool
def patch_embeddings(pixel_values, embedding_layer_1, embedding_layer_2, embedding_layer_3, embedding_layer_4, *,
                     stride=2, padding=1):
    """Twin of layers.patch_embeddings: (B, 3, S, S) -> (B, (S/16)^2, C0); 4 x (folded conv 3x3/2), Hardswish x3.

    Channels-last after the first conv, so the last conv's (B, R, R, C0) output already is the token sequence.
    STEM_CHUNK images at a time, so that the large early activations stay in cache (and, being small, are
    recycled by malloc rather than page-faulted in afresh on every call).
    """
    B = pixel_values.shape[0]
    convs = (embedding_layer_1, embedding_layer_2, embedding_layer_3, embedding_layer_4)
    tokens = None  # (B, R, R, C0), allocated once the grid side R is known
    for b0 in range(0, B, STEM_CHUNK):
        x = pixel_values[b0:b0 + STEM_CHUNK]  # (b, 3, S, S), channels-first
        for i, conv in enumerate(convs):  # (b, 3, S, S) -> (b, S/2, S/2, C0/8) -> ... -> (b, S/16, S/16, C0)
            k, w, Cout = conv["kernel_size"], conv["weight"], conv["out_channels"]  # w (k*k*Cin + 1, Cout) or panels
            H, W = x.shape[2:] if i == 0 else x.shape[1:3]
            Ho, Wo = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
            if i < 3:
                out = np.empty((x.shape[0], Ho, Wo, Cout), x.dtype)  # (b, Ho, Wo, Cout) channels-last
            else:
                tokens = np.empty((B, Ho, Wo, Cout), x.dtype) if tokens is None else tokens
                out = tokens[b0:b0 + x.shape[0]]  # the last conv writes straight into the token array
            threads = numba.get_num_threads()
            if i == 0:
                _conv_first_kernel(x, w, k, stride, padding, out, threads)
            elif w.ndim == 3:  # float32 panels (P, k*k*Cin + 1, PANEL): our micro-kernel
                _conv_packed_kernel(x, w, k, stride, padding, i < 3, out, threads)
            else:  # (k*k*Cin + 1, Cout): OpenBLAS
                _conv_kernel(x, w, k, stride, padding, i < 3, out, threads)
            x = out
    _, R, _, C = tokens.shape
    return tokens.reshape(B, R * R, C)  # token t = row*R + col


# --- attention: per (image, head) tile: q kᵀ (BLAS), softmax, · v (BLAS), Hardswish ------------------------------

@njit(cache=True, fastmath=_FAST, inline="always")
def _attend(q, k, v, bias, scale, scores, out, normalise):
    # the core of layers.attention for one (image, head): q (Nq, kd), k (Nk, kd), v (Nk, vd), bias (Nq, Nk) ->
    # scores (Nq, Nk) = exp of the softmax logits, normalised if `normalise`; out (Nq, vd) = Hardswish(softmax @ v)
    Nq, Nk = scores.shape
    _gemm(q, k, scores, False, True)  # (Nq, kd) @ (Nk, kd)ᵀ -> (Nq, Nk)
    inv = np.empty(Nq, scores.dtype)  # (Nq,) 1 / row sum, applied after · v unless `normalise`
    for i in range(Nq):
        row, brow = scores[i], bias[i]  # (Nk,), (Nk,)
        m = row[0] * scale + brow[0]
        for j in range(Nk):
            s = row[j] * scale + brow[j]  # logits: q·k * kd^-0.5 + bias
            row[j] = s
            m = _max(m, s)
        total = m - m  # 0 in the scores' dtype
        for j in range(Nk):  # stable: the largest logit becomes exp(0) = 1
            e = _exp_nonpositive(row[j] - m) if scores.itemsize == 4 else math.exp(row[j] - m)
            row[j] = e
            total += e
        inv[i] = 1 / total
        if normalise:
            for j in range(Nk):
                row[j] *= inv[i]
            inv[i] = 1
    _gemm(scores, v, out, False, False)  # (Nq, Nk) @ (Nk, vd) -> (Nq, vd)
    for i in range(Nq):
        o = out[i]  # (vd,)
        for e in range(o.size):
            o[e] = _hardswish(o[e] * inv[i])


@njit(cache=True, parallel=True, fastmath=_FAST)
def _attention_kernel(qkv, attention_bias, num_heads, key_dim, scale, out, probs, output_attentions):
    # qkv (B, N, H*(2kd+vd)) with bias, per head [q | k | v]; attention_bias (H, N, N)
    # -> out (B, N, H*vd) head-major, Hardswish applied; probs (B, H, N, N) when output_attentions
    B, N, _ = qkv.shape
    H, kd = num_heads, key_dim
    vd = out.shape[2] // H
    w = 2 * kd + vd  # one head's width in qkv
    for t in prange(B * H):
        b, h = t // H, t % H
        c0 = h * w
        scores = probs[b, h] if output_attentions else np.empty((N, N), qkv.dtype)  # (N, N)
        _attend(qkv[b, :, c0:c0 + kd], qkv[b, :, c0 + kd:c0 + 2 * kd], qkv[b, :, c0 + 2 * kd:c0 + w],
                attention_bias[h], scale, scores, out[b, :, h * vd:(h + 1) * vd], output_attentions)


@_one_thread_pool
def attention(x, queries_keys_values, projection, attention_bias, *, num_attention_heads, key_dim, attention_ratio,
              output_attentions=False):
    """Twin of layers.attention (the residual branch): (B, N, C) -> ((B, N, C), probs (B, H, N, N) or None)."""
    B, N, _ = x.shape
    H, kd, vd = num_attention_heads, key_dim, attention_ratio * key_dim
    qkv = _linear(x, queries_keys_values)  # (B, N, C) -> (B, N, H*(2kd+vd))
    out = np.empty((B, N, H * vd), x.dtype)  # (B, N, H*vd)
    probs = np.empty((B, H, N, N) if output_attentions else (1, 1, 1, 1), x.dtype)
    _attention_kernel(qkv, attention_bias, H, kd, x.dtype.type(kd ** -0.5), out, probs, output_attentions)
    return _linear(out, projection), probs if output_attentions else None  # (B, N, H*vd) -> (B, N, C)


@njit(cache=True, parallel=True, fastmath=_FAST)
def _attention_subsample_kernel(kv, queries, attention_bias, num_heads, key_dim, scale, out, probs,
                                output_attentions):
    # kv (B, N, H*(kd+vd)) with bias, per head [k | v]; queries (B, Nq, H*kd) of the strided grid;
    # attention_bias (H, Nq, N) -> out (B, Nq, H*vd) head-major, Hardswish applied; probs (B, H, Nq, N)
    B, N, _ = kv.shape
    Nq = queries.shape[1]
    H, kd = num_heads, key_dim
    vd = out.shape[2] // H
    w = kd + vd  # one head's width in kv
    for t in prange(B * H):
        b, h = t // H, t % H
        c0 = h * w
        scores = probs[b, h] if output_attentions else np.empty((Nq, N), kv.dtype)  # (Nq, N)
        _attend(queries[b, :, h * kd:(h + 1) * kd], kv[b, :, c0:c0 + kd], kv[b, :, c0 + kd:c0 + w],
                attention_bias[h], scale, scores, out[b, :, h * vd:(h + 1) * vd], output_attentions)


@_one_thread_pool
def attention_subsample(x, keys_values, queries, projection, attention_bias, *, num_attention_heads, key_dim,
                        attention_ratio, stride, resolution, output_attentions=False):
    """Twin of layers.attention_subsample: (B, R*R, C) -> ((B, R'*R', C'), probs (B, H, R'*R', R*R) or None)."""
    B, N, C = x.shape
    H, kd, vd = num_attention_heads, key_dim, attention_ratio * key_dim
    kv = _linear(x, keys_values)  # (B, N, C) -> (B, N, H*(kd+vd))
    xq = x.reshape(B, resolution, resolution, C)[:, ::stride, ::stride]  # (B, R', R', C) strided query grid
    q = _linear(np.ascontiguousarray(xq).reshape(B, -1, C), queries)  # (B, Nq, C) -> (B, Nq, H*kd)
    Nq = q.shape[1]
    out = np.empty((B, Nq, H * vd), x.dtype)  # (B, Nq, H*vd)
    probs = np.empty((B, H, Nq, N) if output_attentions else (1, 1, 1, 1), x.dtype)
    _attention_subsample_kernel(kv, q, attention_bias, H, kd, x.dtype.type(kd ** -0.5), out, probs,
                                output_attentions)
    return _linear(out, projection), probs if output_attentions else None  # (B, Nq, H*vd) -> (B, Nq, C')
