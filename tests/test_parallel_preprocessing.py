"""Preprocessing on a thread pool, pipelined with the model, and fast_decode.

The pool gives serial preprocessing's pixels bit for bit (serial `preprocess_image` is itself HF-exact, see
test_preprocess.py, and checked against HF here too), reads its input lazily with a bounded number of images in
flight, and one bad image costs only itself. fast_decode keeps the exact mode's geometry and stays within the
deviation docs/preprocessing.md states; where an image needs no reduction it is the exact mode, bit for bit.
"""

import io
import itertools
import json
import threading

import numpy as np
import pytest
from PIL import Image
from transformers import LevitImageProcessorPil

import levit_np
from helpers import ALL_BACKENDS
from levit_np.app.cli import main
from levit_np.app.labelling import label_batches
from levit_np.preprocessing import preprocess_each, preprocess_image

HF = LevitImageProcessorPil()
# fast_decode's deviation from the exact pixel_values on photos (docs/preprocessing.md has the measured figures):
# one uint8 step is 1 / (255 * std) ~ 0.017 in pixel_values; on average fast_decode stays within two of them.
FAST_MEAN_BOUND = 0.035


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like RGB image: smooth shapes (the sum of a few sinusoids per channel) with a little noise, so that it
    compresses and resamples as a photo does (random pixels would be all edges)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        f = sum(np.sin(x * rng.uniform(0.002, 0.03) + y * rng.uniform(0.002, 0.03) + rng.uniform(0, 6))
                for _ in range(4))
        channels.append(128 + 28 * f + rng.normal(0, 3, (height, width)))
    return Image.fromarray(np.stack(channels, axis=-1).clip(0, 255).astype(np.uint8))


def save(image: Image.Image, path, **kw):
    image.save(path, **kw)
    return str(path)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """JPEGs and PNGs of several sizes and orientations, one of them EXIF-rotated, one grayscale."""
    folder = tmp_path_factory.mktemp("photos")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return [
        save(photo(1600, 1200, 0), folder / "big.jpg", quality=90),
        save(photo(640, 480, 1), folder / "vga.jpg", quality=90),
        save(photo(360, 700, 2), folder / "portrait.jpg", quality=85),
        save(photo(1200, 900, 3), folder / "rotated.jpg", quality=90, exif=exif),
        save(photo(800, 600, 4).convert("L"), folder / "gray.jpg", quality=90),
        save(photo(1000, 750, 5), folder / "big.png"),
        save(photo(500, 375, 6), folder / "inet.png"),
    ]


# --- exact mode: the pool changes nothing ---------------------------------------------------------------------------

@pytest.mark.parametrize("threads", [1, 2, 5])
def test_pool_equals_serial_bit_for_bit(photos, threads):
    serial = np.stack([preprocess_image(f) for f in photos])  # (B, 3, 224, 224), one after another
    np.testing.assert_array_equal(levit_np.preprocess(photos, threads=threads), serial)


def test_pool_equals_hf(photos):
    plain = [f for f in photos if "rotated" not in f and "gray" not in f]  # HF takes RGB images as they are stored
    ref = HF(images=[Image.open(f).convert("RGB") for f in plain], return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(levit_np.preprocess(plain, threads=3), ref)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_labels_and_embeddings_equal_serial_on_both_backends(small, photos, tmp_path, backend):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"no JPEG at all")
    images = [*photos[:3], str(broken), *photos[3:]]
    model = levit_np.from_pretrained(small, backend=backend)
    runs = {threads: list(label_batches(model, images, batch_size=3, embeddings=True, threads=threads))
            for threads in (1, 3)}
    for a, b in zip(runs[1], runs[3], strict=True):
        assert a.results == b.results
        np.testing.assert_array_equal(a.embeddings, b.embeddings)
    # the serial reference: each batch's readable images preprocessed one by one, then one forward pass
    for batch in runs[3]:
        readable = [f for f in batch.images if f != str(broken)]
        out = model(np.stack([preprocess_image(f, model.config.image_size) for f in readable]))
        np.testing.assert_array_equal(batch.embeddings, out.pooler_output)
    [failure] = [f for batch in runs[3] for f in batch.failures]
    assert failure[0] == str(broken) and str(broken) in failure[1]


# --- laziness, bounded memory, errors ------------------------------------------------------------------------------

def test_a_generator_is_read_lazily_with_at_most_ahead_images_in_flight():
    read = 0

    def images():  # endless: only laziness lets this finish
        nonlocal read
        for i in itertools.count():
            read += 1
            yield np.full((40, 50, 3), i % 256, np.uint8)

    ahead = 4
    stream = preprocess_each(images(), 32, threads=2, ahead=ahead)
    for taken, x in enumerate(itertools.islice(stream, 25), start=1):
        assert x.shape == (3, 32, 32)
        assert read <= taken + ahead
    stream.close()  # the pool drops what has not started and its threads end
    assert not [t for t in threading.enumerate() if t.name.startswith("levit-np-preprocess")]


def test_predict_reads_a_generator_of_images(small):
    def images():
        for i in range(7):
            yield np.asarray(photo(90 + i, 70, seed=i))

    listed = [np.asarray(photo(90 + i, 70, seed=i)) for i in range(7)]
    model = levit_np.from_pretrained(small, backend="numpy")
    lazily = list(levit_np.app.prediction.iter_predictions(images(), model, batch_size=3))
    assert lazily == list(levit_np.app.prediction.iter_predictions(listed, model, batch_size=3))
    assert [i for i, _ in lazily] == list(range(7))


def test_one_bad_image_costs_only_itself(photos, tmp_path):
    broken = tmp_path / "truncated.jpg"
    broken.write_bytes(open(photos[1], "rb").read()[:2000])
    images = [photos[0], str(broken), photos[2]]
    results = list(preprocess_each(images, threads=2))
    assert isinstance(results[1], OSError) and str(broken) in str(results[1])
    np.testing.assert_array_equal(results[0], preprocess_image(photos[0]))
    np.testing.assert_array_equal(results[2], preprocess_image(photos[2]))
    with pytest.raises(OSError, match=f"image 1 \\({broken}\\)"):
        levit_np.preprocess(images)


def test_an_error_raised_midway_leaves_no_thread_behind(small, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG but no more")
    good = [np.asarray(photo(80, 64, seed=i)) for i in range(20)]
    with pytest.raises(OSError, match="broken.png"):
        levit_np.predict([*good[:3], str(broken), *good], model=small, backend="numpy", batch_size=2)
    assert not [t for t in threading.enumerate() if t.name.startswith("levit-np-preprocess")]


@pytest.mark.parametrize("threads", [0, -1, 1.5, "2", True])
def test_bad_thread_counts(photos, small, threads):
    with pytest.raises(ValueError, match=f"threads must be a positive integer.*{threads!r}"):
        levit_np.preprocess(photos[:1], threads=threads)
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        levit_np.predict(photos[:1], model=small, threads=threads)


# --- fast_decode ---------------------------------------------------------------------------------------------------

def test_fast_decode_stays_near_the_exact_pixels(photos):
    exact = levit_np.preprocess(photos)
    fast = levit_np.preprocess(photos, fast_decode=True)
    assert fast.shape == exact.shape and fast.dtype == np.float32
    for f, a, b in zip(photos, exact, fast, strict=True):
        mean = float(np.abs(a - b).mean())
        assert mean <= FAST_MEAN_BOUND, (f, mean)
    # it is really another decode where the image allows one (a 1600 x 1200 JPEG is decoded at 1/4 scale)
    assert not np.array_equal(exact[0], fast[0])


def test_fast_decode_is_exact_where_nothing_can_be_reduced(tmp_path):
    # 300 x 280 -> resized to 274 x 256: no DCT scale (1/2 would not cover it), no integer reduction: the exact path
    path = save(photo(300, 280, 7), tmp_path / "small.jpg", quality=90)
    np.testing.assert_array_equal(preprocess_image(path, fast_decode=True), preprocess_image(path))


@pytest.mark.parametrize("source", ["path", "bytes", "file"])
def test_fast_decode_of_every_encoded_source(photos, source):
    path = photos[0]
    data = open(path, "rb").read()
    image = {"path": path, "bytes": data, "file": io.BytesIO(data)}[source]
    np.testing.assert_array_equal(preprocess_image(image, fast_decode=True), preprocess_image(path, fast_decode=True))


def test_fast_decode_keeps_the_exif_orientation(photos):
    rotated = photos[3]  # stored 1200 x 900, shown 900 x 1200 (portrait)
    exact, fast = preprocess_image(rotated), preprocess_image(rotated, fast_decode=True)
    assert float(np.abs(exact - fast).mean()) <= FAST_MEAN_BOUND
    # the unrotated image would be far off
    upright = preprocess_image(np.asarray(Image.open(rotated).convert("RGB")))
    assert float(np.abs(upright - fast).mean()) > 10 * FAST_MEAN_BOUND


def test_cli_fast_decode_with_workers_equals_one_process(small, photos, tmp_path, capsys):
    outputs = []
    for workers in (1, 2):
        jsonl = tmp_path / f"w{workers}.jsonl"
        assert main(["predict", *photos, "--model", small, "--backend", "numpy", "--batch-size", "3",
                     "--fast-decode", "--workers", str(workers), "--jsonl", str(jsonl)]) == 0
        outputs.append(jsonl.read_bytes())
    capsys.readouterr()
    assert outputs[0] == outputs[1]
    assert [json.loads(line)["image"] for line in outputs[0].splitlines()] == photos


def test_predict_reads_a_generator_a_batch_ahead_of_the_model(small, monkeypatch):
    from levit_np.app import prediction

    read, seen = 0, []

    def images():
        nonlocal read
        for i in range(11):
            read += 1
            yield np.asarray(photo(70 + i, 64, seed=i))

    classify = prediction.classify

    def counting(model, pixels, names, **kw):
        seen.append(read)  # images read when this batch reaches the model
        return classify(model, pixels, names, **kw)

    monkeypatch.setattr(prediction, "classify", counting)
    results = levit_np.predict(images(), model=small, backend="numpy", batch_size=2)
    assert len(results) == 11 and all(len(r) == 5 for r in results)
    for k, count in enumerate(seen):  # batch k is at the model: at most this batch and the next one are read
        assert count <= 2 * (k + 2), seen
