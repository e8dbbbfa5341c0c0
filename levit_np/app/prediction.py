"""predict(images): pictures in, ImageNet labels out.

    levit_np.predict("cat.jpg")                                   # [("tabby, tabby cat", 0.61), ...]: top 5
    levit_np.predict(["a.jpg", "b.png"], model="facebook/levit-256", top_k=3)   # one list per image

Images are preprocessed exactly as HF's LevitImageProcessor does (`preprocessing.py`; fast_decode=True trades that
for speed), on a pool of threads that decodes the next batch while the model runs this one, run through the model
in batches of `batch_size` (so memory stays bounded however many images there are), and each image's top_k labels
come with their softmax probabilities. Loaded models are cached: repeated calls with the same model do not reload,
and threads asking for the same model at once load it once. An image whose logits are not all finite (NaN or
inf, from a broken checkpoint) is reported as failed, never given NaN probabilities.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from itertools import islice

import numpy as np

from ..checks import positive_int
from ..config import normalize_image_size
from ..cores import thread_count
from ..hub import DEFAULT_MODEL
from ..model import Levit, from_pretrained
from ..preprocessing import as_image_list, check_image, describe, is_single_image, preprocess_each

DEFAULT_BATCH_SIZE = 32  # 32 x 3 x 224 x 224 float32 = 19 MB of input per batch
CACHED_MODELS = 2  # loaded models kept, least recently used dropped first


def predict(images, model: str | os.PathLike | Levit = DEFAULT_MODEL, top_k: int = 5, backend: str | None = None,
            batch_size: int = DEFAULT_BATCH_SIZE, image_size=None, *, fast_decode: bool = False,
            threads: int | None = None):
    """Top-k (label, probability) pairs, most probable first, for one image; a list of such lists for a list.

    images: a path, a PIL image, a uint8 / uint16 (H, W[, C]) array, an encoded image file (bytes, bytearray,
        memoryview, a binary file object), or a list of them (or a (B, H, W, C) array), or any iterable of them (a
        generator is read lazily: memory stays bounded by the batch size).
    model: a Hub id ("facebook/levit-128S"), a variant ("128S"), a local checkpoint directory, or a loaded `Levit`.
    backend: None or "auto" for `from_pretrained`'s default, else "numba" or "numpy".
    image_size: None for the checkpoint's own input size, else the size to run it at (S, or (height, width), multiples
        of 16; see `from_pretrained`): each image is resized to cover it and center cropped to it.
    fast_decode: decode JPEGs at a reduced scale and resize with a reducing pass: several times faster on large
        photos, and not bit-exact with HF's preprocessing (see `levit_np.preprocessing`). Off by default.
    threads: threads that decode and resize images (default: every core this process may use).
    Raises OSError / ValueError naming the image for a missing file, a non-image file, an empty image, a wrong
    array or logits that are not finite; `levit_np.hub.WeightsNotFoundError` (with instructions) when the weights
    cannot be found or fetched.
    """
    single = is_single_image(images)
    positive_int(top_k, "top_k")
    positive_int(batch_size, "batch_size")
    thread_count(threads)
    names = None
    if single or isinstance(images, (list, tuple, np.ndarray)):  # in memory already: cheap checks before any load
        items = as_image_list(images)
        names = [describe(im, None if single else i) for i, im in enumerate(items)]
        for im, name in zip(items, names, strict=True):
            check_image(im, name=name)
    else:  # a generator or another iterable: read lazily, a batch ahead of the model, never all at once
        try:
            items = iter(images)
        except TypeError:
            raise ValueError(f"expected an image or a list of images, found {type(images).__name__}") from None
    m = load_model(model, backend, image_size)
    results = [preds for _, preds in iter_predictions(items, m, top_k=top_k, batch_size=batch_size, names=names,
                                                      fast_decode=fast_decode, threads=threads)]
    return results[0] if single else results


def iter_predictions(images: Iterable, model: Levit, *, top_k: int = 5, batch_size: int = DEFAULT_BATCH_SIZE,
                     names: Iterable[str] | None = None, errors: str = "raise", fast_decode: bool = False,
                     threads: int | None = None) -> Iterator[tuple[int, list | Exception]]:
    """Yield (index, top-k predictions) for each image of `images` (a list, or any iterable: read lazily), in
    order, `batch_size` images at a time; the next batch is preprocessed on `threads` threads while the model runs
    this one (`preprocessing.preprocess_each`).

    errors="raise": the first image that cannot be read, or whose logits are not all finite, raises.
    errors="return": it yields (index, the OSError or ValueError) instead and the other images go on (the command
    line's folder mode).
    """
    if errors not in ("raise", "return"):
        raise ValueError(f"errors must be 'raise' or 'return', found {errors!r}")
    images, names = _with_names(images, names)
    with contextlib.closing(preprocess_each(images, model.config.image_size, names=names, threads=threads,
                                            fast_decode=fast_decode, ahead=batch_size)) as pixels:
        start = 0
        while batch := list(islice(pixels, batch_size)):
            results, _, _ = classify(model, batch, names[start:start + len(batch)], top_k=top_k, errors=errors)
            yield from enumerate(results, start)
            start += len(batch)


def classify(model: Levit, pixels: list, names: list[str], *, top_k: int = 5, errors: str = "return"):
    """One forward pass over a batch's preprocessed images -> (results, output, rows).

    pixels[i]: image i's (3, h, w) pixel_values, or the OSError / ValueError that stopped its preprocessing.
    results[i]: image i's top-k predictions, or its error (it could not be read, or its logits are not all finite);
    errors="raise" raises the first of them instead. Only the readable images take part in the forward pass, whose
    LevitOutput is `output` (None if there were none); `rows` are the rows of that output that gave predictions, in
    order.
    """
    results: list = [None] * len(pixels)
    readable = {}
    for i, x in enumerate(pixels):
        if isinstance(x, Exception):
            if errors == "raise":
                raise x
            results[i] = x
        else:
            readable[i] = x
    output, rows = None, []
    if readable:
        output = model(np.stack(list(readable.values())))  # (b, 3, h, w) -> logits (b, num_labels)
        for row, (i, logits) in enumerate(zip(readable, output.logits, strict=True)):
            error = nonfinite_error(logits, names[i])
            if error is not None and errors == "raise":
                raise error
            results[i] = error or top_labels(logits, model.config.id2label, top_k)
            if error is None:
                rows.append(row)
    return results, output, rows


def _with_names(images: Iterable, names: Iterable[str] | None) -> tuple[Iterable, list[str]]:
    """(images, their names as a list that grows as the images are read): for a list, describe(image, i) each."""
    if names is not None:
        return images, list(names)
    if isinstance(images, (list, tuple)):
        return images, [describe(im, i) for i, im in enumerate(images)]
    named: list[str] = []  # preprocess_each zips the images with this list: each name is in it before it is read

    def read():
        for i, image in enumerate(images):
            named.append(describe(image, i))
            yield image

    return read(), named


def nonfinite_error(logits: np.ndarray, name: str) -> ValueError | None:
    """The error to report for an image whose (num_labels,) logits hold NaN or inf (no softmax of them means
    anything); None when they are all finite."""
    if np.isfinite(logits).all():
        return None
    counts = ((int(np.isnan(logits).sum()), "NaN"), (int(np.isinf(logits).sum()), "inf"))
    found = ", ".join(f"{n} {what}" for n, what in counts if n)
    return ValueError(f"{name}: the model's logits for this image are not all finite ({found} of {logits.size}); "
                      f"the checkpoint's weights or the input hold NaN or inf, or overflow float32")


def top_labels(logits: np.ndarray, id2label: dict[int, str], top_k: int) -> list[tuple[str, float]]:
    """(num_labels,) logits -> the top_k (label, softmax probability) pairs, most probable first (ties: lower id)."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max())  # stable softmax, in float64
    p /= p.sum()
    order = np.argsort(-p, kind="stable")[:top_k]
    return [(id2label[int(i)], float(p[i])) for i in order]


def load_model(model: str | os.PathLike | Levit = DEFAULT_MODEL, backend: str | None = None,
               image_size=None) -> Levit:
    """A loaded classification model: `model` itself if it is a Levit, else from_pretrained(model), cached.
    `image_size`: None, or the input size to load the checkpoint at (a loaded model must already have it)."""
    if image_size is not None:
        image_size = normalize_image_size(image_size)  # a bad value fails before any model is loaded
    if isinstance(model, Levit):
        if backend not in (None, "auto") and backend != model.backend:
            raise ValueError(f"backend={backend!r} was given with a model already loaded with backend "
                             f"{model.backend!r}; load it with from_pretrained(..., backend={backend!r})")
        if image_size is not None and image_size != model.config.image_size:
            raise ValueError(f"image_size={image_size!r} was given with a model already loaded for image_size "
                             f"{model.config.image_size!r}; load it with from_pretrained(..., "
                             f"image_size={image_size!r})")
        m = model
    elif isinstance(model, (str, os.PathLike)):
        m = _load_cached(os.fspath(model), backend, image_size)
    else:
        raise ValueError(f"model must be a Hub id, a checkpoint directory or a loaded levit_np.Levit, "
                         f"found {type(model).__name__}")
    if m.architecture == "LevitModel" or m.config.num_labels == 0:
        raise ValueError(f"model {m.name or model!r} is a bare LevitModel with no classification head: predict "
                         f"needs a LevitForImageClassification(WithTeacher) checkpoint")
    return m


# (name, backend, image_size) -> model, most recent last
_models: OrderedDict[tuple[str, str | None, int | tuple[int, int] | None], Levit] = OrderedDict()
_models_lock = threading.Lock()  # held while loading: threads asking at once wait for the one load


def _load_cached(name: str, backend: str | None, image_size=None) -> Levit:
    key = (name, backend, image_size)
    with _models_lock:
        if key not in _models:
            kw = {k: v for k, v in (("backend", backend), ("image_size", image_size)) if v is not None}
            _models[key] = from_pretrained(name, **kw)
            while len(_models) > CACHED_MODELS:
                _models.popitem(last=False)
        _models.move_to_end(key)
        return _models[key]


def clear_model_cache() -> None:
    """Forget the loaded models (e.g. after replacing a checkpoint)."""
    with _models_lock:
        _models.clear()

