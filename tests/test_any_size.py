"""Any input size (issue 13): a checkpoint trained at one resolution run at another, square or not.

The independent references:
- the bicubic resize of the bias tables against torch.nn.functional.interpolate itself;
- square sizes: an HF model built for the new size, given the checkpoint's weights and, as its attention_biases,
  torch's bicubic resize of the originals, on every output, both backends, float32 and float64;
- non-square sizes, which HF cannot run: transposing the input image, the stem's 3x3 kernels and every bias table's
  two offset axes transposes every token grid and leaves the pooled output unchanged; and the numba backend against
  the NumPy reference on odd grids;
- preprocessing to (h, w) against HF's processor where HF's rule applies (the short side binds).
"""

import argparse
import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from test_attentions import hf_attention_probs
from transformers import LevitImageProcessorPil

import levit_np
from helpers import (
    ALL_BACKENDS,
    HF_VARIANTS,
    RTOL,
    WORST,
    compare_outputs,
    hf_config,
    hf_forward,
    random_pixels,
    rel_err,
    save_hf,
)
from levit_np import layers, resize
from levit_np.app.cli import image_size_arg, main
from levit_np.checkpoint import hf_layer_keys, load_checkpoint
from levit_np.config import Layer, LevitConfig
from levit_np.preprocessing import resize_shape, resize_to_cover

WITH_TEACHER = "LevitForImageClassificationWithTeacher"
TINY = dict(hidden_sizes=[16, 24, 32], num_attention_heads=[2, 3, 4], depths=[1, 1, 1], key_dim=[4, 4, 4])
DTYPES = ["float32", "float64"]


def record(dtype, err, what):
    """Count `err` towards the run's worst error per dtype (printed at the end of the suite, see conftest)."""
    if err > WORST.get(dtype, (0.0,))[0]:
        WORST[dtype] = (err, what, "tests/test_any_size.py")


def encoder_weights(params) -> list[dict]:
    """The weight tree's encoder layers in config.plan order (the order of checkpoint.hf_layer_keys)."""
    return [w for stage in params["stages"] for w in stage["blocks"] + stage["downsample"]]


def pixels(batch, height, width, dtype="float32", seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 3, height, width)).astype(dtype)


# --- the bicubic resize against torch ----------------------------------------------------------------------------

def torch_resize(x: np.ndarray, size) -> np.ndarray:
    return F.interpolate(torch.from_numpy(x)[None], size=size, mode="bicubic", align_corners=False)[0].numpy()


def assert_resize_matches_torch(x, size):
    ours, ref = resize.resize_bicubic(x, size), torch_resize(x, size)
    assert ours.shape == ref.shape and ours.dtype == x.dtype
    err = rel_err(ours, ref)
    # the same arithmetic in the same precision; torch's build may contract a * b + c into one FMA, so a few ulps
    assert err <= 32 * np.finfo(x.dtype).eps, f"{x.shape} -> {size}: {err:.3g}"
    return err


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size_in,size_out", [((14, 14), (20, 20)), ((14, 14), (28, 50)), ((14, 14), (10, 18)),
                                              ((7, 7), (14, 25)), ((4, 4), (7, 13)), ((14, 14), (4, 4)),
                                              ((14, 14), (13, 15)), ((10, 18), (14, 14)), ((3, 5), (64, 64)),
                                              ((1, 1), (3, 3)), ((2, 3), (1, 1)), ((14, 14), (14, 14))])
def test_resize_bicubic_matches_torch(dtype, size_in, size_out):
    x = np.random.default_rng(0).standard_normal((4, *size_in)).astype(dtype)
    record(dtype, assert_resize_matches_torch(x, size_out), f"bicubic {size_in} -> {size_out}")


@settings(max_examples=20)
@given(h=st.integers(1, 20), w=st.integers(1, 20), H=st.integers(1, 70), W=st.integers(1, 70),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_resize_bicubic_matches_torch_any_sizes(h, w, H, W, dtype, seed):
    assert_resize_matches_torch(np.random.default_rng(seed).standard_normal((2, h, w)).astype(dtype), (H, W))


def test_cubic_weights_are_torchs_a_minus_075():
    # at t = 0 the sample is the input itself; the weights sum to 1; and a = -0.75 puts -0.75 t^3 + 1.5 t^2 - 0.75 t
    # on the first tap (Keys' family: w(1 + t) = a (1+t)^3 - 5a (1+t)^2 + 8a (1+t) - 4a)
    t = np.linspace(0, 1, 11)
    w = resize.cubic_weights(t)
    np.testing.assert_array_equal(resize.cubic_weights(np.zeros(1)), [[0, 1, 0, 0]])
    np.testing.assert_allclose(w.sum(-1), 1, rtol=1e-15)
    np.testing.assert_allclose(w[:, 0], -0.75 * t**3 + 1.5 * t**2 - 0.75 * t, atol=1e-15)


def test_bias_table_resize_commutes_with_transposition():
    table = np.random.default_rng(1).standard_normal((3, 14 * 14))
    a = resize.resize_bias_table(table, (14, 14), (28, 50)).reshape(3, 28, 50)
    t = table.reshape(3, 14, 14).swapaxes(1, 2).reshape(3, -1)
    b = resize.resize_bias_table(t, (14, 14), (50, 28)).reshape(3, 50, 28)
    np.testing.assert_allclose(a, b.swapaxes(1, 2), rtol=0, atol=1e-14)  # the same sums, in another order


# --- layers and config on non-square grids -----------------------------------------------------------------------

def test_bias_index_on_a_non_square_grid():
    # key grid 3 x 5; queries on every other cell: (2, 3); idx = |2a - c| * 5 + |2b - d|
    idx = layers.attention_bias_idxs((3, 5), (2, 3), stride=2)
    assert idx.shape == (6, 15)
    for a, b, c, d in np.ndindex(2, 3, 3, 5):
        assert idx[a * 3 + b, c * 5 + d] == abs(2 * a - c) * 5 + abs(2 * b - d)
    np.testing.assert_array_equal(layers.attention_bias_idxs(7), layers.attention_bias_idxs((7, 7)))


def test_config_grids_and_round_trip():
    c = LevitConfig(image_size=(448, 800))
    assert c.image_size == (448, 800) and c.image_shape == (448, 800)
    assert c.resolutions == ((28, 50), (14, 25), (7, 13))
    assert [L.resolution for L in c.plan[0].blocks] == [(28, 50)] * len(c.plan[0].blocks)
    assert c.plan[0].downsample[0].resolution_out == (14, 25) and c.plan[1].downsample[0].resolution_out == (7, 13)
    assert c.plan[0].blocks[0].shapes()["attention_biases"] == (4, 28 * 50)
    assert LevitConfig(image_size=[224, 224]).image_size == 224  # a square pair is the integer config.json holds
    assert LevitConfig.from_dict({"image_size": 224}).image_size == 224
    assert LevitConfig.from_dict({"image_size": [448, 800]}).image_size == (448, 800)
    assert LevitConfig(image_size=np.int64(320)).image_size == 320 and Layer("mlp", 8, 8, 3).resolution == (3, 3)


# --- square: HF at the new size is the reference -------------------------------------------------------------------

def hf_at_size(hf, image_size: int, dtype: torch.dtype, **config_kw):
    """HF's model for `image_size` holding `hf`'s weights, its bias tables resized by torch's bicubic interpolation
    (in `dtype`, from the original tables)."""
    new = type(hf)(hf_config(num_labels=hf.config.num_labels, image_size=image_size, **config_kw)).to(dtype).eval()
    targets = dict(new.named_modules())
    state = {}
    for key, t in hf.state_dict().items():
        state[key] = t.to(dtype) if t.is_floating_point() else t
        if key.endswith("attention_biases"):
            H, n = t.shape
            R = math.isqrt(n)
            R_new = math.isqrt(targets[key.removesuffix(".attention_biases")].attention_biases.shape[1])
            state[key] = F.interpolate(t.to(dtype).reshape(1, H, R, R), size=(R_new, R_new), mode="bicubic",
                                       align_corners=False).reshape(H, R_new * R_new)
    new.load_state_dict(state)
    for m in new.modules():  # HF caches the gathered biases in eval mode: none may predate the new tables
        if hasattr(m, "attention_bias_cache"):
            m.attention_bias_cache = {}
    return new


@pytest.fixture(scope="module")
def hf_128s(checkpoint):
    return checkpoint(WITH_TEACHER, **HF_VARIANTS["128S"])  # trained at 224


@pytest.fixture(scope="module")
def hf_128s_320(hf_128s):
    """dtype -> (HF's 320 px model, an input, its outputs, its attention probabilities), computed once."""
    hf, _ = hf_128s
    ref = {}
    for dtype in DTYPES:
        model = hf_at_size(hf, 320, getattr(torch, dtype), **HF_VARIANTS["128S"])
        x = random_pixels(2, 320, seed=3).astype(dtype)
        ref[dtype] = model, x, hf_forward(model, x), hf_attention_probs(model, x)
    return ref


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_square_other_size_matches_hf(hf_128s, hf_128s_320, backend, dtype):
    hf, x, hf_out, hf_probs = hf_128s_320[dtype]
    model = levit_np.from_pretrained(hf_128s[1], backend=backend, dtype=dtype, image_size=320)
    assert model.config.resolutions == ((20, 20), (10, 10), (5, 5))
    out = model(x, output_hidden_states=True, output_attentions=True)
    compare_outputs(out, hf_out, WITH_TEACHER, dtype=dtype)
    assert len(out.attentions) == len(hf_probs) == 11
    for i, (ours, theirs) in enumerate(zip(out.attentions, hf_probs, strict=True)):
        err = rel_err(ours, theirs)
        record(dtype, err, f"attentions[{i}] at 320")
        assert err <= RTOL[dtype], f"attention block {i}: {err:.3g}"
    # the resized tables themselves are torch's, to rounding
    config, params = resize.at_image_size(*load_checkpoint(hf_128s[1], getattr(np, dtype))[::2], 320)
    for (layer, key), w in zip(hf_layer_keys(config), encoder_weights(params), strict=True):
        if layer.kind != "mlp":
            table = hf.get_submodule(f"levit.{key}").attention_biases.detach().numpy()
            assert rel_err(w["attention_biases"], table) <= 32 * np.finfo(dtype).eps, key


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_own_size_changes_nothing_bit_for_bit(hf_128s, backend):
    _, path = hf_128s
    x = random_pixels(2, 224, seed=4)
    ref = levit_np.from_pretrained(path, backend=backend)(x, output_hidden_states=True, output_attentions=True)
    for size in (224, (224, 224), [224, 224]):
        model = levit_np.from_pretrained(path, backend=backend, image_size=size)
        assert model.config.image_size == 224
        out = model(x, output_hidden_states=True, output_attentions=True)
        for name in ("logits", "cls_logits", "distillation_logits", "pooler_output", "last_hidden_state"):
            np.testing.assert_array_equal(getattr(out, name), getattr(ref, name), err_msg=name)
        for a, b in zip(out.hidden_states + out.attentions, ref.hidden_states + ref.attentions, strict=True):
            np.testing.assert_array_equal(a, b)


# --- non-square: transposition, and numba against numpy -----------------------------------------------------------

def transposed_checkpoint(hf, path) -> str:
    """`hf` with the stem's 3x3 kernels and every bias table's two offset axes transposed, saved to `path`."""
    hf = copy.deepcopy(hf)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("convolution.weight"):  # (Cout, Cin, ky, kx) -> (Cout, Cin, kx, ky)
                p.copy_(p.transpose(-1, -2).clone())
            elif name.endswith("attention_biases"):  # (H, R*R) over (|Δrow|, |Δcol|) -> over (|Δcol|, |Δrow|)
                H, n = p.shape
                R = math.isqrt(n)
                p.copy_(p.reshape(H, R, R).transpose(1, 2).reshape(H, n).clone())
    return save_hf(hf, path)


def grid_transposed(tokens, grid):
    """(B, h*w, C) on grid (h, w) -> (B, w*h, C): the token grid transposed."""
    B, _, C = tokens.shape
    return tokens.reshape(B, *grid, C).swapaxes(1, 2).reshape(B, -1, C)


def assert_transposition_property(model, model_t, x, dtype):
    """model on x equals model_t (transposed stem kernels and bias tables, transposed image size) on x transposed:
    the same pooled output and logits, every token grid, feature map and attention map transposed."""
    kw = dict(output_hidden_states=True, output_attentions=True, output_feature_maps=True)
    a, b = model(x, **kw), model_t(np.ascontiguousarray(x.swapaxes(2, 3)), **kw)
    errs = {"pooler_output": rel_err(a.pooler_output, b.pooler_output), "logits": rel_err(a.logits, b.logits)}
    grids = [model.config.resolutions[0]] + [s.downsample[0].resolution_out if s.downsample else None
                                             for s in model.config.plan]
    grids[-1] = grids[-2]  # the last stage does not downsample
    for i, (h, grid) in enumerate(zip(a.hidden_states, grids, strict=True)):
        errs[f"hidden_states[{i}]"] = rel_err(grid_transposed(h, grid), b.hidden_states[i])
    for i, (f, g) in enumerate(zip(a.feature_maps, b.feature_maps, strict=True)):
        errs[f"feature_maps[{i}]"] = rel_err(f.swapaxes(2, 3), g)
    layers_ = [L for stage in model.config.plan for L in stage.layers if L.kind != "mlp"]
    for i, (L, p, q) in enumerate(zip(layers_, a.attentions, b.attentions, strict=True)):
        B, H, Nq, Nk = p.shape
        (qh, qw), (kh, kw_) = L.resolution_out, L.resolution
        p = p.reshape(B, H, qh, qw, kh, kw_).transpose(0, 1, 3, 2, 5, 4).reshape(B, H, Nq, Nk)
        errs[f"attentions[{i}]"] = rel_err(p, q)
    name, worst = max(errs.items(), key=lambda kv: kv[1])
    record(dtype, worst, f"transposed {name}")
    assert worst <= RTOL[dtype], f"transposition property off by {worst:.3g} at {name}"


@pytest.fixture(scope="module")
def transposed_128s(hf_128s, tmp_path_factory):
    return transposed_checkpoint(hf_128s[0], tmp_path_factory.mktemp("transposed"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_transposition_property(hf_128s, transposed_128s, backend, dtype):
    h, w = 160, 288  # grids 10x18 -> 5x9 -> 3x5
    model = levit_np.from_pretrained(hf_128s[1], backend=backend, dtype=dtype, image_size=(h, w))
    model_t = levit_np.from_pretrained(transposed_128s, backend=backend, dtype=dtype, image_size=(w, h))
    assert model.config.resolutions == ((10, 18), (5, 9), (3, 5))
    assert_transposition_property(model, model_t, pixels(2, h, w, dtype), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_numba_matches_numpy_on_odd_grids(hf_128s, dtype):
    h, w = 160, 288  # 10x18 -> 5x9 -> 3x5
    kw = dict(output_hidden_states=True, output_attentions=True, output_feature_maps=True)
    x = pixels(3, h, w, dtype, seed=5)
    ref = levit_np.from_pretrained(hf_128s[1], backend="numpy", dtype=dtype, image_size=(h, w))(x, **kw)
    out = levit_np.from_pretrained(hf_128s[1], backend="numba", dtype=dtype, image_size=(h, w))(x, **kw)
    assert_outputs_close(out, ref, dtype, "numba vs numpy")
    assert [f.shape for f in out.feature_maps] == [(3, 128, 10, 18), (3, 256, 5, 9), (3, 384, 3, 5)]
    assert [a.shape for a in out.attentions][:3] == [(3, 4, 180, 180), (3, 4, 180, 180), (3, 8, 45, 180)]


def assert_outputs_close(out, ref, dtype, what):
    errs = {name: rel_err(getattr(out, name), getattr(ref, name))
            for name in ("logits", "cls_logits", "distillation_logits", "pooler_output", "last_hidden_state")}
    for field in ("hidden_states", "attentions", "feature_maps"):
        for i, (a, b) in enumerate(zip(getattr(out, field), getattr(ref, field), strict=True)):
            errs[f"{field}[{i}]"] = rel_err(a, b)
    name, worst = max(errs.items(), key=lambda kv: kv[1])
    record(dtype, worst, f"{what}: {name}")
    assert worst <= RTOL[dtype], f"{what}: {name} off by {worst:.3g}"


def test_detection_sized_feature_maps(hf_128s):
    # the example: 448 x 800 px -> stage grids 28x50, 14x25, 7x13
    model = levit_np.from_pretrained(hf_128s[1], backend="numba", image_size=(448, 800))
    out = model(pixels(1, 448, 800), output_feature_maps=True)
    assert [f.shape for f in out.feature_maps] == [(1, 128, 28, 50), (1, 256, 14, 25), (1, 384, 7, 13)]
    assert all(f.flags.c_contiguous and f.dtype == np.float32 for f in out.feature_maps)
    np.testing.assert_array_equal(out.feature_maps[2].reshape(1, 384, -1).transpose(0, 2, 1), out.last_hidden_state)
    assert model(pixels(1, 448, 800)).feature_maps is None


@pytest.fixture(scope="module")
def tiny(checkpoint):
    return checkpoint(WITH_TEACHER, num_labels=10, image_size=224, **TINY)  # 14 x 14 bias tables


@pytest.fixture(scope="module")
def tiny_transposed(tiny, tmp_path_factory):
    return transposed_checkpoint(tiny[0], tmp_path_factory.mktemp("tiny-transposed"))


@settings(max_examples=6)
@given(height=st.integers(4, 32).map(lambda k: 16 * k), width=st.integers(4, 32).map(lambda k: 16 * k))
def test_any_height_and_width(tiny, tiny_transposed, height, width):
    x = pixels(2, height, width, seed=height + width)
    numpy_ = levit_np.from_pretrained(tiny[1], backend="numpy", image_size=(height, width))
    numba_ = levit_np.from_pretrained(tiny[1], backend="numba", image_size=(height, width))
    grids = numpy_.config.resolutions
    assert grids[0] == (height // 16, width // 16)
    assert grids[1:] == tuple(((r - 1) // 2 + 1, (c - 1) // 2 + 1) for r, c in grids[:-1])
    kw = dict(output_hidden_states=True, output_attentions=True, output_feature_maps=True)
    ref = numpy_(x, **kw)
    assert [f.shape[2:] for f in ref.feature_maps] == list(grids)
    assert_outputs_close(numba_(x, **kw), ref, "float32", "numba vs numpy")
    transposed = levit_np.from_pretrained(tiny_transposed, backend="numpy", image_size=(width, height))
    assert_transposition_property(numpy_, transposed, x, "float32")


def test_numba_batch_invariance_on_a_non_square_grid(tiny):
    model = levit_np.from_pretrained(tiny[1], backend="numba", image_size=(96, 208))
    x = pixels(7, 96, 208, seed=6)
    batch = model(x, output_hidden_states=True)
    for i in (0, 6):
        alone = model(x[i:i + 1], output_hidden_states=True)
        for a, b in zip([alone.logits, *alone.hidden_states], [batch.logits, *batch.hidden_states], strict=True):
            np.testing.assert_array_equal(a[0], b[i])


# --- bad sizes -----------------------------------------------------------------------------------------------------

BAD_SIZES = [0, -16, 72, (224, 72), (224, 224, 3), (224,), "320", 2048, (1040, 224), True, 224.0, [16.5, 32]]


@pytest.mark.parametrize("size", BAD_SIZES, ids=[repr(s) for s in BAD_SIZES])
def test_bad_image_size_is_a_clear_value_error(tiny, size):
    with pytest.raises(ValueError, match="image_size") as info:
        levit_np.from_pretrained(tiny[1], backend="numpy", image_size=size)
    assert str(size) in str(info.value)  # names the value


def test_bad_image_size_fails_before_loading(tmp_path):
    with pytest.raises(ValueError, match="image_size"):  # the directory does not even exist
        levit_np.from_pretrained(tmp_path / "nothing", image_size=(224, 224, 3))


@pytest.mark.parametrize("text", ["0", "72", "224x", "x224", "224x384x3", "-16", "abc", "224*384", "2²4", "1040",
                                  "", "224x72"])
def test_bad_image_size_on_the_command_line(tiny, text, capsys):
    with pytest.raises(argparse.ArgumentTypeError):
        image_size_arg(text)
    with pytest.raises(SystemExit) as info:
        main(["info", tiny[1], f"--image-size={text}"])
    assert info.value.code == 2 and "--image-size" in capsys.readouterr().err


# --- preprocessing, predict, the command line ----------------------------------------------------------------------

def test_resize_to_cover_is_hfs_rule_for_a_square():
    for height, width in [(300, 451), (451, 300), (224, 224), (1, 500), (500, 1), (257, 256), (37, 1000)]:
        assert resize_to_cover(height, width, (256, 256)) == resize_shape(height, width, 256)
    assert resize_to_cover(300, 451, (512, 914)) == (607, 914)  # the width binds: 914 / 451 > 512 / 300
    assert resize_to_cover(300, 900, (256, 438)) == (256, 768)  # the height binds


@pytest.mark.parametrize("shape,size", [((300, 900), (224, 384)), ((900, 300), (384, 224)), ((120, 640), (64, 160))])
def test_preprocess_non_square_matches_hf_where_its_rule_applies(shape, size):
    # an image wider (taller) than the crop's aspect: the short side binds, so HF's processor with shortest_edge =
    # the crop's short side and a (height, width) crop computes the same thing, bit for bit
    image = np.random.default_rng(7).integers(0, 256, (*shape, 3), dtype=np.uint8)
    h, w = size
    processor = LevitImageProcessorPil(size={"shortest_edge": min(h, w)}, crop_size={"height": h, "width": w})
    ref = processor(Image.fromarray(image), return_tensors="np")["pixel_values"]
    ours = levit_np.preprocess(image, image_size=size)
    assert ours.shape == (1, 3, h, w)
    np.testing.assert_array_equal(ours, ref)


def test_preprocess_square_pair_is_the_integer():
    image = np.random.default_rng(8).integers(0, 256, (300, 451, 3), dtype=np.uint8)
    np.testing.assert_array_equal(levit_np.preprocess(image, image_size=(160, 160)),
                                  levit_np.preprocess(image, image_size=160))
    assert levit_np.preprocess(image, image_size=(448, 800)).shape == (1, 3, 448, 800)  # the long side binds
    for bad in [(224, 0), (224, 224, 3), (224.0, 224), "224"]:
        with pytest.raises(ValueError, match="image_size"):
            levit_np.preprocess(image, image_size=bad)


def test_predict_at_another_size(tiny):
    image = np.random.default_rng(9).integers(0, 256, (200, 500, 3), dtype=np.uint8)
    preds = levit_np.predict(image, model=tiny[1], image_size=(96, 224), top_k=3, backend="numpy")
    model = levit_np.from_pretrained(tiny[1], backend="numpy", image_size=(96, 224))
    logits = model(levit_np.preprocess(image, image_size=(96, 224))).logits[0].astype(np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    assert [label for label, _ in preds] == [model.config.id2label[int(i)] for i in np.argsort(-p)[:3]]
    np.testing.assert_allclose([q for _, q in preds], np.sort(p)[::-1][:3], rtol=1e-12)
    assert levit_np.predict(image, model=model, image_size=(96, 224), top_k=3) == preds  # a loaded model: the same
    with pytest.raises(ValueError, match="image_size"):  # a loaded model at another size is not resized silently
        levit_np.predict(image, model=model, image_size=224)
    with pytest.raises(ValueError, match="image_size"):
        levit_np.predict(image, model=tiny[1], image_size=(96, 100))


def test_command_line_image_size(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(10).integers(0, 256, (100, 300, 3), dtype=np.uint8)).save(path)
    assert main(["predict", str(path), "--model", tiny[1], "--image-size", "64x160", "--json", "--top-k", "2"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["predictions"] == [{"label": label, "probability": p} for label, p in
                                   levit_np.predict(str(path), model=tiny[1], image_size=(64, 160), top_k=2)]
    assert main(["info", tiny[1], "--image-size", "448x800", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["image_size"] == [448, 800] and info["token_grids"] == [[28, 50], [14, 25], [7, 13]]
    assert main(["info", tiny[1]]) == 0
    text = capsys.readouterr().out
    assert "224x224 (short side resized to 256, center crop 224x224); token grids 14x14 -> 7x7 -> 4x4" in text
    assert main(["info", tiny[1], "--image-size", "448x800"]) == 0
    assert "448x800 (resized to cover 512x914, center crop 448x800); token grids 28x50 -> 14x25 -> 7x13" in \
        capsys.readouterr().out


def test_a_resized_model_pickles(tiny):
    import pickle

    model = levit_np.from_pretrained(tiny[1], backend="numpy", image_size=(64, 160))
    x = pixels(1, 64, 160)
    clone = pickle.loads(pickle.dumps(model))
    assert clone.config.image_size == (64, 160)
    np.testing.assert_array_equal(clone(x).logits, model(x).logits)


def test_a_non_square_checkpoint_round_trips(tiny, tmp_path):
    # a checkpoint saved at (64, 160): its config.json holds [64, 160] and its tables are (H, 4*10); it loads as is,
    # equal to the 224 checkpoint loaded at (64, 160), and can be resized again
    import shutil

    from safetensors.numpy import load_file, save_file

    model = levit_np.from_pretrained(tiny[1], backend="numpy", image_size=(64, 160))
    config, params = resize.at_image_size(*load_checkpoint(tiny[1])[::2], (64, 160))
    shutil.copytree(tiny[1], tmp_path / "wide")
    config_json = json.loads((tmp_path / "wide" / "config.json").read_text())
    config_json["image_size"] = [64, 160]
    (tmp_path / "wide" / "config.json").write_text(json.dumps(config_json))
    tensors = load_file(tmp_path / "wide" / "model.safetensors")
    for (layer, key), w in zip(hf_layer_keys(config), encoder_weights(params), strict=True):
        if layer.kind != "mlp":
            tensors[f"levit.{key}.attention_biases"] = w["attention_biases"]
    save_file(tensors, tmp_path / "wide" / "model.safetensors")
    wide = levit_np.from_pretrained(tmp_path / "wide", backend="numpy")
    assert wide.config.image_size == (64, 160)
    x = pixels(2, 64, 160)
    np.testing.assert_array_equal(wide(x).logits, model(x).logits)
    assert levit_np.from_pretrained(tmp_path / "wide", backend="numpy", image_size=96)(pixels(1, 96, 96)).logits.shape \
        == (1, 10)
