"""Shared test machinery: compare our outputs with HF's. The randomised checkpoints come from `levit_np.testing`."""

from __future__ import annotations

import copy
import os

import numpy as np
import torch
from PIL import Image

import levit_np
from levit_np.backend import NAMES as BACKENDS
from levit_np.testing import build_hf, hf_config, randomize_, save_hf  # noqa: F401  (the tests' factory)

# Worst relative error allowed, max|ours - HF| / max(1, max|HF|), per output:
# float32: GEMMs are not bit-reproducible across BLAS libraries (OpenBLAS vs MKL/oneDNN); with weights scaled
#   1/sqrt(fan_in) the accumulated rounding over ~40 layers measures ~1e-6, so 1e-4 leaves two orders of margin
#   while any real bug (wrong BN axis, bias index, head split) shows up at 1e-2 or more.
# float64: the same algorithm in double precision measures ~1e-14; 1e-10 proves the arithmetic is the same.
RTOL = {"float32": 1e-4, "float64": 1e-10}
WORST: dict[str, tuple[float, str, str]] = {}  # dtype -> (worst error, output, test): reported after the run

# A LeViT small enough to build, save and run in a fraction of a second: the tests' usual random checkpoint
SMALL = dict(hidden_sizes=[32, 48, 64], num_attention_heads=[2, 3, 4], depths=[1, 1, 1], key_dim=[8, 8, 8],
             image_size=64)

ALL_BACKENDS = sorted(BACKENDS)
CLASSES = ("LevitModel", "LevitForImageClassification", "LevitForImageClassificationWithTeacher")

# The released variants, written out from the paper / LEVIT_NOTES independently of levit_np.VARIANTS.
# drop_path_rate=0: the 0.1 of levit-384 fails transformers 5.x's strict config validation (eval ignores it anyway).
HF_VARIANTS = {
    "128S": dict(hidden_sizes=[128, 256, 384], num_attention_heads=[4, 6, 8], depths=[2, 3, 4], key_dim=[16, 16, 16]),
    "128": dict(hidden_sizes=[128, 256, 384], num_attention_heads=[4, 8, 12], depths=[4, 4, 4], key_dim=[16, 16, 16]),
    "192": dict(hidden_sizes=[192, 288, 384], num_attention_heads=[3, 5, 6], depths=[4, 4, 4], key_dim=[32, 32, 32]),
    "256": dict(hidden_sizes=[256, 384, 512], num_attention_heads=[4, 6, 8], depths=[4, 4, 4], key_dim=[32, 32, 32]),
    "384": dict(hidden_sizes=[384, 512, 768], num_attention_heads=[6, 9, 12], depths=[4, 4, 4], key_dim=[32, 32, 32]),
}


def random_pixels(batch: int, image_size: int = 224, seed: int = 0, num_channels: int = 3) -> np.ndarray:
    """Normalised-image-like input, (B, C, S, S) float32."""
    return np.random.default_rng(seed).standard_normal((batch, num_channels, image_size, image_size),
                                                       dtype=np.float32)


@torch.no_grad()
def hf_forward(model, pixel_values: np.ndarray, **kw):
    dtype = torch.float64 if pixel_values.dtype == np.float64 else torch.float32
    if next(model.parameters()).dtype != dtype:
        model = copy.deepcopy(model).to(dtype)  # never change a model a fixture shares
    return model(torch.from_numpy(pixel_values), output_hidden_states=True, **kw)


def rel_err(ours, ref) -> float:
    """max|ours - ref| / max(1, max|ref|): relative to the output's scale, absolute near zero."""
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert ours.shape == ref.shape, f"shape {ours.shape} != reference {ref.shape}"
    return float(np.abs(ours.astype(np.float64) - ref).max() / max(1.0, np.abs(ref).max()))


def compare_outputs(ours: levit_np.LevitOutput, ref, cls_name: str, dtype: str = "float32") -> dict[str, float]:
    """Assert every output the HF class returns matches ours within RTOL[dtype]; return the errors by name."""
    errs = {}
    if cls_name == "LevitModel":
        errs["last_hidden_state"] = rel_err(ours.last_hidden_state, ref.last_hidden_state)
        errs["pooler_output"] = rel_err(ours.pooler_output, ref.pooler_output)
        assert ours.logits is None and ours.cls_logits is None and ours.distillation_logits is None
    else:
        errs["logits"] = rel_err(ours.logits, ref.logits)
        if cls_name == "LevitForImageClassificationWithTeacher":
            errs["cls_logits"] = rel_err(ours.cls_logits, ref.cls_logits)
            errs["distillation_logits"] = rel_err(ours.distillation_logits, ref.distillation_logits)
        else:
            assert ours.cls_logits is None and ours.distillation_logits is None
        # HF's classification outputs carry no last_hidden_state: compare ours with the encoder's final state
        errs["last_hidden_state"] = rel_err(ours.last_hidden_state, ref.hidden_states[-1])
        errs["pooler_output"] = rel_err(ours.pooler_output, ref.hidden_states[-1].mean(1))
        assert_same_top1(ours.logits, ref.logits.numpy(), RTOL[dtype])
    assert ours.hidden_states is not None and len(ours.hidden_states) == len(ref.hidden_states) == 4
    for i, (a, b) in enumerate(zip(ours.hidden_states, ref.hidden_states, strict=True)):
        errs[f"hidden_states[{i}]"] = rel_err(a, b)
    name, worst = max(errs.items(), key=lambda kv: kv[1])
    if worst > WORST.get(dtype, (0.0,))[0]:
        WORST[dtype] = (worst, name, os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0])
    bad = {k: v for k, v in errs.items() if not v <= RTOL[dtype]}
    assert not bad, f"outputs differ from HF beyond {RTOL[dtype]:g} ({dtype}): {bad}"
    return errs


def assert_same_top1(ours: np.ndarray, ref: np.ndarray, rtol: float) -> None:
    """Top-1 must agree wherever HF's top-1 beats its runner-up by more than the tolerance we allow on logits."""
    scale = max(1.0, float(np.abs(ref).max()))
    top2 = np.sort(ref, axis=-1)[:, -2:] if ref.shape[-1] > 1 else np.concatenate([ref, ref - 1], -1)
    clear = (top2[:, 1] - top2[:, 0]) > 2 * rtol * scale
    np.testing.assert_array_equal(ours.argmax(-1)[clear], ref.argmax(-1)[clear], err_msg="top-1 differs from HF")


def write_photos(folder, n: int, seed: int, broken: str, broken_bytes: bytes):
    """A folder of photos to label: n small random PNGs, sub{i % 3}/img{i:03d}.png of (60 + i % 7) x 70 pixels,
    and the file `broken` (a path inside the folder) holding `broken_bytes`, which no image reader accepts."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        path = folder / f"sub{i % 3}" / f"img{i:03d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (60 + i % 7, 70, 3), dtype=np.uint8)).save(path)
    (folder / broken).write_bytes(broken_bytes)
    return folder
