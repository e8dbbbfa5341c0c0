"""What a backend is: the layer functions `model.levit_forward` calls, and how it prepares its weights, once.

Two backends fill it in: "numpy", the readable reference (`layers.py`), and "numba", the fast path
(`levit_np/fast/`), which folds every BatchNorm into the weights at load and runs parallel Numba kernels. Twin
functions take the same arguments, named after the weight tree (`checkpoint.load_checkpoint`) plus the layer's
hyper-parameters (`config.Layer.hyper`); only the *form* of the weights differs, which is what `prepare` produces.

To add a backend: write the seven functions below, build a `Backend` of them, and name it in `get_backend`; `run`
and `until_ready` are for a backend that must get ready before it runs (numba compiles its kernels).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from . import layers

NAMES = ("numba", "numpy")  # "numba" is the default
CHOICES = ("auto", *NAMES)  # what a model may ask for; "auto", the default: numba once it is ready, numpy before


def run_directly(forward, dtype):
    """The default `Backend.run`: the forward pass, as it is."""
    return forward()


@dataclass(frozen=True)
class Backend:
    name: str
    # params (the checkpoint's weight tree), config -> the tree this backend's functions take; called once, at load
    prepare: Callable
    # pixel_values (B, 3, S, S), **params["patch_embeddings"], stride, padding -> tokens (B, N, C0)
    patch_embeddings: Callable
    # x (B, N, C), **layer weights, **layer.hyper(), output_attentions -> (branch (B, N, C), probs or None)
    attention: Callable
    # x (B, Rh*Rw, C), **layer weights, **layer.hyper(), output_attentions -> ((B, Rh'*Rw', C'), probs or None)
    attention_subsample: Callable
    # x (B, N, C), **layer weights -> branch (B, N, C)
    mlp: Callable
    # pooled (B, C), **params[head] -> logits (B, num_labels)
    classification_layer: Callable
    # x, branch (B, N, C) -> x + branch (a backend may write it into `branch`)
    add: Callable
    # forward (no arguments: one forward pass over this backend's functions), dtype name -> forward()'s output. How
    # a forward pass runs: the numba backend says when it compiles its kernels, and runs one forward at a time
    run: Callable = run_directly
    # Optional, for a backend that has to get ready before it runs (numba: compile its kernels):
    # (dtype name, this backend, fallback backend) -> a function, called before each forward pass, that returns the
    # backend to run it on: `fallback` until this one is ready for dtype, then this one. What backend="auto" uses
    until_ready: Callable | None = None


def _weights_as_they_are(params, config):
    return params


NUMPY = Backend("numpy", prepare=_weights_as_they_are, patch_embeddings=layers.patch_embeddings,
                attention=layers.attention, attention_subsample=layers.attention_subsample, mlp=layers.mlp,
                classification_layer=layers.classification_layer, add=layers.add)


def get_backend(name: str) -> Backend:
    """The backend called `name` ("numba" or "numpy"); imports Numba only for "numba"."""
    if name == "numpy":
        return NUMPY
    if name == "numba":
        return _numba()
    raise ValueError(f"unknown backend {name!r}; choose one of {sorted(NAMES)}")


@functools.cache
def _numba() -> Backend:
    from . import fast

    return Backend("numba", **fast.FUNCTIONS)


def chooser(name: str, dtype: str) -> Callable[[], Backend]:
    """What a model asks before each forward pass: the backend to run it on. "numba" or "numpy": always that one;
    "auto": numba once it is ready for `dtype` (its kernels compiled), the numpy reference until then (the numba
    backend's `until_ready` decides, and gets it ready meanwhile)."""
    if name not in CHOICES:
        raise ValueError(f"unknown backend {name!r}; choose one of {list(CHOICES)}")
    if name == "auto":
        numba = get_backend("numba")
        return numba.until_ready(dtype, numba, NUMPY)
    backend = get_backend(name)
    return lambda: backend
