"""levit_np.predict: labels and probabilities against HF (its processor + its model on a randomised checkpoint),
batching, model caching, and every kind of bad input.
"""


import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LevitImageProcessorPil

import levit_np
from helpers import RTOL, SMALL
from levit_np.app import prediction as predict_module

# A small model (64 px, 10 labels) so that each test runs in milliseconds; predict must follow its image_size.
NUM_LABELS = 10


@pytest.fixture(autouse=True)
def fresh_model_cache():
    predict_module.clear_model_cache()
    yield
    predict_module.clear_model_cache()


def images(n=3):
    rng = np.random.default_rng(42)
    return [rng.integers(0, 256, (60 + 13 * i, 90 - 7 * i, 3), dtype=np.uint8) for i in range(n)]


@torch.no_grad()
def hf_probabilities(hf_model, arrays, size=64) -> np.ndarray:
    """Independent reference: HF's PIL processor, HF's model, torch softmax in float64. (B, num_labels)."""
    processor = LevitImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    pixels = processor(images=[Image.fromarray(a) for a in arrays], return_tensors="pt")["pixel_values"]
    return torch.softmax(hf_model(pixels).logits.double(), dim=-1).numpy()


def assert_matches(predictions, probs, top_k):
    """predictions: [(label, p)] sorted; probs: the reference (num_labels,) probabilities."""
    assert len(predictions) == top_k
    labels = [f"LABEL_{i}" for i in range(len(probs))]
    ours = np.array([p for _, p in predictions])
    assert np.all(np.diff(ours) <= 0), "not sorted by probability"
    ref = np.array([probs[labels.index(label)] for label, _ in predictions])
    # probabilities are in [0, 1]: the float32 logit tolerance RTOL (relative to |logits| <= O(10)) bounds them
    np.testing.assert_allclose(ours, ref, rtol=0, atol=RTOL["float32"])
    # and they are the reference's top_k, up to near-ties at the cut
    kth = np.sort(probs)[::-1][top_k - 1]
    assert all(p >= kth - RTOL["float32"] for p in ref)


def test_single_image_matches_hf(small_hf):
    hf_model, path = small_hf
    a = images(1)[0]
    predictions = levit_np.predict(a, model=path)
    assert isinstance(predictions, list) and all(isinstance(lab, str) and isinstance(p, float)
                                                 for lab, p in predictions)
    assert_matches(predictions, hf_probabilities(hf_model, [a])[0], top_k=5)


def test_list_of_mixed_inputs_matches_hf(small_hf, tmp_path):
    hf_model, path = small_hf
    arrays = images(3)
    Image.fromarray(arrays[0]).save(tmp_path / "a.png")
    inputs = [str(tmp_path / "a.png"), Image.fromarray(arrays[1]), arrays[2]]
    results = levit_np.predict(inputs, model=path, top_k=3)
    assert len(results) == 3
    for predictions, probs in zip(results, hf_probabilities(hf_model, arrays), strict=True):
        assert_matches(predictions, probs, top_k=3)


def test_probabilities_are_the_softmax_of_our_logits(small):
    # tight check of predict's own plumbing: softmax computed here, in float64, from model(preprocess(x)).logits
    path = small
    arrays = images(3)
    model = levit_np.from_pretrained(path)
    logits = model(levit_np.preprocess(arrays, image_size=64)).logits.astype(np.float64)  # (3, 10)
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    for predictions, row in zip(levit_np.predict(arrays, model=model, top_k=NUM_LABELS), expected, strict=True):
        order = np.argsort(-row, kind="stable")
        assert [label for label, _ in predictions] == [model.config.id2label[i] for i in order]
        np.testing.assert_allclose([p for _, p in predictions], row[order], rtol=1e-12, atol=0)
        assert abs(sum(p for _, p in predictions) - 1) < 1e-12


def test_batch_array_and_empty_list(small):
    path = small
    batch = np.stack([a[:50, :50] for a in images(2)])  # (2, 50, 50, 3) uint8
    results = levit_np.predict(batch, model=path)
    assert len(results) == 2 and all(len(r) == 5 for r in results)
    assert levit_np.predict([], model=path) == []


def test_batches_bound_memory(small, monkeypatch):
    path = small
    model = levit_np.from_pretrained(path)
    seen = []
    call = levit_np.Levit.__call__

    def spy(self, pixel_values, **kw):
        seen.append(pixel_values.shape[0])
        return call(self, pixel_values, **kw)

    monkeypatch.setattr(levit_np.Levit, "__call__", spy)
    arrays = images(5)
    chunked = levit_np.predict(arrays, model=model, batch_size=2)
    assert seen == [2, 2, 1]
    whole = levit_np.predict(arrays, model=model, batch_size=32)
    assert seen[3:] == [5]
    # BLAS may round differently with another batch size: the same labels, probabilities within float32 noise
    for a, b in zip(chunked, whole, strict=True):
        assert [label for label, _ in a] == [label for label, _ in b]
        np.testing.assert_allclose([p for _, p in a], [p for _, p in b], rtol=0, atol=1e-6)


def test_models_are_cached(small, monkeypatch):
    path = small
    calls = []
    load = predict_module.from_pretrained
    monkeypatch.setattr(predict_module, "from_pretrained", lambda *a, **kw: calls.append(a) or load(*a, **kw))
    a = images(1)[0]
    first = levit_np.predict(a, model=path)
    assert levit_np.predict(a, model=path) == first
    assert levit_np.predict([a], model=path, top_k=2) == [first[:2]]
    assert len(calls) == 1
    levit_np.predict(a, model=path, backend="numpy")  # another backend argument is another model
    assert len(calls) == 2


def test_loaded_model_and_backend(small):
    path = small
    model = levit_np.from_pretrained(path, backend="numpy")
    a = images(1)[0]
    assert levit_np.predict(a, model=model) == levit_np.predict(a, model=path, backend="numpy")
    others = sorted(set(levit_np.model.BACKENDS) - {"numpy"})
    if others:
        with pytest.raises(ValueError, match="already loaded"):
            levit_np.predict(a, model=model, backend=others[0])
    with pytest.raises(ValueError, match="unknown backend"):
        levit_np.predict(a, model=path, backend="no-such-backend")


@pytest.mark.parametrize("cls", ["LevitForImageClassification", "LevitForImageClassificationWithTeacher"])
def test_both_classification_heads(checkpoint, cls):
    hf_model, path = checkpoint(cls, seed=4, num_labels=NUM_LABELS, **SMALL)
    a = images(1)[0]
    assert_matches(levit_np.predict(a, model=path, top_k=4), hf_probabilities(hf_model, [a])[0], top_k=4)


def test_top_k(small):
    path = small
    a = images(1)[0]
    assert len(levit_np.predict(a, model=path, top_k=1)) == 1
    everything = levit_np.predict(a, model=path, top_k=100)  # more than there are labels: all of them
    assert len(everything) == NUM_LABELS and sorted(lab for lab, _ in everything) == sorted(
        f"LABEL_{i}" for i in range(NUM_LABELS))


@pytest.mark.parametrize("top_k", [0, -1, 2.5, True, "5"])
def test_bad_top_k(small, top_k):
    with pytest.raises(ValueError, match="top_k"):
        levit_np.predict(images(1)[0], model=small, top_k=top_k)


def test_bare_levit_model_refused(checkpoint):
    _, path = checkpoint("LevitModel", seed=5, **SMALL)
    with pytest.raises(ValueError, match="no classification head"):
        levit_np.predict(images(1)[0], model=path)


@pytest.mark.parametrize("model", [None, 3, np.zeros(3)], ids=["None", "int", "array"])
def test_bad_model_argument(model):
    with pytest.raises(ValueError, match="model must be"):
        levit_np.predict(images(1)[0], model=model)


# ---- bad input: a clear error naming the image, before the model is even loaded ----

def test_missing_file_named_before_model_load(tmp_path):
    missing = tmp_path / "missing.jpg"
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        levit_np.predict(str(missing), model=str(tmp_path / "no-model"))  # the image fails first


def test_not_an_image_file(small, tmp_path):
    path = tmp_path / "fake.png"
    path.write_bytes(b"GIF89a but not really")
    with pytest.raises(OSError, match=r"image 1 \(.*fake.png\): not an image file"):
        levit_np.predict([images(1)[0], str(path)], model=small)


def test_empty_image(small):
    with pytest.raises(ValueError, match=r"image 1 .*empty"):
        levit_np.predict([images(1)[0], np.zeros((0, 4, 3), np.uint8)], model=small)


def test_wrong_dtype_array(small):
    with pytest.raises(ValueError, match=r"image 0 \(array of shape \(8, 8, 3\) and dtype float64\).*uint8"):
        levit_np.predict([np.zeros((8, 8, 3))], model=small)


def test_missing_model_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-model"):
        levit_np.predict(images(1)[0], model=tmp_path / "no-model")
