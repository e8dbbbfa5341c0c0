"""The LeViT forward pass, top to bottom as in the paper, over a backend (`backend.py`): the layer functions.

`backend="numpy"` runs `layers.py`, the readable reference; `backend="numba"` (the default) runs `levit_np/fast/`,
the same functions as parallel Numba kernels with BatchNorm folded into the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backend import NAMES as BACKENDS
from .backend import Backend, get_backend
from .checkpoint import load_checkpoint
from .config import LevitConfig
from .hub import resolve

DTYPES = {"float32": np.float32, "float64": np.float64}


@dataclass
class LevitOutput:
    """What a LeViT call returns; array fields are np.ndarray of the model's dtype."""

    logits: np.ndarray | None = None  # (B, num_labels): the one head, or the mean of the two; None for LevitModel
    cls_logits: np.ndarray | None = None  # (B, num_labels): WithTeacher only
    distillation_logits: np.ndarray | None = None  # (B, num_labels): WithTeacher only
    last_hidden_state: np.ndarray | None = None  # (B, N_last, C_last)
    pooler_output: np.ndarray | None = None  # (B, C_last): mean over tokens
    hidden_states: tuple[np.ndarray, ...] | None = None  # embeddings + each stage's output (output_hidden_states)
    attentions: tuple[np.ndarray, ...] | None = None  # (B, H, Nq, Nk) per attention layer (output_attentions)


def levit_forward(pixel_values, params, config, ops: Backend, architecture, output_hidden_states=False,
                  output_attentions=False) -> LevitOutput:
    """pixel_values (B, 3, S, S) -> LevitOutput. `ops` is the backend, `params` its prepared weights."""
    x = ops.patch_embeddings(pixel_values, **params["patch_embeddings"], stride=config.stride,
                             padding=config.padding)  # (B, 3, S, S) -> (B, N, C0), N = (S/16)^2
    hidden_states, attentions = [x], []
    for stage, weights in zip(config.plan, params["stages"], strict=True):
        layers = zip(stage.layers, weights["blocks"] + weights["downsample"], strict=True)
        for layer, p in layers:
            if layer.kind == "attention":  # x + Attention(x): (B, N, C) -> (B, N, C)
                out, probs = ops.attention(x, **p, **layer.hyper(), output_attentions=output_attentions)
                x = ops.add(x, out)
                attentions.append(probs)
            elif layer.kind == "mlp":  # x + MLP(x): (B, N, C) -> (B, N, C)
                x = ops.add(x, ops.mlp(x, **p))
            else:  # downsampling attention, no residual: (B, R*R, C) -> (B, R'*R', C')
                x, probs = ops.attention_subsample(x, **p, **layer.hyper(), output_attentions=output_attentions)
                attentions.append(probs)
        hidden_states.append(x)  # each stage's output, downsampled for the next (HF's hidden_states)
    pooled = x.mean(axis=1)  # (B, N, C) -> (B, C): global average pooling, no final norm
    out = LevitOutput(last_hidden_state=x, pooler_output=pooled,
                      hidden_states=tuple(hidden_states) if output_hidden_states else None,
                      attentions=tuple(attentions) if output_attentions else None)
    heads = [name for name in ("classifier", "classifier_distill") if name in params]
    if architecture != "LevitModel":
        # (B, C) -> (B, num_labels); HF's head is an Identity when num_labels == 0
        logits = [ops.classification_layer(pooled, **params[h]) for h in heads] or [pooled, pooled]
        if architecture == "LevitForImageClassificationWithTeacher":
            out.cls_logits, out.distillation_logits = logits[:2]
            out.logits = (out.cls_logits + out.distillation_logits) / 2
        else:
            out.logits = logits[0]
    return out


class Levit:
    """A loaded LeViT: call it on pixel_values (B, C, S, S) to get a LevitOutput. Build with `from_pretrained`."""

    def __init__(self, config: LevitConfig, architecture: str, params: dict, *, backend: str = "numba",
                 dtype=np.float32, name: str | None = None):
        self._ops = get_backend(backend)
        self.config = config
        self.architecture = architecture
        self.backend = backend
        self.dtype = np.dtype(dtype)
        self.name = name
        self.num_parameters = _count_parameters(params)
        self._params = self._ops.prepare(params, config)

    def __repr__(self):
        c = self.config
        return (f"Levit({self.name or 'unnamed'}: {self.architecture}, hidden_sizes={list(c.hidden_sizes)}, "
                f"depths={list(c.depths)}, {self.num_parameters / 1e6:.2f}M params, image_size={c.image_size}, "
                f"backend={self.backend!r}, dtype={self.dtype.name})")

    def __call__(self, pixel_values, output_hidden_states: bool = False,
                 output_attentions: bool = False) -> LevitOutput:
        x = self._check_input(pixel_values)
        return levit_forward(x, self._params, self.config, self._ops, self.architecture,
                             output_hidden_states=output_hidden_states, output_attentions=output_attentions)

    def _check_input(self, pixel_values) -> np.ndarray:
        c = self.config
        want = f"(B, {c.num_channels}, {c.image_size}, {c.image_size})"
        if not isinstance(pixel_values, np.ndarray):
            raise ValueError(f"pixel_values must be a NumPy array of shape {want}, found "
                             f"{type(pixel_values).__name__}; use levit_np.preprocess(images) for images")
        if pixel_values.dtype.kind != "f":
            raise ValueError(f"pixel_values must be a float array (normalised pixels), found dtype "
                             f"{pixel_values.dtype}; use levit_np.preprocess(images) to turn images into pixel_values")
        shape = pixel_values.shape
        if len(shape) != 4 or shape[0] < 1 or shape[1:] != (c.num_channels, c.image_size, c.image_size):
            raise ValueError(f"pixel_values must have shape {want} for this model (num_channels={c.num_channels}, "
                             f"image_size={c.image_size}), found {shape}")
        return np.ascontiguousarray(pixel_values, dtype=self.dtype)


def from_pretrained(path: str | Path, *, backend: str = "numba", dtype: str = "float32") -> Levit:
    """Load a LeViT checkpoint directory written by HF `save_pretrained` (config.json + model.safetensors).

    `path` may also be a Hub id ("facebook/levit-128S") or a released variant ("128S"): see `levit_np.hub.resolve`
    (weights/<name>/, then the Hugging Face cache, downloading when online).

    Works for LevitModel, LevitForImageClassification and LevitForImageClassificationWithTeacher checkpoints, with
    or without the `levit.` key prefix, in float16/bfloat16/float32/float64 (upcast to `dtype`).

    backend: "numba" (the fast path, default) or "numpy" (the readable reference); same outputs to float32 rounding.
    dtype: "float32" or "float64"; the whole forward pass runs in this precision.
    Raises FileNotFoundError/OSError for missing or unreadable files, ValueError for a bad or mismatched checkpoint.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
    try:
        dtype = DTYPES[np.dtype(dtype).name]
    except (TypeError, KeyError):
        raise ValueError(f"unsupported dtype {dtype!r}; choose 'float32' or 'float64'") from None
    config, architecture, params = load_checkpoint(resolve(path), dtype)
    return Levit(config, architecture, params, backend=backend, dtype=dtype, name=str(path))


def _count_parameters(tree) -> int:
    """Learnable parameters, as torch counts them: BatchNorm running statistics are buffers."""
    if isinstance(tree, list):
        return sum(_count_parameters(t) for t in tree)
    return sum(_count_parameters(v) if isinstance(v, (dict, list)) else v.size for k, v in tree.items()
               if k not in ("running_mean", "running_var"))
