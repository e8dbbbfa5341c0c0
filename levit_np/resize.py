"""A checkpoint at another input size: its attention bias tables resized to the new token grids, at load.

Each attention layer's learned table `attention_biases` (H, R*R) holds one number per head for each offset
(|Δrow|, |Δcol|) on the R x R grid it was trained on: a small (H, R, R) image over offsets. At another input size the
grid is (Rh, Rw), so each head's table is resized to (Rh, Rw) by bicubic interpolation, exactly as

    torch.nn.functional.interpolate(table.reshape(1, H, R, R), size=(Rh, Rw), mode="bicubic", align_corners=False)

computes it (`resize_bicubic`, in NumPy), and is indexed by |Δrow| * Rw + |Δcol| (`layers.attention_bias_idxs`).
The downsampling attention's table is over offsets on its key grid, its input grid, like the others. Everything else
in a LeViT (convolutions, linears, BatchNorm) is independent of the input size. At the checkpoint's own size nothing
changes: the tables are returned as they are, bit for bit.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .config import LevitConfig, as_grid

CUBIC_A = -0.75  # the cubic convolution coefficient torch (and OpenCV) use; Keys' (1981) a = -0.5 is another choice


def cubic_weights(t: np.ndarray) -> np.ndarray:
    """The four cubic convolution weights (Keys 1981, a = CUBIC_A) for a sample at fraction t in [0, 1] between
    its neighbours 1 and 2 of the taps (-1, 0, 1, 2): t (n,) -> (n, 4), in t's dtype, in torch's order of operations
    (aten/src/ATen/native/UpSample.h, get_cubic_upsample_coefficients)."""
    A, one = t.dtype.type(CUBIC_A), t.dtype.type(1)

    def near(x):  # |x| <= 1: ((A + 2) x - (A + 3)) x^2 + 1
        return ((A + 2) * x - (A + 3)) * x * x + one

    def far(x):  # 1 < |x| < 2: ((A x - 5A) x + 8A) x - 4A
        return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A

    return np.stack([far(t + one), near(t), near(one - t), far((one - t) + one)], axis=-1)  # (n, 4)


def cubic_taps(size_in: int, size_out: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Along one axis: for each output sample, the 4 input indices it reads and their weights, as torch computes
    them for align_corners=False: the sample sits at s (i + 1/2) - 1/2 on the input, s = size_in / size_out;
    indices past the border are clamped to it (the edge sample repeats). -> idx (size_out, 4), weights (size_out, 4)."""
    t = np.dtype(dtype).type
    scale = t(size_in) / t(size_out)  # in the input's precision, as torch does (float for float32)
    real = scale * (np.arange(size_out, dtype=t) + t(0.5)) - t(0.5)  # (size_out,) source coordinate, may be < 0
    # torch: floorf (a float floor, also for double) capped at size_in - 1, then t clamped to [0, 1]
    base = np.minimum(np.floor(real.astype(np.float32)).astype(np.int64), size_in - 1)  # (size_out,)
    frac = np.clip(real - base.astype(t), t(0), t(1))  # (size_out,)
    idx = np.clip(base[:, None] + np.arange(-1, 3), 0, size_in - 1)  # (size_out, 4), clamped to the border
    return idx, cubic_weights(frac)


def resize_bicubic(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of the last two axes: (..., h, w) -> (..., H, W), as torch.nn.functional.interpolate(x,
    size=(H, W), mode="bicubic", align_corners=False) computes it on CPU, in x's dtype: each output is the sum over
    its 4 input rows (weights wy) of that row's sum over its 4 input columns (weights wx), each sum left to right."""
    h, w = x.shape[-2:]
    H, W = size
    iy, wy = cubic_taps(h, H, x.dtype)  # (H, 4), (H, 4)
    ix, wx = cubic_taps(w, W, x.dtype)  # (W, 4), (W, 4)
    out = None
    for i in range(4):  # over the 4 input rows of each output row
        rows = x[..., iy[:, i], :]  # (..., H, w): input row iy[r, i] for output row r
        row = rows[..., ix[:, 0]] * wx[:, 0]  # (..., H, W): that row interpolated along the columns
        for j in range(1, 4):
            row = row + rows[..., ix[:, j]] * wx[:, j]
        term = row * wy[:, i, None]  # (..., H, W) times the row's weight
        out = term if out is None else out + term
    return np.ascontiguousarray(out)  # (..., H, W), C order whatever order the gathers left it in


def resize_bias_table(table: np.ndarray, grid_in, grid_out) -> np.ndarray:
    """One attention layer's bias table (H, Rh*Rw) over the offsets of grid_in (Rh, Rw) -> (H, Rh'*Rw') over those of
    grid_out, each head resized bicubically over its offset grid; the table itself when the grids are the same."""
    (h, w), (H_, W_) = as_grid(grid_in), as_grid(grid_out)
    if (h, w) == (H_, W_):
        return table
    heads = table.shape[0]
    return resize_bicubic(table.reshape(heads, h, w), (H_, W_)).reshape(heads, H_ * W_)  # (H, Rh'*Rw')


def at_image_size(config: LevitConfig, params: dict, image_size) -> tuple[LevitConfig, dict]:
    """A loaded checkpoint (config, weight tree) -> the same model for inputs of `image_size` (an int or a
    (height, width) pair, multiples of 16): the config with that image_size, and a weight tree whose attention bias
    tables are resized to the new grids (the other arrays are shared, not copied). `params` is left unchanged."""
    new = dataclasses.replace(config, image_size=image_size)  # validated: a bad image_size raises ValueError here
    if new.image_shape == config.image_shape:
        return new, params
    stages = []
    for old_stage, new_stage, weights in zip(config.plan, new.plan, params["stages"], strict=True):
        stages.append({part: [_resized_layer(a, b, w) for a, b, w in zip(getattr(old_stage, part),
                                                                         getattr(new_stage, part), weights[part],
                                                                         strict=True)]
                       for part in ("blocks", "downsample")})
    return new, {**params, "stages": stages}


def _resized_layer(old, new, weights: dict) -> dict:
    # one layer's weights, its bias table (if it has one) resized from the old layer's input grid to the new one's
    if "attention_biases" not in weights:
        return weights
    return {**weights, "attention_biases": resize_bias_table(weights["attention_biases"], old.resolution,
                                                             new.resolution)}
