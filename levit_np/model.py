"""The LeViT forward pass, top to bottom as in the paper, over a backend (`backend.py`): the layer functions.

`backend="numpy"` runs `layers.py`, the readable reference; `backend="numba"` runs `levit_np/fast/`, the same
functions as parallel Numba kernels with BatchNorm folded into the weights; `backend="auto"` (the default) is numba
once its kernels are compiled, numpy until then (`backend.chooser`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backend import CHOICES, Backend, chooser
from .backend import NAMES as BACKENDS  # noqa: F401 - levit_np.model.BACKENDS, as before
from .checkpoint import load_checkpoint
from .config import LevitConfig, normalize_image_size
from .hub import resolve
from .layers import feature_map
from .resize import at_image_size

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
    # (B, C_s, h_s, w_s) per stage: its blocks' output on its own grid, before downsampling (output_feature_maps)
    feature_maps: tuple[np.ndarray, ...] | None = None


def levit_forward(pixel_values, params, config, ops: Backend, architecture, output_hidden_states=False,
                  output_attentions=False, output_feature_maps=False) -> LevitOutput:
    """pixel_values (B, 3, H, W) -> LevitOutput. `ops` is the backend, `params` its prepared weights."""
    x = ops.patch_embeddings(pixel_values, **params["patch_embeddings"], stride=config.stride,
                             padding=config.padding)  # (B, 3, H, W) -> (B, N, C0), N = (H/16) * (W/16)
    hidden_states, attentions, feature_maps = [x], [], []
    for stage, weights in zip(config.plan, params["stages"], strict=True):
        layers = zip(stage.layers, weights["blocks"] + weights["downsample"], strict=True)
        for i, (layer, p) in enumerate(layers):
            if i == len(stage.blocks):  # the stage's blocks are done, its downsampling comes next
                feature_maps.append(x)
            if layer.kind == "attention":  # x + Attention(x): (B, N, C) -> (B, N, C)
                out, probs = ops.attention(x, **p, **layer.hyper(), output_attentions=output_attentions)
                x = ops.add(x, out)
                attentions.append(probs)
            elif layer.kind == "mlp":  # x + MLP(x): (B, N, C) -> (B, N, C)
                x = ops.add(x, ops.mlp(x, **p))
            else:  # downsampling attention, no residual: (B, Rh*Rw, C) -> (B, Rh'*Rw', C')
                x, probs = ops.attention_subsample(x, **p, **layer.hyper(), output_attentions=output_attentions)
                attentions.append(probs)
        if not stage.downsample:  # the last stage: no downsampling
            feature_maps.append(x)
        hidden_states.append(x)  # each stage's output, downsampled for the next (HF's hidden_states)
    pooled = x.mean(axis=1)  # (B, N, C) -> (B, C): global average pooling, no final norm
    if output_feature_maps:  # (B, h*w, C) -> (B, C, h, w), each on its stage's grid
        feature_maps = [feature_map(f, grid) for f, grid in zip(feature_maps, config.resolutions, strict=True)]
    out = LevitOutput(last_hidden_state=x, pooler_output=pooled,
                      hidden_states=tuple(hidden_states) if output_hidden_states else None,
                      attentions=tuple(attentions) if output_attentions else None,
                      feature_maps=tuple(feature_maps) if output_feature_maps else None)
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
    """A loaded LeViT: call it on pixel_values (B, C, H, W) to get a LevitOutput. Build with `from_pretrained`.

    `backend` is the one in use now, "numba" or "numpy". Built with backend="auto", a model whose numba kernels are
    not compiled yet runs the numpy reference while a background process compiles them, and moves to numba on the
    first call after that process is done (the same outputs to float32 rounding).

    A model pickles and deep-copies (for process pools and distributed engines): the copy is rebuilt from the
    config, the architecture, the checkpoint's weights, the dtype and the backend asked for ("auto" chooses again
    where the copy lands), and computes the same outputs bit for bit on the same machine and backend.
    """

    def __init__(self, config: LevitConfig, architecture: str, params: dict, *, backend: str = "auto",
                 dtype=np.float32, name: str | None = None):
        self.config = config
        self.architecture = architecture
        self.dtype = np.dtype(dtype)
        self.name = name
        self.num_parameters = _count_parameters(params)
        self._requested = backend  # what the caller asked for: a pickled model is rebuilt with it
        self._weights = params  # the checkpoint's tree: what a backend's prepare takes, and what a pickle carries
        self._choose = chooser(backend, self.dtype.name)  # () -> the backend to run the next forward pass on
        self._use(self._choose())

    def _use(self, ops: Backend) -> None:
        self._ops = ops
        self._params = ops.prepare(self._weights, self.config)
        self.backend = ops.name

    def __getstate__(self) -> dict:
        # pickle and copy carry what rebuilds the model (the checkpoint's weights, not a backend's prepared form, so
        # that a process pool's or a distributed engine's workers get a model that works on their own CPU)
        return {"config": self.config, "architecture": self.architecture, "weights": self._weights,
                "backend": self._requested, "dtype": self.dtype.name, "name": self.name}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["config"], state["architecture"], state["weights"], backend=state["backend"],
                      dtype=state["dtype"], name=state["name"])

    def __repr__(self):
        c = self.config
        return (f"Levit({self.name or 'unnamed'}: {self.architecture}, hidden_sizes={list(c.hidden_sizes)}, "
                f"depths={list(c.depths)}, {self.num_parameters / 1e6:.2f}M params, image_size={c.image_size}, "
                f"backend={self.backend!r}, dtype={self.dtype.name})")

    def __call__(self, pixel_values, output_hidden_states: bool = False, output_attentions: bool = False,
                 output_feature_maps: bool = False) -> LevitOutput:
        x = self._check_input(pixel_values)
        ops = self._choose()  # backend="auto": numpy until the numba kernels are compiled, then numba
        if ops.name != self.backend:
            self._use(ops)

        def forward():
            return levit_forward(x, self._params, self.config, self._ops, self.architecture,
                                 output_hidden_states=output_hidden_states, output_attentions=output_attentions,
                                 output_feature_maps=output_feature_maps)
        return ops.run(forward, self.dtype.name)

    def _check_input(self, pixel_values) -> np.ndarray:
        c = self.config
        height, width = c.image_shape
        want = f"(B, {c.num_channels}, {height}, {width})"
        if not isinstance(pixel_values, np.ndarray):
            raise ValueError(f"pixel_values must be a NumPy array of shape {want}, found "
                             f"{type(pixel_values).__name__}; use levit_np.preprocess(images) for images")
        if pixel_values.dtype.kind != "f":
            raise ValueError(f"pixel_values must be a float array (normalised pixels), found dtype "
                             f"{pixel_values.dtype}; use levit_np.preprocess(images) to turn images into pixel_values")
        shape = pixel_values.shape
        if len(shape) != 4 or shape[0] < 1 or shape[1:] != (c.num_channels, height, width):
            raise ValueError(f"pixel_values must have shape {want} for this model (num_channels={c.num_channels}, "
                             f"image_size={c.image_size}), found {shape}")
        return np.ascontiguousarray(pixel_values, dtype=self.dtype)


def from_pretrained(path: str | Path, *, backend: str = "auto", dtype: str = "float32", image_size=None) -> Levit:
    """Load a LeViT checkpoint directory written by HF `save_pretrained` (config.json + model.safetensors).

    `path` may also be a Hub id ("facebook/levit-128S") or a released variant ("128S"): see `levit_np.hub.resolve`
    (weights/<name>/, then the Hugging Face cache, downloading when online).

    Works for LevitModel, LevitForImageClassification and LevitForImageClassificationWithTeacher checkpoints, with
    or without the `levit.` key prefix, in float16/bfloat16/float32/float64 (upcast to `dtype`).

    backend: "numba" (the fast path), "numpy" (the readable reference; same outputs to float32 rounding) or "auto"
        (the default): numba when its kernels are compiled for this CPU, else numpy while they compile in a
        background process, then numba (see `Levit`). `model.backend` says which one runs.
    dtype: "float32" or "float64"; the whole forward pass runs in this precision.
    image_size: None (the checkpoint's config.image_size), or the input size to run at: an integer S for S x S, or a
        (height, width) pair, each a multiple of 16 up to 1024. Every attention layer's bias table is resized to
        the new token grid (`levit_np.resize`); at the checkpoint's own size nothing changes.
    Raises FileNotFoundError/OSError for missing or unreadable files, ValueError for a bad or mismatched checkpoint
    or a bad image_size.
    """
    if backend not in CHOICES:
        raise ValueError(f"unknown backend {backend!r}; choose one of {list(CHOICES)}")
    try:
        dtype = DTYPES[np.dtype(dtype).name]
    except (TypeError, KeyError):
        raise ValueError(f"unsupported dtype {dtype!r}; choose 'float32' or 'float64'") from None
    if image_size is not None:
        image_size = normalize_image_size(image_size)  # a bad type or bound fails before anything is read
    config, architecture, params = load_checkpoint(resolve(path), dtype)
    if image_size is not None:
        config, params = at_image_size(config, params, image_size)
    return Levit(config, architecture, params, backend=backend, dtype=dtype, name=str(path))


def _count_parameters(tree) -> int:
    """Learnable parameters, as torch counts them: BatchNorm running statistics are buffers."""
    if isinstance(tree, list):
        return sum(_count_parameters(t) for t in tree)
    return sum(_count_parameters(v) if isinstance(v, (dict, list)) else v.size for k, v in tree.items()
               if k not in ("running_mean", "running_var"))
