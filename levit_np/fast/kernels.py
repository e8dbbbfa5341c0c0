"""The Numba kernels of the fast path, each behind the documented twin of a `layers.py` function it replaces.

One thread pool does all the work. Every kernel is a tile function (`tiles.py`): serial code for one of the
independent tiles its output splits into (row chunks x weight panels of a dense layer, output rows of a conv,
(image, head) pairs of an attention), each finished while it is still in cache: bias, Hardswish, im2col, softmax.
The Python function that calls it picks the tiling and runs the tiles on all threads. The weights arrive in the
form `weights.prepare` gives them: BatchNorm folded in, float32 weights packed into `Panels` for the micro-kernel
(`llvm_ir.micro_gemm`), float64 ones as plain (K, N) matrices for the BLAS (`blas.gemm`), which also does the
attention products and the first conv.

Kernels are compiled per dtype (float32 / float64), never per shape: batch sizes 1..256 share one compilation.
Inner loops run over 1-D views, which LLVM vectorises. Shapes: B batch, N tokens, C channels, H heads, kd key dim,
vd = attention_ratio * kd value dim, Nq/Nk query/key tokens, M = B*N rows of a token-wise GEMM.
"""

from __future__ import annotations

import math
import threading

import numba
import numpy as np

from ..config import as_grid
from .blas import gemm, one_blas_thread
from .jit import helper
from .llvm_ir import MICRO_ROWS, clamp, fast_max, micro_gemm, pow2
from .tiles import tiles
from .weights import PANEL, Panels

# Rows per BLAS tile of a dense layer: at most 256 (the tile stays in L2 for its epilogue); at least 64, below which
# it pays to split the columns instead: every tile's BLAS call repacks all of the weights it touches.
TILE_ROWS = (64, 256)
X_CHUNK_BYTES = 1 << 18  # x rows per micro-kernel task: at most this many bytes (they stay in L2 while panels pass)
CONV_TILE_PIXELS = 256  # output pixels per conv tile, so that its im2col stays in L2
# ... and at least this many tiles per image, so that one image keeps several threads busy. Neither depends on the
# batch size or the thread count: the BLAS may round a tile of another height differently, and a row of a batch must
# equal the image alone, on 1 thread or 2, bit for bit
CONV_TILES_PER_IMAGE = 8
STEM_CHUNK = 4  # images per pass through the conv stem, so that their activations stay in L3
ADD_TILES = 16  # tiles of the residual add, at most (each a whole number of rows; a tile costs a call)
WORK_ARRAY_MAX_BYTES = 1 << 28  # a work array larger than this is allocated afresh on each call rather than kept


# --- work arrays --------------------------------------------------------------------------------------------------

_work = threading.local()


def work_array(slot: str, shape, dtype) -> np.ndarray:
    """An array for an intermediate that never leaves the layer function making it (qkv, the heads' outputs, the MLP's
    hidden layer, the subsample's k/v and queries): one buffer per slot, dtype and thread, kept between calls and
    grown as needed. A large intermediate made afresh on every call is page-faulted in afresh, because malloc gives
    blocks that big back to the system. Contents undefined, as with np.empty; at most WORK_ARRAY_MAX_BYTES per buffer
    is kept."""
    dtype, n = np.dtype(dtype), math.prod(shape)
    if n * dtype.itemsize > WORK_ARRAY_MAX_BYTES:
        return np.empty(shape, dtype)
    buffers = _work.__dict__.setdefault("buffers", {})
    buffer = buffers.get((slot, dtype))
    if buffer is None or buffer.size < n:
        buffer = buffers[slot, dtype] = np.empty(n, dtype)
    return buffer[:n].reshape(shape)


# --- element-wise helpers ----------------------------------------------------------------------------------------

@helper
def _hardswish(v):
    # twin of layers.hardswish, on a scalar: x * relu6(x + 3) / 6 in x's own precision (a bare 3 would promote
    # float32 to float64); relu6 as `clamp`, which LLVM vectorises (Numba's min() and max() it does not)
    t = type(v)
    return v * clamp(v + t(3), t(0), t(6)) / t(6)


@helper
def _exp_nonpositive(x):
    # the exp of layers.softmax: e^x for float32 x <= 0 without a libm call, so that a loop over it vectorises
    # (~1 ulp; the float64 kernels use math.exp). x = n ln2 + r, |r| <= ln2/2; e^r by Cephes' expf
    # polynomial; 2^n from its bits. Below -87.3, where e^x < 2^-126 would be a denormal, it is flushed to ~1e-38.
    t = type(x)
    x = fast_max(x, t(-87.3))
    n = np.int32(x * t(1.4426950408889634) - t(0.5))  # round(x / ln2), x <= 0 (the cast truncates toward 0)
    fn = t(n)
    # r = x - n ln2, in float64: Numba gives every float instruction of a fast-math kernel the reassociation flag, so
    # the float32 Cody-Waite split of ln2 would be folded back into one inexact product (an error growing with |n|)
    r = t(np.float64(x) - np.float64(fn) * 0.6931471805599453)
    p = t(1.9875691500e-4) * r + t(1.3981999507e-3)
    p = p * r + t(8.3334519073e-3)
    p = p * r + t(4.1665795894e-2)
    p = p * r + t(1.6666665459e-1)
    p = p * r + t(5.0000001201e-1)
    p = p * r * r + r + t(1)  # e^r
    return p * pow2(n)  # e^r * 2^n


@helper
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


@tiles
def _add_kernel(t, x, out, rows):
    # tile t: out (M, C) += x (M, C) on rows t*rows ...
    for r in range(t * rows, min(x.shape[0], (t + 1) * rows)):
        xr, o = x[r], out[r]  # (C,), (C,)
        for c in range(o.size):
            o[c] += xr[c]
    return True


def add(x, branch):
    """Twin of layers.add, the residual connection x + branch, written into `branch` (a layer's fresh output) by all
    threads: (B, N, C)."""
    x2, out = x.reshape(-1, x.shape[-1]), branch.reshape(-1, branch.shape[-1])  # (M, C), (M, C)
    rows = -(-x2.shape[0] // ADD_TILES)  # rows per tile
    _add_kernel(-(-x2.shape[0] // rows), x2, out, rows)
    return branch


# --- dense layers: tiled GEMM + epilogue --------------------------------------------------------------------------

def _blas_tiles(M, N, threads):
    # split an (M, N) GEMM output into (row tiles, column tiles): rows in TILE_ROWS, at least one tile per thread
    lo, hi = TILE_ROWS
    mt = min(-(-M // lo), max(threads, -(-M // hi)))
    if mt >= threads:
        return -(-mt // threads) * threads, 1  # a multiple of the thread count, for balance
    # few rows (small batch, late stages): split the columns too, into 64-wide tiles, so that every thread has tiles
    # and each BLAS call packs only the 64 columns of the weights that it multiplies
    return mt, max(-(-threads // mt), -(-N // 64))


@tiles
def _dense_blas_kernel(t, x, weight, bias, activate, out, nt, rows, cols):
    # tile t of out (M, N) = act(x (M, K) @ weight (K, N) + bias (N,)), the output split into tiles of (rows, cols),
    # nt across: one BLAS call, then bias/act while the tile is in cache
    M, N = out.shape
    r0, c0 = (t // nt) * rows, (t % nt) * cols
    r1, c1 = min(M, r0 + rows), min(N, c0 + cols)
    if r0 < r1 and c0 < c1:
        gemm(x[r0:r1], weight[:, c0:c1], out[r0:r1, c0:c1], False, False)  # (r, K) @ (K, c) -> (r, c)
        for r in range(r0, r1):
            _bias_act(out[r, c0:c1], bias[c0:c1], activate)  # (c,)
    return True


def dense_blas(x, weight, bias, activate, out):
    """out (M, N) = act(x (M, K) @ weight (K, N) + bias (N,)) on all threads, one BLAS call per tile."""
    (M, N), threads = out.shape, numba.get_num_threads()
    mt, nt = _blas_tiles(M, N, threads)
    rows = -(-M // mt)  # ceil(M / mt)
    cols = -(-N // (16 * nt)) * 16  # ceil(N / nt), rounded up to whole AVX-512 vectors
    _dense_blas_kernel(mt * nt, x, weight, bias, activate, out, nt, rows, cols)


@helper(inline=False)
def _panel_product(x, panel, out, c0, bias, activate):
    # out[:, c0:c0 + cols] = act(x (m, K) @ panel (K, PANEL)[:, :cols] [+ bias (cols,)]), float32, out (m, N)
    # C-contiguous, cols = min(PANEL, N - c0): micro-tile by micro-tile, each written straight into `out` and
    # finished while in cache; a ragged edge (the last < MICRO_ROWS rows, or cols < PANEL) goes through a small
    # buffer instead. No bias: an empty one (not None, so that the dense and the conv kernels call one signature
    # of it, compiled once). `out` whole rows and c0, not a column slice of it, so that its row views are
    # contiguous to Numba, and the epilogue's loops vectorise.
    m, N = out.shape
    cols = min(PANEL, N - c0)
    for r0 in range(0, m, MICRO_ROWS):
        rows = min(MICRO_ROWS, m - r0)
        if rows == MICRO_ROWS and cols == PANEL:
            micro_gemm(x[r0:r0 + MICRO_ROWS], panel, out[r0:r0 + MICRO_ROWS, c0:c0 + PANEL])  # (MICRO_ROWS, PANEL)
        else:  # element loops, not slice assignments (each would compile a shape check and its message into the tile)
            tile = np.empty((MICRO_ROWS, PANEL), x.dtype)  # (MICRO_ROWS, PANEL)
            if rows == MICRO_ROWS:  # only the columns are ragged (a layer narrower than a panel)
                micro_gemm(x[r0:r0 + MICRO_ROWS], panel, tile)
            else:
                edge = np.zeros((MICRO_ROWS, x.shape[1]), x.dtype)  # (MICRO_ROWS, K), rows past the end zero
                for r in range(rows):
                    src, dst = x[r0 + r], edge[r]  # (K,), (K,)
                    for k in range(src.size):
                        dst[k] = src[k]
                micro_gemm(edge, panel, tile)
            for r in range(rows):
                src, dst = tile[r], out[r0 + r, c0:c0 + cols]  # (PANEL,), (cols,)
                for c in range(cols):
                    dst[c] = src[c]
        for r in range(r0, r0 + rows):  # (cols,) while the micro-tile is in cache
            if bias.size:
                _bias_act(out[r, c0:c0 + cols], bias, activate)
            else:
                _bias_act(out[r, c0:c0 + cols], None, activate)


@tiles
def _dense_packed_kernel(t, x, panels, bias, activate, out, rows):
    # tile t of out (M, N) = act(x (M, K) @ weight + bias (N,)), float32, the weight packed as panels (P, K, PANEL):
    # x rows (t // P) * rows ... times panel t % P
    M, N = out.shape
    P = panels.shape[0]
    r0, c0 = (t // P) * rows, (t % P) * PANEL
    r1, c1 = min(M, r0 + rows), min(N, c0 + PANEL)
    if r0 < r1:
        _panel_product(x[r0:r1], panels[t % P], out[r0:r1], c0, bias[c0:c1], activate)
    return True


def dense_packed(x, panels, bias, activate, out):
    """out (M, N) = act(x (M, K) @ weight + bias (N,)) on all threads, float32, the weight packed as panels
    (P, K, PANEL). One tile = a chunk of x rows (<= X_CHUNK_BYTES, kept in L2) times one panel; the tiles of one
    chunk are adjacent, so that each thread keeps its x rows in cache while the panels stream past."""
    (M, _), (P, K, _), threads = out.shape, panels.shape, numba.get_num_threads()
    blocks = -(-M // MICRO_ROWS)  # micro-tiles down the rows
    chunks = -(-blocks * MICRO_ROWS * K * x.itemsize // X_CHUNK_BYTES)  # chunks of x that fit in L2 ...
    chunks = max(chunks, -(-2 * threads // P))  # ... and at least 2 tiles per thread
    while (chunks * P) % threads and chunks < blocks:  # whole rounds of tiles: static scheduling, balanced
        chunks += 1
    chunks = min(chunks, blocks)
    rows = -(-blocks // chunks) * MICRO_ROWS  # equal chunks (the last one may be shorter, or empty)
    _dense_packed_kernel(chunks * P, x, panels, bias, activate, out, rows)


def linear_bn(x, weight, bias, activate=False, work=None):
    """Twin of layers.linear_bn [+ layers.hardswish], its BatchNorm folded into (weight, bias): (..., K) -> (..., N).
    weight: `Panels` (float32, our micro-kernel) or a (K, N) matrix (float64, BLAS). `work`: a `work_array` slot to
    write into, for an output the caller consumes before it calls again (None: a fresh array)."""
    x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))  # (M, K), rows adjacent
    shape = (x2.shape[0], bias.shape[0])  # (M, N)
    out = np.empty(shape, x.dtype) if work is None else work_array(work, shape, x.dtype)
    if isinstance(weight, Panels):
        dense_packed(x2, weight.data, bias, activate, out)
    else:
        dense_blas(x2, weight, bias, activate, out)
    return out.reshape(*x.shape[:-1], out.shape[-1])


@one_blas_thread
def mlp(x, linear_up, linear_down):
    """Twin of layers.mlp (the residual branch): (B, N, C) -> (B, N, C*r) -> Hardswish -> (B, N, C)."""
    return linear_bn(linear_bn(x, **linear_up, activate=True, work="mlp hidden"), **linear_down)


@one_blas_thread
def classification_layer(x, weight, bias):
    """Twin of layers.classification_layer with its BatchNorm folded in: (B, C) -> (B, num_labels)."""
    return linear_bn(x, weight, bias)


# --- conv stem: im2col tile + GEMM + bias/Hardswish ---------------------------------------------------------------

@helper(inline=False)
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


@helper(inline=False)
def _im2col_transposed(x, b, oy0, oy1, kernel_size, stride, padding, cols):
    # cols (k*k*Cin + 1, (oy1 - oy0) * Wo), zeroed = the transpose of _im2col's tile, for channels-first x
    # (B, Cin, H, W): each row of it is a strided copy of an input row, not Cin-long pixels (the first conv, Cin = 3)
    _, Cin, H, W = x.shape
    k = kernel_size
    Wo = cols.shape[1] // (oy1 - oy0)
    for ky in range(k):
        for kx in range(k):
            lo = min(Wo, max(0, -(-(padding - kx) // stride)))  # first ox whose input column ix >= 0
            hi = max(lo, min(Wo, (W - 1 + padding - kx) // stride + 1))  # past the last with ix < W
            for ci in range(Cin):
                tap = cols[(ky * k + kx) * Cin + ci]  # (tile pixels,)
                for oy in range(oy0, oy1):
                    iy = oy * stride + ky - padding
                    if 0 <= iy < H:
                        src = x[b, ci, iy, lo * stride + kx - padding:]  # input row from ox = lo's column
                        dst = tap[(oy - oy0) * Wo + lo:(oy - oy0) * Wo + hi]  # (hi - lo,)
                        for j in range(dst.size):  # a strided copy; unsigned index: no negative-index check
                            dst[j] = src[np.uint64(j) * np.uint64(stride)]
    ones = cols[k * k * Cin]  # (tile pixels,) times the bias row of the weight
    for p in range(ones.size):
        ones[p] = 1


@tiles
def _conv_kernel(t, x, channels_first, matrix, panels, kernel_size, stride, padding, activate, out, rows):
    # tile t of the twin of layers.conv_bn [+ layers.hardswish]: out (B, Ho, Wo, Cout) = act(conv(x) + bias), x
    # (B, Cin, H, W) if channels_first else (B, H, W, Cin). The weight, in (ky, kx, cin) order with the bias as its
    # last row, is either panels (P, k*k*Cin + 1, PANEL) for the micro-kernel (float32, channels-last), or, if panels
    # is empty, the matrix (k*k*Cin + 1, Cout) for the BLAS. One tile = `rows` output rows of one image: their
    # im2col, the GEMM, then Hardswish over the output tile while it is in cache.
    B = x.shape[0]
    _, Ho, Wo, Cout = out.shape
    packed = panels.shape[0] > 0
    KK = panels.shape[1] if packed else matrix.shape[0]  # k*k*Cin + 1
    out2 = out.reshape(B * Ho * Wo, Cout)  # (pixels, Cout)
    blocks = -(-Ho // rows)  # tiles per image
    b, oy0 = t // blocks, (t % blocks) * rows
    oy1 = min(Ho, oy0 + rows)
    p0, p1 = (b * Ho + oy0) * Wo, (b * Ho + oy1) * Wo
    if channels_first:
        cols_t = np.zeros((KK, p1 - p0), x.dtype)  # (k*k*Cin + 1, tile pixels)
        _im2col_transposed(x, b, oy0, oy1, kernel_size, stride, padding, cols_t)
        gemm(cols_t, matrix, out2[p0:p1], True, False)  # (k*k*Cin+1, pixels)ᵀ @ (k*k*Cin+1, Cout)
    else:
        cols = np.zeros((p1 - p0, KK), x.dtype)  # (tile pixels, k*k*Cin + 1)
        _im2col(x, b, oy0, oy1, kernel_size, stride, padding, cols)
        if packed:  # (pixels, k*k*Cin+1) @ (k*k*Cin+1, PANEL), panel by panel, Hardswish micro-tile by tile
            no_bias = np.empty(0, x.dtype)  # (the bias is the weight's last row)
            for p in range(panels.shape[0]):
                _panel_product(cols, panels[p], out2[p0:p1], p * PANEL, no_bias, activate)
        else:
            gemm(cols, matrix, out2[p0:p1], False, False)  # (pixels, k*k*Cin+1) @ (k*k*Cin+1, Cout)
    if activate and not packed:
        tile = out.reshape(B * Ho * Wo * Cout)[p0 * Cout:p1 * Cout]  # (pixels * Cout,), the tile's output, flat
        for i in range(tile.size):
            tile[i] = _hardswish(tile[i])
    return True


def _conv_output_shape(x, weight, kernel_size, stride, padding, channels_first):
    # (B, Ho, Wo, Cout) of conv_bn, Ho = (H + 2p - k) // s + 1
    H, W = x.shape[2:] if channels_first else x.shape[1:3]
    Cout = weight.columns if isinstance(weight, Panels) else weight.shape[1]
    return (x.shape[0], (H + 2 * padding - kernel_size) // stride + 1, (W + 2 * padding - kernel_size) // stride + 1,
            Cout)


def conv_bn(x, weight, kernel_size, *, stride, padding, activate, channels_first=False, out=None):
    """Twin of layers.conv_bn [+ layers.hardswish], BatchNorm folded into `weight` (`weights.fold_conv`):
    x (B, Cin, H, W) if channels_first else (B, H, W, Cin) -> (B, Ho, Wo, Cout), channels-last, into `out` if given."""
    if out is None:
        out = np.empty(_conv_output_shape(x, weight, kernel_size, stride, padding, channels_first), x.dtype)
    if isinstance(weight, Panels):
        matrix, panels = np.empty((0, 0), x.dtype), weight.data
    else:
        matrix, panels = weight, np.empty((0, 0, 0), x.dtype)
    B, Ho, Wo, _ = out.shape
    rows = max(1, min(CONV_TILE_PIXELS // Wo, -(-Ho // CONV_TILES_PER_IMAGE)))  # output rows per tile
    _conv_kernel(B * -(-Ho // rows), x, channels_first, matrix, panels, kernel_size, stride, padding, activate, out,
                 rows)
    return out


@one_blas_thread
def patch_embeddings(pixel_values, embedding_layer_1, embedding_layer_2, embedding_layer_3, embedding_layer_4, *,
                     stride=2, padding=1):
    """Twin of layers.patch_embeddings: (B, 3, H, W) -> (B, (H/16) * (W/16), C0); 4 x (folded conv 3x3/2),
    Hardswish x3.

    Channels-last after the first conv, so the last conv's (B, Rh, Rw, C0) output already is the token sequence.
    STEM_CHUNK images at a time, so that the large early activations stay in cache (and, being small, are
    recycled by malloc rather than page-faulted in afresh on every call).
    """
    B = pixel_values.shape[0]
    conv = dict(stride=stride, padding=padding)
    tokens = None  # (B, Rh, Rw, C0), allocated once the grid is known
    for b0 in range(0, B, STEM_CHUNK):
        x = pixel_values[b0:b0 + STEM_CHUNK]  # (b, 3, H, W), channels-first
        x = conv_bn(x, **embedding_layer_1, **conv, activate=True, channels_first=True)  # (b, H/2, W/2, C0/8)
        x = conv_bn(x, **embedding_layer_2, **conv, activate=True)  # -> (b, H/4, W/4, C0/4)
        x = conv_bn(x, **embedding_layer_3, **conv, activate=True)  # -> (b, H/8, W/8, C0/2)
        if tokens is None:
            _, Rh, Rw, C = _conv_output_shape(x, **embedding_layer_4, **conv, channels_first=False)
            tokens = np.empty((B, Rh, Rw, C), x.dtype)
        conv_bn(x, **embedding_layer_4, **conv, activate=False, out=tokens[b0:b0 + x.shape[0]])  # -> tokens
    _, Rh, Rw, C = tokens.shape
    return tokens.reshape(B, Rh * Rw, C)  # token t = row*Rw + col


# --- attention: per (image, head) tile: q kᵀ (BLAS), softmax, · v (BLAS), Hardswish ------------------------------

@helper
def _attend(q, k, v, bias, scale, scores, out, e0, normalise):
    # the core of layers.attention for one (image, head): q (Nq, kd), k (Nk, kd), v (Nk, vd), bias (Nq, Nk) ->
    # scores (Nq, Nk) = exp of the softmax logits, normalised if `normalise`; out[:, e0:e0 + vd] = Hardswish(softmax
    # @ v), out (Nq, H*vd) C-contiguous (whole rows, so that the Hardswish loop runs over contiguous views)
    Nq, Nk = scores.shape
    vd = v.shape[1]
    gemm(q, k, scores, False, True)  # (Nq, kd) @ (Nk, kd)ᵀ -> (Nq, Nk)
    inv = np.empty(Nq, scores.dtype)  # (Nq,) 1 / row sum, applied after · v unless `normalise`
    for i in range(Nq):
        row, brow = scores[i], bias[i]  # (Nk,), (Nk,)
        m = row[0] * scale + brow[0]
        for j in range(Nk):
            s = row[j] * scale + brow[j]  # logits: q·k * kd^-0.5 + bias
            row[j] = s
            m = fast_max(m, s)
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
    gemm(scores, v, out[:, e0:e0 + vd], False, False)  # (Nq, Nk) @ (Nk, vd) -> (Nq, vd)
    for i in range(Nq):
        o = out[i, e0:e0 + vd]  # (vd,)
        for e in range(o.size):
            o[e] = _hardswish(o[e] * inv[i])


@tiles
def _attention_kernel(t, queries, q_width, keys_values, kv_width, k_offset, v_offset, key_dim, attention_biases,
                      scale, out, probs, output_attentions):
    # Both attentions; tile t = (image b, head h) = divmod(t, H). Head h's columns: q = queries[b, :, h*q_width:][:kd],
    # k = keys_values[b, :, h*kv_width + k_offset:][:kd], v = keys_values[b, :, h*kv_width + v_offset:][:vd];
    # attention_biases (H, Nq, Nk) -> out (B, Nq, H*vd) head-major, Hardswish applied; probs (B, H, Nq, Nk) when
    # output_attentions. Self-attention passes qkv as both queries and keys_values.
    Nq, Nk = queries.shape[1], keys_values.shape[1]
    H, kd = attention_biases.shape[0], key_dim
    vd = out.shape[2] // H
    b, h = t // H, t % H
    q0, k0, v0 = h * q_width, h * kv_width + k_offset, h * kv_width + v_offset
    scores = probs[b, h] if output_attentions else np.empty((Nq, Nk), queries.dtype)  # (Nq, Nk)
    _attend(queries[b, :, q0:q0 + kd], keys_values[b, :, k0:k0 + kd], keys_values[b, :, v0:v0 + vd],
            attention_biases[h], scale, scores, out[b], h * vd, output_attentions)
    return True


def _attend_heads(queries, q_width, keys_values, kv_width, k_offset, v_offset, attention_biases, projection, *,
                  key_dim, value_dim, output_attentions):
    # every head's softmax(q kᵀ * kd^-0.5 + bias) v, Hardswish, then the projection: -> ((B, Nq, C'), probs or None)
    B, Nq, _ = queries.shape
    H, Nk = attention_biases.shape[0], keys_values.shape[1]
    out = work_array("heads", (B, Nq, H * value_dim), queries.dtype)  # (B, Nq, H*vd)
    probs = np.empty((B, H, Nq, Nk) if output_attentions else (1, 1, 1, 1), queries.dtype)
    _attention_kernel(B * H, queries, q_width, keys_values, kv_width, k_offset, v_offset, key_dim, attention_biases,
                      queries.dtype.type(key_dim ** -0.5), out, probs, output_attentions)
    return linear_bn(out, **projection), probs if output_attentions else None  # (B, Nq, H*vd) -> (B, Nq, C')


@one_blas_thread
def attention(x, queries_keys_values, projection, attention_biases, *, num_attention_heads, key_dim, attention_ratio,
              attention_bias_idxs=None, output_attentions=False):
    """Twin of layers.attention (the residual branch): (B, N, C) -> ((B, N, C), probs (B, H, N, N) or None).
    `attention_biases` is the dense (H, N, N) bias, gathered by `attention_bias_idxs` at load (`weights.prepare`)."""
    kd, vd = key_dim, attention_ratio * key_dim
    qkv = linear_bn(x, **queries_keys_values, work="qkv")  # (B, N, C) -> (B, N, H*(2kd+vd)), per head [q | k | v]
    w = 2 * kd + vd  # one head's width in qkv
    return _attend_heads(qkv, w, qkv, w, kd, 2 * kd, attention_biases, projection, key_dim=kd, value_dim=vd,
                         output_attentions=output_attentions)


@one_blas_thread
def attention_subsample(x, keys_values, queries, projection, attention_biases, *, num_attention_heads, key_dim,
                        attention_ratio, stride, resolution, attention_bias_idxs=None, output_attentions=False):
    """Twin of layers.attention_subsample: (B, Rh*Rw, C) -> ((B, Nq, C'), probs (B, H, Nq, Rh*Rw) or None), the
    queries on the (Rh', Rw') = ((Rh-1)//stride + 1, (Rw-1)//stride + 1) grid, Nq = Rh'*Rw'; `resolution` = (Rh, Rw).
    `attention_biases` is the dense (H, Nq, Rh*Rw) bias, gathered by `attention_bias_idxs` at load."""
    B, _, C = x.shape
    kd, vd = key_dim, attention_ratio * key_dim
    kv = linear_bn(x, **keys_values, work="kv")  # (B, N, C) -> (B, N, H*(kd+vd)), per head [k | v]
    xq = x.reshape(B, *as_grid(resolution), C)[:, ::stride, ::stride]  # (B, Rh', Rw', C) strided query grid
    q = linear_bn(np.ascontiguousarray(xq).reshape(B, -1, C), **queries, work="q")  # (B, Nq, C) -> (B, Nq, H*kd)
    return _attend_heads(q, kd, kv, kd + vd, 0, kd, attention_biases, projection, key_dim=kd, value_dim=vd,
                         output_attentions=output_attentions)
