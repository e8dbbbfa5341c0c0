"""levit_np.preprocess against HF's LevitImageProcessor, PIL backend: equal bit for bit (assert_array_equal).

Reference: `transformers.LevitImageProcessorPil`. In transformers 5, `LevitImageProcessor` is the torchvision backend
when torchvision is installed (it differs from Pillow's bicubic by +-1 in uint8, so it is no reference) and falls back
to this PIL class otherwise; the PIL class is the one HF's own LeViT integration numbers come from.
"""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers import LevitImageProcessorPil

import levit_np

CATS = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_000000039769_cats.png"  # <repo>/../shared
needs_cats = pytest.mark.skipif(not CATS.is_file(), reason=f"test image {CATS} not found")

HF = LevitImageProcessorPil()  # defaults: shortest_edge 224 (-> 256), crop 224, bicubic, ImageNet mean/std
HF_RGB = LevitImageProcessorPil(do_convert_rgb=True)  # the same, converting to RGB first (alpha onto white)


def hf(images, processor=HF) -> np.ndarray:
    return processor(images=images, return_tensors="np")["pixel_values"]


def random_image(height, width, channels=3, seed=0) -> np.ndarray:
    shape = (height, width) if channels is None else (height, width, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def assert_same(ours, ref):
    assert ours.dtype == np.float32 and ref.dtype == np.float32
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)  # bit for bit: max |difference| is exactly 0


@needs_cats
def test_cats_photo_bit_exact():
    ours = levit_np.preprocess(str(CATS))
    assert ours.shape == (1, 3, 224, 224)
    assert_same(ours, hf(str(CATS)))  # HF loads the path itself (load_image: EXIF + RGB)
    assert_same(ours, hf(Image.open(CATS)))
    assert_same(levit_np.preprocess(CATS), ours)  # a Path works like a str


@needs_cats
@pytest.mark.parametrize("k", [1, 2, 3])
def test_cats_rotated(k):
    a = np.rot90(np.asarray(Image.open(CATS).convert("RGB")), k)  # k odd: 480 x 640 portrait; a strided view
    assert_same(levit_np.preprocess(a), hf(Image.fromarray(np.ascontiguousarray(a))))


@needs_cats
def test_exif_orientation_applied_as_hf(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.open(CATS).convert("RGB").save(path, exif=exif, quality=90)
    ours = levit_np.preprocess(str(path))
    assert_same(ours, hf(str(path)))  # HF's load_image applies exif_transpose too
    raw = levit_np.preprocess(Image.open(path))  # a PIL image is taken as is (HF does the same)
    assert_same(raw, hf(Image.open(path)))
    assert not np.array_equal(ours, raw)  # so the orientation really was applied


@pytest.mark.parametrize("height, width", [(224, 224), (256, 256), (223, 225), (225, 223), (257, 255), (300, 1000),
                                           (1001, 333), (500, 7), (7, 500), (123, 301)])
def test_odd_sizes(height, width):
    a = random_image(height, width, seed=height * 7919 + width)
    assert_same(levit_np.preprocess(a), hf(Image.fromarray(a)))


@pytest.mark.parametrize("height, width", [(1, 1), (1, 2), (2, 1), (3, 5), (16, 16), (100, 150), (200, 199)])
def test_tiny_images_are_upscaled(height, width):
    a = random_image(height, width, seed=height * 31 + width)
    ours = levit_np.preprocess(a)
    assert ours.shape == (1, 3, 224, 224)
    assert_same(ours, hf(Image.fromarray(a)))


@settings(max_examples=25)
@given(height=st.integers(1, 600), width=st.integers(1, 600), seed=st.integers(0, 2**16))
def test_any_size(height, width, seed):
    a = random_image(height, width, seed=seed)
    assert_same(levit_np.preprocess(a), hf(Image.fromarray(a)))


@needs_cats
@pytest.mark.parametrize("size", [64, 96, 160, 256])
def test_image_size_from_config(size):
    # a model with config.image_size S: HF's processor configured with shortest_edge S (resized to int(S*256/224))
    # and crop S
    processor = LevitImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    ours = levit_np.preprocess(str(CATS), image_size=size)
    assert ours.shape == (1, 3, size, size)
    assert_same(ours, hf(Image.open(CATS), processor))


def _modes():
    base = Image.fromarray(random_image(123, 301))
    rgba = Image.fromarray(random_image(123, 301, 4, seed=1))
    palette_transparent = base.convert("P")
    palette_transparent.info["transparency"] = 3
    return {"L": base.convert("L"), "1": base.convert("1"), "P": base.convert("P"), "CMYK": base.convert("CMYK"),
            "I": base.convert("I"), "RGBA": rgba, "LA": rgba.convert("LA"), "P+transparency": palette_transparent}


@pytest.mark.parametrize("mode", list(_modes()))
def test_non_rgb_modes_converted_as_hf_convert_rgb(mode):
    img = _modes()[mode]
    ours = levit_np.preprocess(img)
    assert_same(ours, hf(img, HF_RGB))  # HF with do_convert_rgb=True: convert, transparency onto white


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK"])
def test_hf_default_fails_on_non_rgb(mode):
    # what docs/preprocessing.md says: HF's processor, as configured for LeViT, does not convert (ours does)
    with pytest.raises(ValueError):
        hf(_modes()[mode])


def test_non_rgb_files(tmp_path):
    rgba = _modes()["RGBA"]
    rgba.save(tmp_path / "a.png")
    _modes()["L"].save(tmp_path / "gray.png")
    assert_same(levit_np.preprocess(str(tmp_path / "a.png")), hf(rgba, HF_RGB))
    assert_same(levit_np.preprocess(str(tmp_path / "gray.png")), hf(Image.open(tmp_path / "gray.png"), HF_RGB))


@pytest.mark.parametrize("shape", [(40, 50), (40, 50, 1), (40, 50, 3), (40, 50, 4)])
def test_uint8_arrays(shape):
    a = random_image(*shape[:2], channels=shape[2] if len(shape) == 3 else None, seed=len(shape))
    img = Image.fromarray(a[:, :, 0] if shape[2:] == (1,) else a)  # L, L, RGB, RGBA
    assert_same(levit_np.preprocess(a), hf(img, HF_RGB))


def test_lists_and_batches():
    arrays = [random_image(50 + i, 90 - i, seed=i) for i in range(3)]
    inputs = [arrays[0], Image.fromarray(arrays[1]), arrays[2]]
    ours = levit_np.preprocess(inputs)
    assert ours.shape == (3, 3, 224, 224)
    assert_same(ours, hf([Image.fromarray(a) for a in arrays]))
    batch = np.stack([random_image(60, 70, seed=i) for i in range(2)])  # (B, H, W, C) uint8
    assert_same(levit_np.preprocess(batch), hf([Image.fromarray(a) for a in batch]))


# ---- bad input: a clear OSError / ValueError naming the input, raised before any arithmetic ----

def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        levit_np.preprocess(str(tmp_path / "nope.jpg"))


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not a picture")
    with pytest.raises(OSError, match="notes.jpg: not an image file"):
        levit_np.preprocess(str(path))


def test_truncated_image(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(random_image(64, 64)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(OSError, match="cut.png"):
        levit_np.preprocess(str(path))


def test_directory(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        levit_np.preprocess(str(tmp_path))


@pytest.mark.parametrize("image", [np.zeros((0, 5, 3), np.uint8), np.zeros((5, 0), np.uint8),
                                   Image.new("RGB", (0, 0))], ids=["array-0xN", "array-Nx0", "pil-0x0"])
def test_empty_image(image):
    with pytest.raises(ValueError, match="empty"):
        levit_np.preprocess(image)


# uint16 is accepted, scaled to 8 bits (test_robustness.py); every other dtype is refused
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.int16, np.uint32, bool])
def test_wrong_dtype(dtype):
    with pytest.raises(ValueError, match=f"must be uint8.*{np.dtype(dtype)}"):
        levit_np.preprocess(np.zeros((8, 8, 3), dtype))


@pytest.mark.parametrize("shape", [(3, 8, 8), (8, 8, 2), (8,), (1, 2, 8, 8, 3)])
def test_wrong_shape(shape):
    with pytest.raises(ValueError, match=r"\(H, W"):
        levit_np.preprocess(np.zeros(shape, np.uint8))


def test_error_names_position_in_list(tmp_path):
    good = random_image(8, 8)
    with pytest.raises(ValueError, match=r"image 1 \(array of shape \(8, 8, 3\) and dtype float32\)"):
        levit_np.preprocess([good, good.astype(np.float32)])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        levit_np.preprocess([good, str(tmp_path / "missing.png")])


@pytest.mark.parametrize("bad", [None, 3, [None], []], ids=["None", "int", "list-of-None", "empty-list"])
def test_not_images(bad):
    with pytest.raises(ValueError):
        levit_np.preprocess(bad)


def test_extreme_aspect_ratio_refused_not_hung():
    # 1 x 100000 would become 256 x 25,600,000 pixels; refused before Pillow allocates it
    with pytest.raises(ValueError, match="aspect ratio"):
        levit_np.preprocess(np.zeros((1, 100_000, 3), np.uint8))


@pytest.mark.parametrize("size", [0, -5, 2.5, True])
def test_bad_image_size(size):
    with pytest.raises(ValueError, match="image_size"):
        levit_np.preprocess(random_image(8, 8), image_size=size)
