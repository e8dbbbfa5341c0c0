"""Load time: the checkpoint's weights turned, once, into the form the fast kernels take. Plain NumPy.

- every Linear/Conv + BatchNorm pair becomes one weight and bias (`fold_batchnorm`), laid out for `x @ weight`;
- float32 weights are packed into PANEL-column panels (`pack_panels`), the order the GEMM micro-kernel streams them,
  as wide as its register tile on the CPU Numba compiles for (`target.TILE`);
- each attention layer's (H, Rh*Rw) bias table is gathered once into the dense (H, Nq, Nk) bias it adds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..layers import BN_EPS
from .target import TILE

PANEL = TILE.columns  # weight columns per panel: the micro-kernel's tile width (64 with AVX-512, 16 with AVX2)
PANEL_ALIGN = 64  # bytes: each panel row is one whole number of cache lines


@dataclass(frozen=True)
class Panels:
    """A float32 weight (K, N) for x @ weight, packed for the micro-kernel: `data` (ceil(N / PANEL), K, PANEL),
    each panel contiguous and starting on a cache line, the last one zero-padded past column N."""

    data: np.ndarray  # (P, K, PANEL)
    columns: int  # N


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


def pack_panels(weight) -> Panels:
    """A float32 weight (K, N) for x @ weight -> its Panels: PANEL columns each, contiguous, aligned, zero-padded."""
    K, N = weight.shape
    P = -(-N // PANEL)
    padded = np.zeros((K, P * PANEL), weight.dtype)  # (K, P*PANEL)
    padded[:, :N] = weight
    buffer = np.empty(P * K * PANEL + PANEL_ALIGN // weight.itemsize, weight.dtype)
    start = (-buffer.ctypes.data % PANEL_ALIGN) // weight.itemsize  # first element on a cache-line boundary
    data = buffer[start:start + P * K * PANEL].reshape(P, K, PANEL)
    data[...] = padded.reshape(K, P, PANEL).transpose(1, 0, 2)  # (K, P, PANEL) -> (P, K, PANEL)
    return Panels(data, N)


def dense(weight, bias):
    """weight (K, N) for x @ weight, bias (N,) -> {"weight", "bias"} as the dense kernels take them: float32
    weights packed into Panels (our micro-kernel), float64 ones left (K, N) (BLAS)."""
    weight = pack_panels(weight) if weight.dtype == np.float32 else np.ascontiguousarray(weight)
    return {"weight": weight, "bias": np.ascontiguousarray(bias)}


def fold_linear(linear, batch_norm):
    """A Linear(no bias) + BatchNorm1d pair {"linear": {weight (Cout, Cin)}, "batch_norm"} -> `dense` form."""
    w, b = fold_batchnorm(linear["weight"], batch_norm)
    return dense(w.T, b)


def fold_conv(convolution, batch_norm, pack=True):
    """A Conv2d(no bias) + BatchNorm2d pair -> {"weight": (k*k*Cin + 1, Cout), "kernel_size"}: rows in im2col
    order (ky, kx, cin), then the bias as one more row (the im2col tile has a column of ones). Packed into Panels
    if `pack`, the weight is float32 and Cout fills at least one panel."""
    w, b = fold_batchnorm(convolution["weight"], batch_norm)
    Cout, Cin, k, _ = w.shape
    rows = np.concatenate([w.transpose(2, 3, 1, 0).reshape(k * k * Cin, Cout), b[None]])  # (k*k*Cin + 1, Cout)
    pack = pack and rows.dtype == np.float32 and Cout >= PANEL
    return {"weight": pack_panels(rows) if pack else np.ascontiguousarray(rows), "kernel_size": k}


def fold_patch_embeddings(embedding_layer_1, embedding_layer_2, embedding_layer_3, embedding_layer_4):
    """The four stem convs, folded. The first (3 input channels, read channels-first by a transposed im2col that
    only a BLAS can multiply) stays a (k*k*Cin + 1, Cout) matrix; the others are packed where they can be."""
    return {"embedding_layer_1": fold_conv(**embedding_layer_1, pack=False),
            **{name: fold_conv(**conv) for name, conv in (("embedding_layer_2", embedding_layer_2),
                                                          ("embedding_layer_3", embedding_layer_3),
                                                          ("embedding_layer_4", embedding_layer_4))}}


def prepare_layer(layer, weights):
    """One encoder layer's checkpoint weights -> the fast kernels' form; `layer` is its `config.Layer`."""
    prepared = {name: fold_linear(**w) for name, w in weights.items() if name != "attention_biases"}
    if layer.kind != "mlp":  # (H, Rh*Rw) table -> the dense (H, Nq, Nk) bias, by the plan's index table
        prepared["attention_biases"] = np.ascontiguousarray(weights["attention_biases"][:, layer.attention_bias_idxs])
    return prepared


def fold_classifier(batch_norm, linear):
    """A BatchNorm1d + Linear(bias) head -> `dense` form: (C, num_labels) for x @ weight, bias (num_labels,)."""
    w, b = fold_batchnorm_before(linear, batch_norm)
    return dense(w.T, b)


def prepare(params, config):
    """The checkpoint's weight tree -> the same tree in the fast kernels' form. Leaves `params` unchanged."""
    out = {"patch_embeddings": fold_patch_embeddings(**params["patch_embeddings"]),
           "stages": [{part: [prepare_layer(layer, w) for layer, w in zip(getattr(stage, part), weights[part],
                                                                         strict=True)]
                       for part in ("blocks", "downsample")}
                      for stage, weights in zip(config.plan, params["stages"], strict=True)]}
    for head in ("classifier", "classifier_distill"):
        if head in params:
            out[head] = fold_classifier(**params[head])
    return out
