"""Each reference layer in levit_np/layers.py against its torch.nn.functional op or HF LeViT submodule.

Float64 throughout where the comparison is against an HF module: it isolates the algorithm from BLAS rounding, so
the tolerance can be 1e-12 relative; the float32 behaviour of the whole model is covered by test_parity.py.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers.models.levit import modeling_levit as hf

from helpers import randomize_
from levit_np import layers
from levit_np.checkpoint import _nest

RTOL64 = 1e-12


def to_np(t):
    return t.detach().numpy()


def params_of(module):
    """A HF submodule's state_dict as the nested dict our layer functions take (without buffers we rebuild)."""
    sd = {k: to_np(v) for k, v in module.state_dict().items() if not k.endswith(("num_batches_tracked", "idxs"))}
    return _nest(sd)


def assert_close(ours, ref, rtol=RTOL64):
    ref = to_np(ref) if isinstance(ref, torch.Tensor) else ref
    assert ours.shape == ref.shape
    err = np.abs(ours - ref).max() / max(1.0, np.abs(ref).max())
    assert err <= rtol, f"relative error {err:.3g} > {rtol:g}"


def rand(*shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def hf_module(module, seed=0):
    randomize_(module, seed)
    module.double()
    module.eval()  # not chained: HF's LevitAttention.train() returns None
    return module


# --- elementwise ------------------------------------------------------------------------------------------------

def test_hardswish_is_bit_identical_to_torch_in_float32():
    x = np.concatenate([np.linspace(-5, 5, 10001, dtype=np.float32), rand(10000, dtype=np.float32) * 4])
    np.testing.assert_array_equal(layers.hardswish(x), to_np(F.hardswish(torch.from_numpy(x))))


@pytest.mark.parametrize("scale", [1.0, 100.0])  # 100: exp would overflow without the max subtraction
def test_softmax(scale):
    x = rand(3, 5, 17) * scale
    assert_close(layers.softmax(x), torch.softmax(torch.from_numpy(x), -1))


@pytest.mark.parametrize("shape,axis", [((4, 6, 5, 3), 1), ((4, 7, 6), -1), ((5, 6), -1)])
def test_batchnorm_eval(shape, axis):
    x, C = rand(*shape), shape[axis]
    w, b, mean = rand(C, seed=1), rand(C, seed=2), rand(C, seed=3)
    var = np.abs(rand(C, seed=4)) + 0.1
    t = [torch.from_numpy(a) for a in (mean, var, w, b)]
    xt = torch.from_numpy(np.moveaxis(x, axis, 1).copy())  # torch normalises channel axis 1
    ref = np.moveaxis(to_np(F.batch_norm(xt, *t, training=False, eps=1e-5)), 1, axis)
    assert_close(layers.batchnorm(x, w, b, mean, var, axis=axis), ref)


# --- convolution ------------------------------------------------------------------------------------------------

CONV_CASES = [(size, *geometry) for size in (224, 17, 10, 7, 2, 1)
              for geometry in [(2, 1, 3), (1, 1, 3), (2, 0, 3), (3, 2, 5)] if size + 2 * geometry[1] >= geometry[2]]


@pytest.mark.parametrize("size,stride,padding,k", CONV_CASES)
def test_conv2d(size, stride, padding, k):
    x, w = rand(2, 3, size, size), rand(5, 3, k, k, seed=1)
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=stride, padding=padding)
    assert_close(layers.conv2d(x, w, stride, padding), ref)


def test_conv_bn_matches_hf_conv_embeddings():
    m = hf_module(hf.LevitConvEmbeddings(6, 10, 3, 2, 1))
    x = rand(2, 6, 28, 28)
    assert_close(layers.conv_bn(x, **params_of(m)), m(torch.from_numpy(x)))


@pytest.mark.parametrize("image_size", [224, 160, 64])
def test_patch_embeddings_match_hf(image_size):
    from transformers import LevitConfig
    m = hf_module(hf.LevitPatchEmbeddings(LevitConfig(hidden_sizes=[32, 48, 64], image_size=image_size)))
    x = rand(2, 3, image_size, image_size)
    assert_close(layers.patch_embeddings(x, **params_of(m)), m(torch.from_numpy(x)))


# --- the transformer blocks -------------------------------------------------------------------------------------

def test_linear_bn_matches_hf_mlp_layer_with_bn():
    m = hf_module(hf.MLPLayerWithBN(24, 40))
    x = rand(3, 49, 24)
    assert_close(layers.linear_bn(x, **params_of(m)), m(torch.from_numpy(x)))


@pytest.mark.parametrize("resolution,stride", [(14, 1), (7, 1), (4, 1), (10, 1), (14, 2), (10, 2), (7, 2), (5, 2),
                                               (9, 3)])
def test_attention_bias_idxs_match_hf_buffers(resolution, stride):
    if stride == 1:
        m = hf.LevitAttention(16, 4, 2, 2, resolution)
        ours = layers.attention_bias_idxs(resolution)
    else:
        r_out = (resolution - 1) // stride + 1
        m = hf.LevitAttentionSubsample(16, 32, 4, 2, 4, stride, resolution, r_out)
        ours = layers.attention_bias_idxs(resolution, r_out, stride)
    np.testing.assert_array_equal(ours, to_np(m.attention_bias_idxs))
    assert ours.max() < m.attention_biases.shape[1] == resolution**2


@pytest.mark.parametrize("C,H,kd,ar,R", [(32, 4, 8, 2, 7), (24, 3, 16, 4, 10), (16, 2, 4, 1, 4), (8, 1, 8, 3, 3)])
def test_attention_matches_hf(C, H, kd, ar, R):
    m = hf_module(hf.LevitAttention(C, kd, H, ar, R))
    x = rand(2, R * R, C)
    out, probs = layers.attention(x, **params_of(m), attention_bias_idxs=layers.attention_bias_idxs(R),
                                  num_attention_heads=H, key_dim=kd, attention_ratio=ar, output_attentions=True)
    assert_close(out, m(torch.from_numpy(x)))
    assert probs.shape == (2, H, R * R, R * R)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("R,stride", [(14, 2), (10, 2), (7, 2), (5, 2), (4, 2), (9, 3)])
def test_attention_subsample_matches_hf(R, stride):
    C, C2, kd, H, ar = 16, 24, 4, 4, 4
    r_out = (R - 1) // stride + 1
    m = hf_module(hf.LevitAttentionSubsample(C, C2, kd, H, ar, stride, R, r_out))
    x = rand(2, R * R, C)
    out, probs = layers.attention_subsample(
        x, **params_of(m), attention_bias_idxs=layers.attention_bias_idxs(R, r_out, stride), num_attention_heads=H,
        key_dim=kd, attention_ratio=ar, stride=stride, resolution=R, output_attentions=True)
    assert_close(out, m(torch.from_numpy(x)))
    assert out.shape == (2, r_out**2, C2) and probs.shape == (2, H, r_out**2, R * R)


def test_attention_returns_no_probabilities_unless_asked():
    m = hf_module(hf.LevitAttention(8, 4, 2, 2, 3))
    _, probs = layers.attention(rand(1, 9, 8), **params_of(m), attention_bias_idxs=layers.attention_bias_idxs(3),
                                num_attention_heads=2, key_dim=4, attention_ratio=2)
    assert probs is None


def test_mlp_matches_hf():
    m = hf_module(hf.LevitMLPLayer(24, 48))
    x = rand(2, 16, 24)
    assert_close(layers.mlp(x, **params_of(m)), m(torch.from_numpy(x)))


def test_classification_layer_matches_hf():
    m = hf_module(hf.LevitClassificationLayer(24, 7))
    x = rand(3, 24)
    assert_close(layers.classification_layer(x, **params_of(m)), m(torch.from_numpy(x)))
