"""The released facebook/levit-128S checkpoint on the COCO cats photo: HF's own integration-test numbers.

Runs when the real weights are present without downloading (weights/levit-128S/, $LEVIT_NP_WEIGHTS/levit-128S/ or
the Hugging Face cache); skipped, saying how to get them, otherwise.
"""

from pathlib import Path

import numpy as np
import pytest

import levit_np
from helpers import RTOL, rel_err
from levit_np import hub

CATS = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_000000039769_cats.png"  # <repo>/../shared
# transformers tests/models/levit/test_modeling_levit.py, test_inference_image_classification_head: the same image
# through LevitImageProcessor and LevitForImageClassificationWithTeacher("facebook/levit-128S").
HF_EXPECTED_LOGITS = [1.0448, -0.3745, -1.8317]
# HF's numbers are printed to 4 decimals (rounding: up to 5e-5), and the float32 forward pass differs from the one
# that produced them by ~1e-6 relative (BLAS); 2e-4 covers both with margin while any real error is far larger.
ATOL = 2e-4


@pytest.fixture(scope="module")
def weights():
    if not CATS.is_file():
        pytest.skip(f"test image {CATS} not found")
    try:
        return hub.resolve("facebook/levit-128S", download=False)
    except hub.WeightsNotFoundError:
        pytest.skip("real facebook/levit-128S weights not present (not in weights/levit-128S/ nor in the Hugging Face "
                    "cache); get them with `python weights/fetch.py 128S` or `levit-np fetch 128S`")


def test_logits_match_hf_expectation(weights):
    model = levit_np.from_pretrained(weights)
    logits = model(levit_np.preprocess(CATS)).logits
    assert logits.shape == (1, 1000)
    np.testing.assert_allclose(logits[0, :3], HF_EXPECTED_LOGITS, rtol=0, atol=ATOL)


def test_top1_is_tabby_cat(weights):
    predictions = levit_np.predict(CATS, model=weights)
    assert predictions[0][0] == "tabby, tabby cat"
    assert len(predictions) == 5 and predictions[0][1] > predictions[1][1]


def test_all_logits_match_hf_on_real_weights(weights):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf_model = transformers.LevitForImageClassificationWithTeacher.from_pretrained(str(weights)).eval()
    pixels = levit_np.preprocess(CATS)
    with torch.no_grad():
        ref = hf_model(torch.from_numpy(pixels)).logits.numpy()
    ours = levit_np.from_pretrained(weights)(pixels).logits
    assert rel_err(ours, ref) <= RTOL["float32"]
