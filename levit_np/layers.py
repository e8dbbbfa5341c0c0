"""The readable reference: every LeViT layer as a plain NumPy function over a dict of weights.

Argument names follow the weight tree (`checkpoint.load_checkpoint`), so a layer is called as
`attention(x, **params["stages"][s]["blocks"][i], **layer.hyper())`, `layer` its entry in `config.plan`.
Shapes use B batch, N tokens (Rh*Rw on an Rh x Rw grid, token t = row*Rw + col), C channels, H heads, kd key dim,
ar attention ratio. A grid ("resolution") is a (rows, columns) pair; a side R means the square (R, R).
Eval-mode BatchNorm is written out explicitly here; the fast path (`levit_np/fast/`) folds it into the weights.
"""

from __future__ import annotations

import numpy as np

BN_EPS = 1e-5  # torch.nn.BatchNorm default, which HF LeViT never changes


def as_grid(size) -> tuple[int, int]:
    """A square side or a (rows, columns) pair -> (rows, columns): 14 -> (14, 14); (28, 50) as it is."""
    if isinstance(size, (tuple, list)):
        rows, cols = size
        return int(rows), int(cols)
    return int(size), int(size)


def hardswish(x):
    # x * relu6(x + 3) / 6, in torch's order of operations: bit-identical to torch.nn.Hardswish in float32
    return x * np.minimum(np.maximum(x + 3, 0), 6) / 6


def softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)  # stable: the largest logit becomes exp(0) = 1
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def batchnorm(x, weight, bias, running_mean, running_var, axis=-1):
    # eval-mode BatchNorm over the channel axis `axis` with the stored statistics
    shape = [1] * x.ndim
    shape[axis] = -1
    scale = (weight / np.sqrt(running_var + BN_EPS)).reshape(shape)  # (C,) -> broadcastable
    return (x - running_mean.reshape(shape)) * scale + bias.reshape(shape)


def conv2d(x, weight, stride=2, padding=1):
    # im2col convolution, no bias: (B, Cin, H, W) -> (B, Cout, H', W'), H' = (H + 2p - k) // s + 1
    B, Cin = x.shape[:2]
    Cout, _, k, _ = weight.shape
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))  # (B, Cin, H+2p, W+2p)
    patches = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))  # (B, Cin, H+2p-k+1, ., k, k)
    patches = patches[:, :, ::stride, ::stride]  # (B, Cin, H', W', k, k)
    Ho, Wo = patches.shape[2:4]
    cols = patches.transpose(0, 2, 3, 1, 4, 5).reshape(B * Ho * Wo, Cin * k * k)  # (B*H'*W', Cin*k*k)
    out = cols @ weight.reshape(Cout, Cin * k * k).T  # (B*H'*W', Cout)
    return out.reshape(B, Ho, Wo, Cout).transpose(0, 3, 1, 2)  # (B, Cout, H', W')


def conv_bn(x, convolution, batch_norm, stride=2, padding=1):
    # LevitConvEmbeddings: Conv2d(no bias) + BatchNorm2d: (B, Cin, H, W) -> (B, Cout, H/2, W/2) at stride 2
    return batchnorm(conv2d(x, convolution["weight"], stride, padding), **batch_norm, axis=1)


def patch_embeddings(pixel_values, embedding_layer_1, embedding_layer_2, embedding_layer_3, embedding_layer_4, *,
                     stride=2, padding=1):
    # the conv stem: 4 x (conv 3x3/2 + BN), Hardswish after the first three; 224 -> 112 -> 56 -> 28 -> 14 along
    # each axis (448 x 800 -> 28 x 50)
    x = hardswish(conv_bn(pixel_values, **embedding_layer_1, stride=stride, padding=padding))  # (B, C/8, 112, 112)
    x = hardswish(conv_bn(x, **embedding_layer_2, stride=stride, padding=padding))  # -> (B, C/4, 56, 56)
    x = hardswish(conv_bn(x, **embedding_layer_3, stride=stride, padding=padding))  # -> (B, C/2, 28, 28)
    x = conv_bn(x, **embedding_layer_4, stride=stride, padding=padding)  # -> (B, C, 14, 14) = (B, C, Rh, Rw)
    B, C = x.shape[:2]
    return x.reshape(B, C, -1).transpose(0, 2, 1)  # (B, C, Rh, Rw) -> (B, Rh*Rw, C), token t = row*Rw + col


def feature_map(x, resolution):
    # a token sequence as the image-shaped map dense heads take: (B, Rh*Rw, C) -> (B, C, Rh, Rw)
    B, _, C = x.shape
    return np.ascontiguousarray(x.reshape(B, *as_grid(resolution), C).transpose(0, 3, 1, 2))  # (B, C, Rh, Rw)


def linear_bn(x, linear, batch_norm):
    # MLPLayerWithBN: Linear(bias=False) + BatchNorm1d over channels: (B, N, Cin) -> (B, N, Cout)
    return batchnorm(x @ linear["weight"].T, **batch_norm)


def attention_bias_idxs(resolution_in, resolution_out=None, stride=1):
    # (Nq, Nk) index into the (H, Rh*Rw) bias table of the key grid (Rh, Rw): query cell (a, b) sits at
    # (stride*a, stride*b) of the key grid; the bias depends only on the offset to key cell (c, d):
    # idx = |stride*a - c| * Rw + |stride*b - d|. Query grid (Qh, Qw) = resolution_out (the key grid if None).
    (Rh, Rw) = as_grid(resolution_in)
    (Qh, Qw) = as_grid(resolution_out or resolution_in)
    qy, qx = np.arange(Qh) * stride, np.arange(Qw) * stride  # query rows / cols on the key grid
    ky, kx = np.arange(Rh), np.arange(Rw)  # key rows / cols
    dy = np.abs(qy[:, None, None, None] - ky[None, None, :, None])  # (Qh, 1, Rh, 1) |Δrow|
    dx = np.abs(qx[None, :, None, None] - kx[None, None, None, :])  # (1, Qw, 1, Rw) |Δcol|
    return (dy * Rw + dx).reshape(Qh * Qw, Rh * Rw)  # (Nq, Nk)


def attention(x, queries_keys_values, projection, attention_biases, *, num_attention_heads, key_dim, attention_ratio,
              attention_bias_idxs, output_attentions=False):
    # LevitAttention, the residual branch (the caller adds x). Returns (out, probs if output_attentions else None).
    B, N = x.shape[:2]
    H, kd, vd = num_attention_heads, key_dim, attention_ratio * key_dim
    qkv = linear_bn(x, **queries_keys_values)  # (B, N, C) -> (B, N, H*(2kd+vd))
    qkv = qkv.reshape(B, N, H, 2 * kd + vd).transpose(0, 2, 1, 3)  # (B, H, N, 2kd+vd): per head [q | k | v]
    q, k, v = qkv[..., :kd], qkv[..., kd:2 * kd], qkv[..., 2 * kd:]  # (B, H, N, kd), (B, H, N, kd), (B, H, N, vd)
    scores = q @ k.swapaxes(-1, -2) * kd**-0.5  # (B, H, N, N)
    scores = scores + attention_biases[:, attention_bias_idxs]  # + (H, N, N) learned bias by offset
    probs = softmax(scores)  # over keys
    out = (probs @ v).transpose(0, 2, 1, 3).reshape(B, N, H * vd)  # (B, H, N, vd) -> (B, N, H*vd), head-major
    return linear_bn(hardswish(out), **projection), probs if output_attentions else None  # -> (B, N, C)


def attention_subsample(x, keys_values, queries, projection, attention_biases, *, num_attention_heads, key_dim,
                        attention_ratio, attention_bias_idxs, stride, resolution, output_attentions=False):
    # LevitAttentionSubsample (no residual): queries from every stride-th cell in both directions, keys/values from
    # all cells. (B, Rh*Rw, C) -> (B, Rh'*Rw', C'), R' = (R - 1) // stride + 1 per axis; `resolution` = (Rh, Rw).
    # Returns (out, probs if output_attentions else None).
    B, N, C = x.shape
    H, kd, vd = num_attention_heads, key_dim, attention_ratio * key_dim
    kv = linear_bn(x, **keys_values)  # (B, N, C) -> (B, N, H*(kd+vd))
    kv = kv.reshape(B, N, H, kd + vd).transpose(0, 2, 1, 3)  # (B, H, N, kd+vd): per head [k | v]
    k, v = kv[..., :kd], kv[..., kd:]  # (B, H, N, kd), (B, H, N, vd)
    xq = x.reshape(B, *as_grid(resolution), C)[:, ::stride, ::stride]  # (B, Rh', Rw', C) subsampled grid
    xq = xq.reshape(B, -1, C)  # (B, Nq, C)
    Nq = xq.shape[1]
    q = linear_bn(xq, **queries).reshape(B, Nq, H, kd).transpose(0, 2, 1, 3)  # (B, Nq, C) -> (B, H, Nq, kd)
    scores = q @ k.swapaxes(-1, -2) * kd**-0.5  # (B, H, Nq, N)
    scores = scores + attention_biases[:, attention_bias_idxs]  # + (H, Nq, N)
    probs = softmax(scores)
    out = (probs @ v).transpose(0, 2, 1, 3).reshape(B, Nq, H * vd)  # (B, H, Nq, vd) -> (B, Nq, H*vd)
    return linear_bn(hardswish(out), **projection), probs if output_attentions else None  # -> (B, Nq, C')


def mlp(x, linear_up, linear_down):
    # LevitMLPLayer, the residual branch: (B, N, C) -> (B, N, C*r) -> Hardswish -> (B, N, C)
    return linear_bn(hardswish(linear_bn(x, **linear_up)), **linear_down)


def classification_layer(x, batch_norm, linear):
    # LevitClassificationLayer: BatchNorm1d then Linear with bias: (B, C) -> (B, num_labels)
    return batchnorm(x, **batch_norm) @ linear["weight"].T + linear["bias"]


def add(x, branch):
    # a residual connection: (B, N, C) + (B, N, C)
    return x + branch
