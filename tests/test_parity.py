"""End-to-end parity with HF Transformers: every released variant, every model class, both batch regimes, every
backend, float32 and float64; then hypothesis-drawn configs. Each HF model has every parameter and buffer randomised
(see helpers.randomize_) and goes through save_pretrained -> levit_np.from_pretrained."""

import tempfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import levit_np
from helpers import ALL_BACKENDS, CLASSES, HF_VARIANTS, build_hf, compare_outputs, hf_forward, random_pixels, save_hf


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("cls_name", CLASSES)
@pytest.mark.parametrize("variant", list(HF_VARIANTS))
def test_released_variants_match_hf(checkpoint, variant, cls_name, backend):
    hf, path = checkpoint(cls_name, **HF_VARIANTS[variant])
    model = levit_np.from_pretrained(path, backend=backend)
    assert model.architecture == cls_name
    for batch in (1, 3):
        x = random_pixels(batch, seed=batch)
        compare_outputs(model(x, output_hidden_states=True), hf_forward(hf, x), cls_name)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("variant", ["128S", "256"])
def test_float64_is_exact(checkpoint, variant, backend):
    """In float64 the algorithm matches HF's to rounding: proves the arithmetic, not just the approximation."""
    cls_name = "LevitForImageClassificationWithTeacher"
    hf, path = checkpoint(cls_name, **HF_VARIANTS[variant])
    model = levit_np.from_pretrained(path, backend=backend, dtype="float64")
    x = random_pixels(2).astype(np.float64)
    out = model(x, output_hidden_states=True)
    assert out.logits.dtype == np.float64 and all(h.dtype == np.float64 for h in out.hidden_states)
    compare_outputs(out, hf_forward(hf, x), cls_name, dtype="float64")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_hidden_states_shapes_like_hf(checkpoint, backend):
    hf, path = checkpoint("LevitModel", **HF_VARIANTS["128S"])
    out = levit_np.from_pretrained(path, backend=backend)(random_pixels(2), output_hidden_states=True)
    ref = hf_forward(hf, random_pixels(2))
    assert [h.shape for h in out.hidden_states] == [tuple(h.shape) for h in ref.hidden_states]
    assert [h.shape for h in out.hidden_states] == [(2, 196, 128), (2, 49, 256), (2, 16, 384), (2, 16, 384)]
    assert levit_np.from_pretrained(path, backend=backend)(random_pixels(1)).hidden_states is None


# --- property tests: any valid config, any input ------------------------------------------------------------------

@st.composite
def levit_configs(draw):
    """Small random LeViT configs HF accepts: 3 stages, 64-160 px, every ratio and depth including 0 MLPs."""
    key_dim = draw(st.lists(st.integers(2, 12), min_size=3, max_size=3))
    # the subsamples use key_dim[0] and hidden_sizes[s] // key_dim[0] heads: keep that >= 1
    hidden = [draw(st.integers(1, 4)) * 8, *draw(st.lists(st.integers(key_dim[0], 48), min_size=2, max_size=2))]
    hidden[0] = max(hidden[0], key_dim[0])
    return dict(
        hidden_sizes=hidden,
        num_attention_heads=draw(st.lists(st.integers(1, 4), min_size=3, max_size=3)),
        depths=draw(st.lists(st.integers(0, 2), min_size=3, max_size=3)),
        key_dim=key_dim,
        mlp_ratio=draw(st.lists(st.integers(0, 3), min_size=3, max_size=3)),
        attention_ratio=draw(st.lists(st.integers(1, 3), min_size=3, max_size=3)),
        image_size=16 * draw(st.integers(4, 10)),
    )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@given(config=levit_configs(), cls_name=st.sampled_from(CLASSES), batch=st.integers(1, 3),
       num_labels=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_random_configs_match_hf(backend, config, cls_name, batch, num_labels, seed):
    hf = build_hf(cls_name, seed=seed, num_labels=num_labels, **config)
    with tempfile.TemporaryDirectory() as tmp:
        model = levit_np.from_pretrained(save_hf(hf, tmp), backend=backend)
    assert model.config.resolutions[0] == (config["image_size"] // 16,) * 2
    x = random_pixels(batch, config["image_size"], seed=seed)
    compare_outputs(model(x, output_hidden_states=True), hf_forward(hf, x), cls_name)



@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("cls_name", CLASSES[1:])
def test_zero_labels_is_an_identity_head_like_hf(checkpoint, backend, cls_name):
    """num_labels=0: HF's classifier is an nn.Identity (no weights), so the logits are the pooled features."""
    hf, path = checkpoint(cls_name, num_labels=0, hidden_sizes=[16, 24, 32], num_attention_heads=[1, 2, 2],
                          depths=[1, 1, 1], key_dim=[8, 8, 8], image_size=64)
    x = random_pixels(2, 64)
    compare_outputs(levit_np.from_pretrained(path, backend=backend)(x, output_hidden_states=True), hf_forward(hf, x),
                    cls_name)
