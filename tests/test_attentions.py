"""`output_attentions=True` (which HF's LeViT does not offer): every block's softmax probabilities, checked against
the probabilities recomputed in torch from HF's own submodules, on the input each HF attention block really saw."""

import copy

import pytest
import torch
from transformers.models.levit.modeling_levit import LevitAttention, LevitAttentionSubsample

import levit_np
from helpers import ALL_BACKENDS, HF_VARIANTS, RTOL, random_pixels, rel_err


@torch.no_grad()
def hf_attention_probs(hf, x):
    """(B, H, Nq, Nk) softmax of every HF attention block, in forward order, via forward hooks on their inputs."""
    probs = []

    def hook(module, inputs, _):
        h = inputs[0]
        B, N, _ = h.shape
        H, kd = module.num_attention_heads, module.key_dim
        if isinstance(module, LevitAttention):
            q, k, _ = module.queries_keys_values(h).view(B, N, H, -1).split([kd, kd, module.attention_ratio * kd], 3)
        else:
            k, _ = module.keys_values(h).view(B, N, H, -1).split([kd, module.attention_ratio * kd], 3)
            q = module.queries(module.queries_subsample(h)).view(B, -1, H, kd)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        bias = module.attention_biases[:, module.attention_bias_idxs]
        probs.append(torch.softmax(q @ k.transpose(-1, -2) * module.scale + bias, dim=-1).numpy())

    handles = [m.register_forward_hook(hook) for m in hf.modules()
               if isinstance(m, (LevitAttention, LevitAttentionSubsample))]
    try:
        hf(torch.from_numpy(x))
    finally:
        for h in handles:
            h.remove()
    return probs


# float64 proves the probabilities are computed exactly as HF's blocks compute them. In float32 the deep blocks'
# scores are large (random weights) and the softmax amplifies the ~1e-6 rounding the inputs already carry: measured
# up to 3e-4 on a random LeViT-192 at 160 px, so float32 is bounded on 128S only, at the suite's 1e-4.
@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("variant,image_size,dtype", [("128S", 224, "float64"), ("192", 160, "float64"),
                                                      ("128S", 224, "float32")])
def test_attentions_match_hf_softmax(checkpoint, backend, variant, image_size, dtype):
    hf, path = checkpoint("LevitForImageClassificationWithTeacher", image_size=image_size, **HF_VARIANTS[variant])
    x = random_pixels(2, image_size).astype(dtype)
    out = levit_np.from_pretrained(path, backend=backend, dtype=dtype)(x, output_attentions=True)
    ref = hf_attention_probs(copy.deepcopy(hf).to(torch.float64) if dtype == "float64" else hf, x)
    depths = HF_VARIANTS[variant]["depths"]
    assert len(out.attentions) == len(ref) == sum(depths) + 2  # every residual attention + the two subsamples
    for i, (ours, theirs) in enumerate(zip(out.attentions, ref, strict=True)):
        assert ours.shape == theirs.shape, i
        assert rel_err(ours, theirs) <= RTOL[dtype], f"attention block {i}"
    assert out.attentions[0].shape == (2, HF_VARIANTS[variant]["num_attention_heads"][0],
                                       (image_size // 16) ** 2, (image_size // 16) ** 2)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_attentions_are_none_unless_asked(checkpoint, backend):
    _, path = checkpoint("LevitModel", hidden_sizes=[16, 24, 32], num_attention_heads=[1, 2, 2], depths=[1, 1, 1],
                         key_dim=[8, 8, 8], image_size=64)
    model = levit_np.from_pretrained(path, backend=backend)
    assert model(random_pixels(1, 64)).attentions is None
