"""Hardening: no silent wrong answer, no lost batch, no traceback on any input.

References are independent of levit_np: HF's LevitImageProcessorPil on the equivalent 8-bit image (computed here with
plain NumPy), HF's model for probabilities, HF's LevitConfig for how config.json fields are read, a strict JSON
parser, and properties (every failure is an OSError / ValueError naming its input; one load per model).
"""

import ast
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image, ImageFile
from transformers import LevitImageProcessorPil

import levit_np
from helpers import ALL_BACKENDS, RTOL, SMALL
from levit_np import preprocessing
from levit_np.app import prediction as predict_module
from levit_np.app.cli import main

NUM_LABELS = 10
REPO = Path(__file__).resolve().parents[1]
HF = LevitImageProcessorPil()  # 224 px, as levit_np.preprocess by default
HF_RGB = LevitImageProcessorPil(do_convert_rgb=True)  # grayscale / RGBA converted first, as ours does


@pytest.fixture
def model(small):
    return levit_np.from_pretrained(small, backend="numpy")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No network, no real cache, no cached models from other tests."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LEVIT_NP_WEIGHTS", str(tmp_path / "empty-weights"))
    predict_module.clear_model_cache()
    yield
    predict_module.clear_model_cache()


def raises(exc, *fragments):
    """pytest.raises whose message must contain every fragment (regex-escaped)."""
    return pytest.raises(exc, match="(?s)" + "".join(f"(?=.*{re.escape(str(f))})" for f in fragments))


def hf(image, processor=HF_RGB) -> np.ndarray:
    return processor(images=image, return_tensors="np")["pixel_values"]


def assert_same(ours, ref):
    assert ours.dtype == ref.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)


def random_uint8(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def random_uint16(shape, seed=0, high=65536) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, shape, dtype=np.uint16)


def to_8bit(w: np.ndarray) -> np.ndarray:
    """The reference 16 -> 8 bit scaling, in floating point: round(w * 255 / 65535) = round(w / 257), which never
    falls on a tie (w / 257 is never k + 1/2 for an integer w)."""
    return np.rint(w.astype(np.float64) / 257).astype(np.uint8)


@torch.no_grad()
def hf_probabilities(hf_model, pil_images) -> np.ndarray:
    """HF's processor (64 px) and HF's model, softmax in float64: (B, num_labels)."""
    processor = LevitImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64},
                                       do_convert_rgb=True)
    pixels = processor(images=pil_images, return_tensors="pt")["pixel_values"]
    return torch.softmax(hf_model(pixels).logits.double(), dim=-1).numpy()


def assert_matches_hf(predictions, probs):
    """predictions [(label, p)]: each p within float32 noise of HF's probability of that label."""
    ours = np.array([p for _, p in predictions])
    ref = np.array([probs[int(label.removeprefix("LABEL_"))] for label, _ in predictions])
    np.testing.assert_allclose(ours, ref, rtol=0, atol=RTOL["float32"])


def strict_json(line: str):
    """json.loads that refuses NaN / Infinity, which are not JSON."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(line, parse_constant=refuse)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def save_png(folder: Path, name: str, seed=0) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(random_uint8((50, 70, 3), seed)).save(path, "PNG")
    return path


# --- 1. more than 8 bits per sample: scaled by the bit depth, never clipped -----------------------------------------

def test_16bit_png_of_v_times_257_is_the_8bit_image_of_v(tmp_path):
    v = random_uint8((123, 301))
    Image.fromarray(v.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    assert_same(levit_np.preprocess(str(tmp_path / "deep.png")), hf(Image.fromarray(v)))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_any_16bit_file_is_rounded_to_8_bits(tmp_path, fmt):
    w = random_uint16((90, 120), seed=1)  # values that are not multiples of 257 round to the nearest 8-bit level
    Image.fromarray(w).save(tmp_path / f"deep.{fmt.lower()}", fmt)
    assert_same(levit_np.preprocess(str(tmp_path / f"deep.{fmt.lower()}")), hf(Image.fromarray(to_8bit(w))))


@pytest.mark.parametrize("mode", ["I;16", "I;16L", "I;16B", "I;16N"])
def test_16bit_pil_modes(mode):
    w = random_uint16((70, 90), seed=2)
    dtype = {"I;16B": ">u2", "I;16": "<u2", "I;16L": "<u2", "I;16N": "=u2"}[mode]
    img = Image.frombytes(mode, (90, 70), w.astype(dtype).tobytes())
    assert_same(levit_np.preprocess(img), hf(Image.fromarray(to_8bit(w))))


def test_16bit_ppm_opens_as_mode_I_and_is_scaled(tmp_path):
    w = random_uint16((60, 80), seed=3)
    Image.fromarray(w).save(tmp_path / "deep.ppm")
    assert Image.open(tmp_path / "deep.ppm").mode == "I"  # Pillow reads 16-bit PPMs as 32-bit integers
    assert_same(levit_np.preprocess(str(tmp_path / "deep.ppm")), hf(Image.fromarray(to_8bit(w))))


@pytest.mark.parametrize("high", [65536, 256], ids=["16-bit-values", "dark-values-below-256"])
def test_int32_tiff_file_follows_the_16bit_convention(tmp_path, high):
    # a file Pillow opens in mode I holds more than 8 bits: even values all below 256 are 16-bit (a dark image)
    w = random_uint16((64, 96), seed=4, high=high)
    Image.fromarray(w.astype(np.int32)).save(tmp_path / "int.tif")
    assert Image.open(tmp_path / "int.tif").mode == "I"
    assert_same(levit_np.preprocess(str(tmp_path / "int.tif")), hf(Image.fromarray(to_8bit(w))))


def test_mode_I_in_memory():
    w = random_uint16((64, 96), seed=5)
    assert_same(levit_np.preprocess(Image.fromarray(w.astype(np.int32))), hf(Image.fromarray(to_8bit(w))))
    v = random_uint8((64, 96), seed=5)  # 8-bit values held in mode I (convert("I") of an 8-bit image): as HF reads them
    assert_same(levit_np.preprocess(Image.fromarray(v).convert("I")), hf(Image.fromarray(v)))


@pytest.mark.parametrize("bad", [-1, 65536, 2**31 - 1])
def test_mode_I_outside_16_bits_refused(bad):
    a = random_uint16((8, 8)).astype(np.int32)
    a[3, 4] = bad
    with raises(ValueError, "PIL image (I, 8x8)", "0..65535", "uint8"):
        levit_np.preprocess(Image.fromarray(a))


def test_float_images_refused_with_guidance(tmp_path):
    f = np.random.default_rng(0).random((20, 30), dtype=np.float32)
    Image.fromarray(f).save(tmp_path / "float.tif")
    with raises(ValueError, "float.tif", "mode F", "astype(np.uint8)"):
        levit_np.preprocess(str(tmp_path / "float.tif"))
    with raises(ValueError, "PIL image (F, 30x20)", "astype(np.uint8)"):
        levit_np.preprocess(Image.fromarray(f))
    for dtype in (np.float16, np.float32, np.float64):
        with raises(ValueError, f"dtype {np.dtype(dtype)}", "astype(np.uint8)"):
            levit_np.preprocess(f.astype(dtype))


@pytest.mark.parametrize("shape", [(40, 50), (40, 50, 1), (40, 50, 3), (40, 50, 4)])
def test_uint16_arrays_are_scaled(shape):
    w = random_uint16(shape, seed=len(shape) + shape[-1])
    v = to_8bit(w)
    ref = hf(Image.fromarray(v[:, :, 0] if shape[2:] == (1,) else v))  # L, L, RGB, RGBA (onto white)
    assert_same(levit_np.preprocess(w), ref)
    assert_same(levit_np.preprocess(w.astype(">u2")), ref)  # byte order does not matter
    assert_same(levit_np.preprocess(v.astype(np.uint16) * 257), ref)


def test_uint16_batch():
    batch = random_uint16((2, 30, 40, 3), seed=9)
    assert_same(levit_np.preprocess(batch), hf([Image.fromarray(to_8bit(a)) for a in batch]))


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint32, np.uint64, bool])
def test_other_integer_arrays_refused(dtype):
    with raises(ValueError, f"dtype {np.dtype(dtype)}", "uint8", "uint16"):
        levit_np.preprocess(np.zeros((8, 8, 3), dtype))


# --- 2. whatever Pillow raises becomes a per-image OSError / ValueError naming the file ------------------------------

PILLOW_FAILURES = [SyntaxError("broken PNG file"), NotImplementedError("unsupported"), AssertionError(),
                   struct.error("unpack requires a buffer"), IndexError("index out of range"), EOFError(),
                   KeyError("tile"), ZeroDivisionError(), TypeError("bad"), RuntimeError("decoder"),
                   MemoryError(), RecursionError(), Image.DecompressionBombError("too many pixels"),
                   ValueError("Operation on closed image"), OSError("image file is truncated")]


@pytest.mark.parametrize("error", PILLOW_FAILURES, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("where", ["open", "load"])
def test_every_pillow_failure_names_the_file(tmp_path, monkeypatch, error, where):
    path = save_png(tmp_path, "victim.png")

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(*((Image, "open") if where == "open" else (ImageFile.ImageFile, "load")), fail)
    with raises((OSError, ValueError), "victim.png") as info:
        levit_np.preprocess(str(path))
    assert type(info.value) in (OSError, ValueError)


def test_closed_and_lazily_truncated_pil_images(tmp_path):
    img = Image.fromarray(random_uint8((20, 20, 3)))
    img.close()
    with raises(ValueError, "PIL image (RGB, 20x20)", "closed"):
        levit_np.preprocess(img)
    path = save_png(tmp_path, "lazy.png")
    lazy = Image.open(path)  # not decoded yet
    path.write_bytes(path.read_bytes()[:300])
    with raises(OSError, "PIL image (RGB, 70x50)"):
        levit_np.preprocess(lazy)


def test_decompression_bomb_is_a_value_error_naming_the_file(tmp_path, monkeypatch):
    path = save_png(tmp_path, "bomb.png")  # 70 x 50 = 3500 pixels, over twice the limit below
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with raises(ValueError, "bomb.png", "decompression bomb"):
        levit_np.preprocess(str(path))


def test_fifo_is_refused_not_read(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with raises(OSError, "pipe.png", "not a regular file"):
        levit_np.preprocess(str(fifo))  # opening it would block forever


# Every format Pillow writes here, with a mode it writes; formats its build cannot write drop out.
FORMATS = {"PNG": "RGB", "JPEG": "RGB", "GIF": "P", "BMP": "RGB", "DIB": "RGB", "TIFF": "RGB", "WEBP": "RGB",
           "ICO": "RGBA", "PPM": "RGB", "BLP": "P", "DDS": "RGBA", "IM": "RGB", "JPEG2000": "RGB", "MSP": "1",
           "PCX": "RGB", "QOI": "RGB", "SGI": "RGB", "SPIDER": "F", "TGA": "RGB", "XBM": "1", "AVIF": "RGB",
           "EPS": "RGB", "MPO": "RGB", "ICNS": "RGBA", "PDF": "RGB"}


def encoded(fmt: str) -> bytes | None:
    img = Image.fromarray(random_uint8((24, 32, 3), seed=1)).convert("L" if FORMATS[fmt] == "F" else FORMATS[fmt])
    if FORMATS[fmt] == "F":
        img = Image.fromarray(np.asarray(img, np.float32))
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # Pillow deprecates writing some old formats
            img.save(buffer, fmt)
    except (OSError, KeyError, ValueError):  # no writer (or no codec) for this format in this Pillow build
        return None
    return buffer.getvalue()


WRITABLE = {fmt: data for fmt in FORMATS if (data := encoded(fmt)) is not None}


def damaged(data: bytes, flips=40) -> dict[str, bytes]:
    """Truncations at fixed points and `flips` copies with 1 to 4 bits flipped, each from its own seed."""
    out = {f"cut{n}": data[:n] for n in sorted({1, 8, 16, len(data) // 4, len(data) // 2, len(data) - 1})}
    for seed in range(flips):
        rng, d = np.random.default_rng(seed), bytearray(data)
        for _ in range(1 + seed % 4):
            d[int(rng.integers(len(d)))] ^= 1 << int(rng.integers(8))
        out[f"flip{seed}"] = bytes(d)
    return out


def extension(fmt: str) -> str | None:
    Image.init()
    return next((ext for ext, f in Image.registered_extensions().items() if f == fmt and f in Image.OPEN), None)


def test_fuzz_covers_the_common_formats():
    assert {"PNG", "JPEG", "GIF", "BMP", "TIFF", "PPM", "ICO"} <= set(WRITABLE)


@pytest.mark.parametrize("fmt", sorted(WRITABLE))
def test_fuzzed_files_predict_or_fail_naming_the_file(tmp_path, fmt):
    for variant, data in damaged(WRITABLE[fmt]).items():
        path = tmp_path / f"{fmt}-{variant}.img"
        path.write_bytes(data)
        start = time.monotonic()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's warnings about odd headers
            try:
                x = levit_np.preprocess(str(path), image_size=64)
                assert x.shape == (1, 3, 64, 64) and np.isfinite(x).all()
            except (OSError, ValueError) as e:
                assert str(path) in str(e), f"{variant}: {e!r} does not name the file"
            # any other exception type fails the test here, with its traceback
        assert time.monotonic() - start < 10, f"{fmt} {variant}: decoding took {time.monotonic() - start:.1f} s"


def test_cli_folder_of_fuzzed_files_prints_every_good_image(small, tmp_path):
    # a fresh interpreter with a timeout: no hang, no traceback, every good image printed, strict JSON lines
    folder = tmp_path / "photos"
    good = [str(save_png(folder, f"good{i}.png", seed=i)) for i in range(3)]
    bad = []
    for fmt, data in WRITABLE.items():
        ext = extension(fmt)
        if ext is None:
            continue
        for variant, blob in damaged(data, flips=8).items():
            (folder / f"{fmt}-{variant}{ext}").write_bytes(blob)
            bad.append(str(folder / f"{fmt}-{variant}{ext}"))
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "levit_np", "predict", str(folder), "--model", small, "--json",
                           "--backend", "numpy", "--batch-size", "16"], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 1, proc.stderr  # some fuzzed files fail
    records = [strict_json(line) for line in proc.stdout.splitlines()]
    printed = {r["image"] for r in records}
    assert set(good) <= printed and printed <= set(good) | set(bad)
    assert all(len(r["predictions"]) == 5 for r in records)
    failed = [line.strip() for line in proc.stderr.splitlines()[1:]]
    assert f"of {len(good) + len(bad)} inputs failed" in proc.stderr.splitlines()[0]
    assert len(failed) == len(good) + len(bad) - len(printed)
    assert all(any(line.startswith(f"{name}:") for name in bad) for line in failed)


@pytest.mark.parametrize("error", [SyntaxError("broken PNG file"), NotImplementedError(), AssertionError(),
                                   MemoryError(), Image.DecompressionBombError("bomb")], ids=lambda e: type(e).__name__)
def test_cli_folder_reports_each_pillow_failure_per_image(small, tmp_path, monkeypatch, capsys, error):
    folder = tmp_path / "photos"
    good = [str(save_png(folder, name, seed=i)) for i, name in enumerate(["a.png", "c.png"])]
    save_png(folder, "b-bad.png")
    load = ImageFile.ImageFile.load

    def load_or_fail(self):
        if "bad" in (self.filename or ""):
            raise error
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load_or_fail)
    code, out, err = run_cli(capsys, "predict", folder, "--model", small, "--json", "--backend", "numpy")
    assert code == 1
    assert [strict_json(line)["image"] for line in out.splitlines()] == good
    assert "1 of 3 inputs failed" in err and f"{folder / 'b-bad.png'}:" in err


# --- 3. encoded image files: bytes, bytearray, memoryview, binary file objects ---------------------------------------

def encodings(path: Path) -> dict:
    data = path.read_bytes()
    return {"bytes": data, "bytearray": bytearray(data), "memoryview": memoryview(data),
            "sliced-memoryview": memoryview(b"junk" + data)[4:], "BytesIO": io.BytesIO(data), "file": open(path, "rb")}


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_encoded_files_preprocess_as_the_decoded_image(tmp_path, fmt):
    path = tmp_path / f"cat.{fmt}"
    Image.fromarray(random_uint8((70, 90, 3))).save(path)
    ref = hf(Image.open(path))
    for image in encodings(path).values():
        assert_same(levit_np.preprocess(image), ref)
    assert_same(levit_np.preprocess(list(encodings(path).values())), np.concatenate([ref] * 6))


def test_predict_on_encoded_files_matches_hf(small_hf, tmp_path):
    hf_model, path = small_hf
    files = [save_png(tmp_path, f"{i}.png", seed=i) for i in range(2)]
    inputs = [files[0].read_bytes(), open(files[1], "rb")]
    results = levit_np.predict(inputs, model=path, backend="numpy")
    assert len(results) == 2  # one result per file, not one per byte
    for predictions, probs in zip(results, hf_probabilities(hf_model, [Image.open(f) for f in files]), strict=True):
        assert_matches_hf(predictions, probs)
    assert_matches_hf(levit_np.predict(io.BytesIO(files[0].read_bytes()), model=path, backend="numpy"),
                      hf_probabilities(hf_model, [Image.open(files[0])])[0])


def test_bad_encoded_files_are_named(small, tmp_path):
    with raises(OSError, "image 1 (bytes of length 12)", "not an image file"):
        levit_np.predict([random_uint8((8, 8, 3)), b"not an image"], model=small, backend="numpy")
    with raises(OSError, "BytesIO", "not an image file"):
        levit_np.predict(io.BytesIO(b"GIF89a but not really"), model=small, backend="numpy")
    path = save_png(tmp_path, "cut.png")
    path.write_bytes(path.read_bytes()[:200])
    with open(path, "rb") as f, raises(OSError, f"file object '{path}'"):
        levit_np.predict(f, model=small, backend="numpy")


@pytest.mark.parametrize("kind", ["empty-bytes", "empty-memoryview", "text-file", "StringIO", "closed-file"])
def test_unusable_encoded_inputs_fail_before_the_model_loads(tmp_path, kind):
    path = save_png(tmp_path, "ok.png")
    closed = open(path, "rb")
    closed.close()
    image, fragment = {"empty-bytes": (b"", "empty"), "empty-memoryview": (memoryview(b""), "empty"),
                       "text-file": (open(path, encoding="latin-1"), "binary mode"),
                       "StringIO": (io.StringIO("abc"), "binary mode"), "closed-file": (closed, "closed")}[kind]
    with raises(ValueError, fragment):
        levit_np.predict(image, model=tmp_path / "no-model")  # the image fails first: no model is looked for


# --- 4. file names and labels that would make the text output ambiguous ----------------------------------------------

ODD_NAMES = ["new\nline.png", "tab\there.png", "carriage\rreturn.png", "escape\x1b[31m.png", " leading.png",
             "trailing .png", "'quoted'.png", '"double.png', "plain name.png", "ünïcode.png"]


def parse_text_output(out: str, top_k: int) -> list[tuple[str, list[str]]]:
    """Text output -> [(image name, its prediction lines)]: a name line is a literal if it starts with a quote."""
    lines, records = out.split("\n"), []
    assert lines.pop() == ""
    while lines:
        name = lines.pop(0)
        records.append((ast.literal_eval(name) if name[:1] in "'\"" else name, lines[:top_k]))
        assert all(line.startswith("  ") for line in lines[:top_k])
        del lines[:top_k]
    return records


def test_text_output_of_odd_names_is_unambiguous(small, tmp_path, capsys):
    folder = tmp_path / "photos"
    paths = sorted(str(save_png(folder, name, seed=i)) for i, name in enumerate(ODD_NAMES))
    code, out, err = run_cli(capsys, "predict", folder, "--model", small, "--top-k", "2", "--backend", "numpy")
    assert code == 0 and err == ""
    assert [name for name, _ in parse_text_output(out, top_k=2)] == paths
    assert "photos/plain name.png\n" in out and "photos/ünïcode.png\n" in out  # printable names stay as they are
    code, out, _ = run_cli(capsys, "predict", folder, "--model", small, "--json", "--backend", "numpy")
    assert [strict_json(line)["image"] for line in out.splitlines()] == paths


def test_relative_names_with_edge_spaces_or_quotes_are_quoted(small, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = [" leading.png", "trailing.png ", "'quoted'.png", '"double".png', "plain.png"]
    for i, name in enumerate(names):
        save_png(tmp_path, name, seed=i)
    code, out, _ = run_cli(capsys, "predict", *names, "--model", small, "--top-k", "1", "--backend", "numpy")
    assert code == 0
    assert [name for name, _ in parse_text_output(out, top_k=1)] == names
    assert out.splitlines()[::2] == [repr(n) for n in names[:4]] + ["plain.png"]


def test_undecodable_file_name_prints(small, tmp_path, capsys):
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.png")  # Latin-1 bytes: not UTF-8
    with open(raw, "wb") as f:
        Image.fromarray(random_uint8((30, 30, 3))).save(f, "PNG")
    name = os.fsdecode(raw)  # holds a lone surrogate, which stdout cannot encode as is
    for flag in ([], ["--json"]):
        code, out, _ = run_cli(capsys, "predict", name, "--model", small, "--backend", "numpy", *flag)
        assert code == 0
        out.encode("utf-8")  # strict: no lone surrogate reaches the output
    assert strict_json(out)["image"] == name


def test_failure_list_quotes_odd_names(small, tmp_path, capsys):
    broken = tmp_path / "bro\nken.png"
    broken.write_text("no PNG")
    good = save_png(tmp_path, "fine.png")
    code, out, err = run_cli(capsys, "predict", broken, good, "--model", small, "--backend", "numpy")
    assert code == 1 and out.splitlines()[0] == str(good)
    assert err.splitlines() == ["levit-np: 1 of 2 inputs failed:",
                                f"  {str(broken)!r}: not an image file Pillow can read"]


def test_odd_labels_are_quoted(checkpoint, tmp_path, capsys):
    _, path = checkpoint("LevitForImageClassificationWithTeacher", seed=3, num_labels=NUM_LABELS, **SMALL)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(path, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["id2label"] = {str(i): f"label\n{i}" for i in range(NUM_LABELS)}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    image = save_png(tmp_path, "x.png")
    code, out, _ = run_cli(capsys, "predict", image, "--model", ckpt, "--top-k", "3", "--backend", "numpy")
    assert code == 0
    [(name, lines)] = parse_text_output(out, top_k=3)
    assert name == str(image)
    assert all(re.fullmatch(r"  \d\.\d{4}  'label\\n\d'", line) for line in lines)


# --- 5. logits that are not finite: a per-image failure, never a NaN probability -------------------------------------

@pytest.fixture
def poisoned(monkeypatch):
    """Images whose name holds "overflow" get pixel_values of 1e38 (the real model overflows float32 on them), "nan"
    pixel_values of NaN (which propagate through the real model); the others their real pixel_values."""
    preprocess_image = preprocessing.preprocess_image

    def poison(image, size, *, name=None, **options):
        x = preprocess_image(image, size, name=name, **options)
        file = os.path.basename(name or "")
        if "overflow" in file:
            return np.full_like(x, 1e38)
        return np.full_like(x, np.nan) if "nan" in file else x

    monkeypatch.setattr(preprocessing, "preprocess_image", poison)  # what preprocess_each's threads call


def test_poisoned_pixels_really_give_nonfinite_logits(model):
    with np.errstate(all="ignore"):
        for value in (1e38, np.nan):
            assert not np.isfinite(model(np.full((1, 3, 64, 64), value, np.float32)).logits).any()


@pytest.mark.parametrize("kind", ["overflow", "nan"])
def test_nonfinite_logits_raise_naming_the_image(model, poisoned, tmp_path, kind):
    bad = save_png(tmp_path, f"{kind}.png")
    good = save_png(tmp_path, "good.png", seed=1)
    with np.errstate(all="ignore"):
        with raises(ValueError, f"{kind}.png", "not all finite"):
            levit_np.predict(str(bad), model=model)
        with raises(ValueError, f"image 1 ({bad})", "not all finite"):
            levit_np.predict([str(good), str(bad), str(good)], model=model)
        results = list(predict_module.iter_predictions([str(good), str(bad), str(good)], model, errors="return"))
    assert [i for i, _ in results] == [0, 1, 2]
    assert isinstance(results[1][1], ValueError) and str(bad) in str(results[1][1])
    for _, predictions in (results[0], results[2]):
        assert all(np.isfinite(p) for _, p in predictions)


def test_cli_json_stays_strict_json_with_nonfinite_logits(small, poisoned, tmp_path, capsys):
    folder = tmp_path / "photos"
    good = [str(save_png(folder, name, seed=i)) for i, name in enumerate(["a.png", "c.png", "e.png"])]
    save_png(folder, "b-overflow.png")
    save_png(folder, "d-nan.png")
    with np.errstate(all="ignore"):
        code, out, err = run_cli(capsys, "predict", folder, "--model", small, "--json", "--backend", "numpy",
                                 "--batch-size", "2")
    assert code == 1
    records = [strict_json(line) for line in out.splitlines()]
    assert [r["image"] for r in records] == good
    assert all(0 <= d["probability"] <= 1 for r in records for d in r["predictions"])
    assert "2 of 5 inputs failed" in err
    assert f"{folder / 'b-overflow.png'}: the model's logits" in err and f"{folder / 'd-nan.png'}: the model's" in err


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_nan_pixel_values_propagate_without_raising(small, backend):
    # what docs/api.md says model(pixel_values) does with NaN: NaN outputs for that image, the others untouched
    m = levit_np.from_pretrained(small, backend=backend)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64), dtype=np.float32)
    clean = m(x[1:]).logits
    x[0, 1, 10, 20] = np.nan
    with np.errstate(all="ignore"):
        out = m(x)
    assert np.isnan(out.logits[0]).all()
    np.testing.assert_allclose(out.logits[1:], clean, rtol=0, atol=RTOL["float32"])


# --- 6. config.json: wrong types and absurd sizes are one quick ValueError naming the field --------------------------

@pytest.fixture
def ckpt(small, tmp_path):
    shutil.copytree(small, tmp_path / "ckpt")
    return tmp_path / "ckpt"


def edit_config(path, **fields):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(fields)
    (path / "config.json").write_text(json.dumps(cfg))


BAD_FIELDS = [
    ("architectures", 5), ("architectures", "LevitModel"), ("architectures", [5]), ("architectures", {"a": 1}),
    ("num_labels", 10**9), ("num_labels", -5), ("num_labels", -1), ("num_labels", "10"), ("num_labels", 2.5),
    ("num_labels", True), ("depths", [1] * 10**6), ("depths", [10**6, 1, 1]), ("depths", [1, -1, 1]),
    ("depths", [257, 1, 1]), ("hidden_sizes", [10**12, 48, 64]), ("key_dim", [8, 8, 2**40]),
    ("mlp_ratio", [2, 2, 10**9]), ("num_attention_heads", [[[[[2]]]], 3, 4]), ("image_size", 16 * 10**6),
    ("image_size", 1040), ("image_size", 0), ("image_size", None), ("patch_size", 2**20), ("kernel_size", 10**9),
    ("padding", -1), ("stride", 10**9), ("num_channels", 10**7), ("model_type", 5), ("model_type", None),
    ("model_type", ["levit"]), ("id2label", {str(i): i for i in range(NUM_LABELS)}),
    ("id2label", {str(i): None for i in range(NUM_LABELS)}), ("id2label", {"0": ["cat"], "1": "dog"}),
    ("id2label", {"0": "a", "1": "b", "01": "c"}), ("id2label", {"-1": "a", "0": "b"}), ("id2label", {"0.5": "a"}),
    ("id2label", {" 1": "a", "0": "b"}), ("id2label", ["cat", "dog"]), ("id2label", "cat"),
    ("down_ops", [[""]] * 10**5), ("down_ops", [["Subsample", 8, 4, 4, 2, 10**9], ["Subsample", 8, 6, 4, 2, 2]]),
    ("down_ops", "Subsample"),
]


@pytest.mark.parametrize("field,value", BAD_FIELDS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_FIELDS)])
def test_bad_config_field_is_one_quick_value_error(ckpt, field, value):
    edit_config(ckpt, **{field: value})
    start = time.monotonic()
    with pytest.raises(ValueError) as info:
        levit_np.from_pretrained(ckpt, backend="numpy")
    assert time.monotonic() - start < 1
    message = str(info.value)
    assert str(ckpt / "config.json") in message and field.rstrip("s") in message
    assert type(info.value) is ValueError and len(message) < 1000  # one line, the value abridged


def test_too_many_id2label_entries_fail_fast():
    labels = dict.fromkeys(map(str, range(1_000_001)), "x")
    start = time.monotonic()
    with raises(ValueError, "id2label", "1000000"):
        levit_np.LevitConfig.from_dict({"id2label": labels})
    assert time.monotonic() - start < 1


@pytest.mark.parametrize("text,fragment", [
    ('{"hidden_sizes": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ('{"image_size": 1' + "0" * 5000 + "}", "not valid JSON"),
    ("\xff\xfe{}", "not valid JSON"),
    ("[1, 2, 3]", "JSON object"),
])
def test_config_json_that_cannot_be_read_as_a_config(ckpt, text, fragment):
    (ckpt / "config.json").write_bytes(text.encode("latin-1"))
    with raises(ValueError, ckpt / "config.json", fragment):
        levit_np.from_pretrained(ckpt, backend="numpy")


def test_config_json_of_absurd_size_is_not_read(ckpt):
    with open(ckpt / "config.json", "r+b") as f:
        f.truncate(10**9)  # sparse: nothing is written
    start = time.monotonic()
    with raises(ValueError, ckpt / "config.json", "too large"):
        levit_np.from_pretrained(ckpt, backend="numpy")
    assert time.monotonic() - start < 1


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_config_json_that_is_no_file(ckpt, kind):
    (ckpt / "config.json").unlink()
    if kind == "directory":
        (ckpt / "config.json").mkdir()
        with raises(IsADirectoryError, ckpt / "config.json", "is a directory"):
            levit_np.from_pretrained(ckpt, backend="numpy")
    else:
        os.mkfifo(ckpt / "config.json")
        with raises(OSError, ckpt / "config.json", "not a regular file"):
            levit_np.from_pretrained(ckpt, backend="numpy")


@pytest.mark.parametrize("fields", [{"num_labels": 5}, {"num_labels": 0}, {}, {"num_labels": 2, "id2label": {
    "0": "a", "1": "b"}}, {"id2label": {"1": "b", "0": "a"}}, {"id2label": None, "num_labels": 4}])
def test_labels_are_read_as_hf_reads_them(fields):
    ref = transformers.LevitConfig.from_dict(dict(fields))
    assert levit_np.LevitConfig.from_dict(dict(fields)).id2label == {int(k): v for k, v in ref.id2label.items()}


def test_num_labels_that_disagrees_with_id2label_is_refused():
    # HF warns, then replaces the labels by LABEL_0..: which one was meant is unknown, so we refuse
    fields = {"num_labels": 3, "id2label": {"0": "a", "1": "b"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert transformers.LevitConfig.from_dict(dict(fields)).num_labels == 3
    with raises(ValueError, "num_labels=3", "2 entries", "id2label"):
        levit_np.LevitConfig.from_dict(fields)


def test_architectures_as_hf_writes_them():
    parse = levit_np.LevitConfig.from_dict
    assert parse({"architectures": ["LevitForImageClassification"]}).architecture == "LevitForImageClassification"
    assert parse({"architectures": None}).architecture is None  # as PretrainedConfig writes it when unknown
    assert parse({"architectures": ["SomethingElse"]}).architecture is None


# --- 7. what a model argument may be ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [None, 123, 1.5, "", "   ", b"facebook/levit-128S", ["128S"]],
                         ids=["None", "int", "float", "empty", "blank", "bytes", "list"])
def test_bad_model_argument_says_what_a_model_may_be(bad):
    with raises(ValueError, "model must be", "Hub id", "variant", "directory"):
        levit_np.from_pretrained(bad)


@pytest.mark.parametrize("bad", ["", "  "])
def test_empty_model_name_in_predict_and_cli(bad, tmp_path, capsys):
    with raises(ValueError, "model must be", "Hub id"):
        levit_np.predict(random_uint8((8, 8, 3)), model=bad)
    image = save_png(tmp_path, "x.png")
    code, _, err = run_cli(capsys, "predict", image, "--model", bad)
    assert code == 1 and "model must be" in err
    code, _, err = run_cli(capsys, "info", bad)
    assert code == 1 and "model must be" in err


# --- 8. threads share the model cache: one load ------------------------------------------------------------------

def test_concurrent_predict_on_a_cold_cache_loads_once(small, small_hf, monkeypatch):
    loads = []
    load = predict_module.from_pretrained

    def counting_load(*args, **kwargs):
        loads.append(args)
        time.sleep(0.2)  # widen the window in which other threads would start their own load
        return load(*args, **kwargs)

    monkeypatch.setattr(predict_module, "from_pretrained", counting_load)
    image = random_uint8((50, 60, 3))
    barrier, results, errors = threading.Barrier(4), [None] * 4, []

    def worker(i):
        try:
            barrier.wait()
            results[i] = levit_np.predict(image, model=small, backend="numpy")
        except Exception as e:  # reported below, in the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(loads) == 1
    assert all(r == results[0] for r in results)
    assert_matches_hf(results[0], hf_probabilities(small_hf[0], [Image.fromarray(image)])[0])


def test_cache_keeps_the_two_most_recent_models(small, monkeypatch):
    loads = []
    load = predict_module.from_pretrained
    monkeypatch.setattr(predict_module, "from_pretrained", lambda *a, **kw: loads.append(a[0]) or load(*a, **kw))
    a = os.fspath(small)
    b, c = a + "/", a + "//"  # three names of one checkpoint: three cache entries
    for name in (a, b, a, c, a, b):
        levit_np.predict(random_uint8((8, 8, 3)), model=name, backend="numpy")
    assert loads == [a, b, c, b]  # a stays (used most recently), b was dropped when c came


# --- 9. the weights file: its header is checked before its tensors are read -------------------------------------------

def sparse_file(path: Path, head: bytes, size: int) -> Path:
    """A file of `size` bytes that starts with `head` and takes no disk space (a hole after the head)."""
    with path.open("wb") as f:
        f.write(head)
        f.truncate(size)
    return path


@pytest.mark.parametrize("head", [(10**12).to_bytes(8, "little"), b"\xff" * 8, (64).to_bytes(8, "little") + b"{"],
                         ids=["header-size-beyond-the-file", "header-size-absurd", "header-not-json"])
def test_huge_weights_file_with_a_bad_header_fails_before_reading(ckpt, head):
    # 12 GiB: read whole (as before) it would cost that much memory and a minute; checked first, it fails at once
    sparse_file(ckpt / "model.safetensors", head, 12 * 2**30)
    with raises(OSError, "model.safetensors", "not a valid safetensors file"):
        levit_np.from_pretrained(ckpt, backend="numpy")


def test_huge_tensor_of_the_wrong_shape_fails_before_its_data_is_read(ckpt):
    # the checkpoint's own header with its last tensor grown to 12 GiB: the shape check names it, its data is only
    # mapped, never read
    weights = ckpt / "model.safetensors"
    raw = weights.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    key = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
    begin, size = header[key]["data_offsets"][0], 3 * 2**30
    header[key] = {"dtype": "F32", "shape": [size], "data_offsets": [begin, begin + 4 * size]}
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    sparse_file(weights, len(head).to_bytes(8, "little") + head + raw[8 + n:8 + n + begin],
                8 + len(head) + begin + 4 * size)
    with raises(ValueError, "model.safetensors", repr(key), f"shape ({size},)"):
        levit_np.from_pretrained(ckpt, backend="numpy")


def test_weights_file_with_trailing_bytes_or_cut_short_is_refused(ckpt):
    weights = ckpt / "model.safetensors"
    good = weights.read_bytes()
    for bad in (good + b"\0" * 8, good[:-4]):
        weights.write_bytes(bad)
        with raises(OSError, "model.safetensors", "not a valid safetensors file"):
            levit_np.from_pretrained(ckpt, backend="numpy")


# --- 10. a model pickles and copies: process pools and distributed engines can carry it ------------------------------

@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("copy_with", ["pickle", "deepcopy"])
def test_pickled_or_copied_model_computes_the_same_bits(small, small_hf, backend, copy_with):
    import copy
    import pickle

    model = levit_np.from_pretrained(small, backend=backend)
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    before = model(x, output_hidden_states=True)
    clone = pickle.loads(pickle.dumps(model)) if copy_with == "pickle" else copy.deepcopy(model)
    assert clone.backend == model.backend == backend and clone.dtype == model.dtype
    assert clone.architecture == model.architecture and clone.num_parameters == model.num_parameters
    after = clone(x, output_hidden_states=True)
    for name in ("logits", "cls_logits", "distillation_logits", "pooler_output", "last_hidden_state"):
        np.testing.assert_array_equal(getattr(after, name), getattr(before, name), err_msg=name)
    for a, b in zip(after.hidden_states, before.hidden_states, strict=True):
        np.testing.assert_array_equal(a, b)
    assert_matches_hf(levit_np.predict(random_uint8((70, 90, 3)), model=clone),
                      hf_probabilities(small_hf[0], [Image.fromarray(random_uint8((70, 90, 3)))])[0])


def test_pickled_model_in_a_spawned_process_pool(small):
    import concurrent.futures
    import multiprocessing
    import pickle

    model = levit_np.from_pretrained(small, backend="numpy")
    images = [random_uint8((50 + 10 * i, 60, 3), seed=i) for i in range(3)]
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        remote = list(pool.map(levit_np.predict, images, [model] * 3))
    assert remote == [levit_np.predict(im, model=model) for im in images]
    weights = sum(a.nbytes for a in weight_arrays(model._weights))
    assert len(pickle.dumps(model)) < 1.1 * weights + 10**5  # the checkpoint's weights once, and little else


def weight_arrays(tree):
    """The arrays of a nested dict / list weight tree."""
    if isinstance(tree, np.ndarray):
        return [tree]
    children = tree.values() if isinstance(tree, dict) else tree
    return [a for child in children for a in weight_arrays(child)]
