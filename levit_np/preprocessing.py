"""Images -> pixel_values, bit for bit as HF's `LevitImageProcessor` (its PIL backend) computes them.

    pixel_values = preprocess(["cat.jpg", pil_image, uint8_hwc_array])   # (3, 224, 224) each -> (B, 3, 224, 224)
    pixel_values = preprocess("wide.jpg", image_size=(448, 800))         # (1, 3, 448, 800): height, width

For an image_size S (224 for every released checkpoint) each image goes through, exactly as HF does:
1. resize with Pillow BICUBIC on uint8 so the short side is int(256 / 224 * S) (256 for S = 224) and the long side
   int(short * long / short_in) (truncated);
2. center crop S x S at top = (H - S) // 2, left = (W - S) // 2;
3. rescale: uint8 -> float64 * (1 / 255) -> float32;
4. normalize in float32: (x - mean) / std with the ImageNet mean and std; channels first.
For an image_size (h, w), the same with the same 256/224 margin on both sides: the image is resized, keeping its
aspect ratio, to the smallest size that covers int(256 / 224 * h) x int(256 / 224 * w) (the side that binds gets
exactly that, the other int(side * other_in / side_in), truncated), then center cropped h x w. For a square this is
HF's rule above, bit for bit.

Unlike HF, which fails on anything but 3-channel images, every image is first made RGB: grayscale, palette, CMYK and
the like through Pillow's `convert("RGB")`; images with transparency (RGBA, LA, palette + transparency) are
composited onto white, as HF's own `convert_to_rgb` does when asked (`do_convert_rgb=True`). Files are opened with
their EXIF orientation applied, as HF's `load_image` does.

Images of more than 8 bits per sample are first scaled to 8 bits by their bit depth, round(v * 255 / 65535) (Pillow's
own conversion clips them instead, so that a 16-bit photo would come out all white):
- 16-bit: PIL modes I;16, I;16L, I;16B, I;16N and uint16 arrays (v * 257 becomes v exactly);
- PIL mode I (32-bit integers: a 16-bit PPM, an integer TIFF, ...) by the 16-bit convention too. Only an image built
  in memory (no file format, e.g. `convert("I")` of an 8-bit image) whose values all fit in 0..255 is taken as
  8-bit values, as Pillow and HF read it. Values below 0 or above 65535 are refused (ValueError).
Float images (PIL mode F, float arrays) are refused with a ValueError saying how to convert them: their range
([0, 1]? [0, 255]?) is a convention the image does not carry.

An image is a path, a PIL image, a NumPy array, or an encoded image file: bytes / bytearray / memoryview or a binary
file object (`open(path, "rb")`, io.BytesIO). Whatever Pillow raises while decoding or converting one (OSError,
SyntaxError, struct.error, a closed image's ValueError, DecompressionBombError, ...) becomes an OSError or
ValueError naming the image.

`fast_decode=True` trades HF's exact pixels for speed, for bulk jobs on large photos (never the default): a JPEG
file is decoded at a reduced scale (1/2, 1/4 or 1/8, in the DCT domain: Pillow's `Image.draft`), the smallest
scale whose image still covers the size step 1 resizes to, and the resize first shrinks by an integer factor with a
box filter (Pillow's `reducing_gap`) where the image is still more than REDUCING_GAP times too large. The geometry
(resize size, crop) is the exact mode's; the pixels differ slightly (docs/preprocessing.md measures by how much).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import as_grid, normalize_image_size
from .cores import thread_count

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # HF's IMAGENET_DEFAULT_MEAN
IMAGENET_STD = (0.229, 0.224, 0.225)  # HF's IMAGENET_DEFAULT_STD
RESCALE_FACTOR = 1 / 255  # HF's default rescale_factor
DEFAULT_IMAGE_SIZE = 224
BYTES = (bytes, bytearray, memoryview)  # an encoded image file in memory
REDUCING_GAP = 2.0  # fast_decode: Pillow's reducing_gap, the value its own Image.thumbnail uses
EXIF_ORIENTATION = 0x0112  # the EXIF tag exif_transpose applies; values 5..8 swap width and height


def preprocess(images, image_size: int | tuple[int, int] = DEFAULT_IMAGE_SIZE, *, fast_decode: bool = False,
               threads: int | None = None) -> np.ndarray:
    """Turn one image or a list of images into LeViT's input, (B, 3, h, w) float32.

    An image is a path (str or Path), a PIL image, a uint8 or uint16 array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4),
    or an encoded image file (bytes, bytearray, memoryview, a binary file object); a 4-D array (B, H, W, C) is a
    batch. `image_size` is the model's `config.image_size`: S for S x S, or a (height, width) pair.
    The images are decoded and resized on `threads` threads (default: every core this process may use); the result
    is the same, bit for bit, on any number. fast_decode=True: faster and not bit-exact (see the module docstring).
    Raises OSError (missing or unreadable file) or ValueError (bad array, empty image, bad image_size), naming the
    image.
    """
    items = as_image_list(images)
    if not items:
        raise ValueError("preprocess: no images given (an empty list)")
    normalize_image_size(image_size)  # a bad size fails before any image is read
    names = [describe(im, i if len(items) > 1 else None) for i, im in enumerate(items)]
    pixels = []
    with contextlib.closing(preprocess_each(items, image_size, names=names, threads=threads,
                                            fast_decode=fast_decode)) as stream:  # closed, its pool ended, on error
        for x in stream:
            if isinstance(x, Exception):
                raise x
            pixels.append(x)  # (3, h, w)
    return np.stack(pixels)  # (B, 3, h, w)


def preprocess_each(images: Iterable, image_size: int | tuple[int, int] = DEFAULT_IMAGE_SIZE, *,
                    names: Iterable[str] | None = None, threads: int | None = None, fast_decode: bool = False,
                    ahead: int | None = None) -> Iterator[np.ndarray | OSError | ValueError]:
    """Each image's pixel_values (3, h, w) float32, or the OSError / ValueError that stopped it, in order.

    The images are preprocessed (`preprocess_image`) on a pool of `threads` threads (default: every core this
    process may use): Pillow lets go of the GIL while it decodes and resizes, so they run in parallel, and each
    image's result is the same as on one thread, bit for bit. `images` (a list or any iterable, a generator
    included) is read lazily: at most `ahead` images (default 2 per thread, at least `threads`) are in the pool or
    done and waiting to be taken, so memory stays bounded however many there are. The pool works on while the
    caller uses what it took (a model runs batch k while batch k+1 decodes: pass `ahead=batch_size`).
    `names`: how errors refer to each image (default: `describe(image, index)`).
    """
    threads = thread_count(threads)
    ahead = max(threads, 2 * threads if ahead is None else ahead)
    named = (zip(images, names, strict=True) if names is not None
             else ((im, describe(im, i)) for i, im in enumerate(images)))

    def one(image, name):
        try:
            return preprocess_image(image, image_size, name=name, fast_decode=fast_decode)  # (3, h, w)
        except (OSError, ValueError) as e:  # this image's own failure: the caller decides what it costs
            return e

    with ThreadPoolExecutor(threads, thread_name_prefix="levit-np-preprocess") as pool:
        pending = deque()  # futures, in image order
        try:
            for image, name in named:
                pending.append(pool.submit(one, image, name))
                if len(pending) >= ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # the caller stopped early (an error raised, a generator closed): drop what has not started
            for future in pending:
                future.cancel()


def preprocess_image(image, image_size: int | tuple[int, int] = DEFAULT_IMAGE_SIZE, *, name: str | None = None,
                     fast_decode: bool = False) -> np.ndarray:
    """One image -> (3, h, w) float32, (h, w) = image_size (S x S for an integer S). `name` is how errors refer to
    it. fast_decode=True: a reduced-scale JPEG decode and a reducing resize, not bit-exact (module docstring)."""
    name = name or describe(image)
    crop_h, crop_w = as_grid(normalize_image_size(image_size))
    box = resize_box(image_size)
    rgb, (full_h, full_w) = _load(image, name, draft_box=box if fast_decode else None)
    height, width = resize_to_cover(full_h, full_w, box)  # from the full size: a draft decode keeps the geometry
    limit = Image.MAX_IMAGE_PIXELS  # Pillow's decompression-bomb limit; None when the user turned it off
    if limit and height * width > limit:
        raise ValueError(f"{name}: a {full_w}x{full_h} image would be resized to {width}x{height} "
                         f"({height * width} pixels, over Pillow's limit of {limit}); crop it to a less extreme "
                         f"aspect ratio first")
    gap = REDUCING_GAP if fast_decode else None  # None: Pillow's exact resize, as HF's
    with pillow_errors(name, "cannot resize the image"):
        resized = rgb.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=gap)  # W' x H' RGB
    top, left = (height - crop_h) // 2, (width - crop_w) // 2  # never negative: the resized image covers the box
    crop = np.asarray(resized.crop((left, top, left + crop_w, top + crop_h)))  # (h, w, 3) uint8
    return normalize(crop)  # (3, h, w) float32


def normalize_table() -> np.ndarray:
    """(3, 256) float32: what HF's rescale and normalize make of each uint8 value v in each channel c,
    ((v as float64 * 1/255) as float32 - mean[c]) / std[c] in float32, in HF's order of operations."""
    v = (np.arange(256, dtype=np.float64) * RESCALE_FACTOR).astype(np.float32)  # (256,) HF rescales in float64
    mean = np.array(IMAGENET_MEAN, dtype=np.float32)[:, None]  # (3, 1)
    std = np.array(IMAGENET_STD, dtype=np.float32)[:, None]  # (3, 1)
    return (v[None, :] - mean) / std  # (3, 256) float32 throughout


NORMALIZE_TABLE = normalize_table()


def normalize(crop: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 -> (3, h, w) float32, HF's rescale + normalize: a lookup of each value in NORMALIZE_TABLE
    (each value's arithmetic done once, for all 256, instead of once per pixel; the same numbers)."""
    planes = np.ascontiguousarray(crop.transpose(2, 0, 1)).astype(np.intp)  # (3, h, w): take's own index type
    out = np.empty(planes.shape, np.float32)  # (3, h, w)
    for c in range(3):
        np.take(NORMALIZE_TABLE[c], planes[c], out=out[c])  # (h, w) <- table[c][crop[..., c]]
    return out


def resize_short_side(image_size: int) -> int:
    """The short side an image is resized to before the center crop: 256 for image_size 224 (HF LevitImageProcessor:
    shortest_edge * 256/224, truncated)."""
    return int((256 / 224) * image_size)


def resize_box(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) an image is resized to cover before the center crop: the crop with HF's 256/224 margin on each
    side, (256, 256) for 224, (512, 914) for (448, 800)."""
    height, width = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else image_size
    return resize_short_side(height), resize_short_side(width)


def resize_to_cover(height: int, width: int, box: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of the image scaled, keeping its aspect ratio, to the smallest size that covers `box`
    (box_h, box_w): the side that binds becomes the box's, the other is scaled and truncated. For a square box of
    side `short` this is `resize_shape(height, width, short)`, HF's rule, bit for bit: 640x480 -> (256, 341)."""
    box_h, box_w = box
    if box_w * height >= box_h * width:  # the width binds (box_w / width >= box_h / height)
        return int(box_w * height / width), box_w
    return box_h, int(box_h * width / height)


def resize_shape(height: int, width: int, short: int) -> tuple[int, int]:
    """(height, width) with the short side `short` and the long side scaled and truncated, as HF's
    get_resize_output_image_size(default_to_square=False) computes it: 640x480 -> (256, 341) for short=256."""
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


def load_rgb(image, *, name: str | None = None) -> Image.Image:
    """A path, PIL image, array or encoded file -> an RGB PIL image (loaded, file closed). See the module docstring."""
    return _load(image, name or describe(image))[0]


def _load(image, name: str, draft_box: tuple[int, int] | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """load_rgb, and the image's full (height, width). draft_box: a file is decoded at a reduced scale that still
    covers this resize box (fast_decode), so the RGB image may be smaller than the full size."""
    check_image(image, name=name)
    if isinstance(image, Image.Image):
        img, from_file = image, image.format is not None  # Pillow sets `format` on images it decoded from a file
        with pillow_errors(name, "cannot read the image"):
            img.load()  # a lazily opened PIL image decodes here; a closed one fails here
        full = img.height, img.width
    elif isinstance(image, np.ndarray):
        img, from_file = _from_array(image, name), False
        full = img.height, img.width
    else:
        img, full = _open(image, name, draft_box)
        from_file = True
    if img.width < 1 or img.height < 1:
        raise ValueError(f"{name}: the image is empty ({img.width}x{img.height} pixels)")
    img = to_8bit(img, name=name, from_file=from_file)
    with pillow_errors(name, f"cannot convert a {img.mode} image to RGB"):  # e.g. an exotic mode
        return to_rgb(img), full


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB as is; transparency composited onto white (as HF's convert_to_rgb); any other mode via convert."""
    if img.mode == "RGB":
        return img
    if "A" in img.getbands() or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def to_8bit(img: Image.Image, *, name: str, from_file: bool) -> Image.Image:
    """A PIL image of more than 8 bits per sample -> 8 bits, scaled by its bit depth (rules in the module docstring);
    8-bit modes as they are. `from_file`: Pillow decoded it from a file, so mode I there means more than 8 bits."""
    if img.mode == "F":
        raise ValueError(f"{name}: a float image (PIL mode F) has no fixed range; convert it to 8 bits first, e.g. "
                         f"Image.fromarray((np.asarray(img).clip(0, 1) * 255).round().astype(np.uint8)) for values "
                         f"in [0, 1]")
    if img.mode.startswith("I;16"):
        return Image.fromarray(scale_to_uint8(np.asarray(img), 65535))
    if img.mode != "I":
        return img
    a = np.asarray(img)  # (H, W) int32
    low, high = int(a.min()), int(a.max())
    if low < 0 or high > 65535:
        raise ValueError(f"{name}: a 32-bit integer image (PIL mode I) with values {low}..{high}, outside the 16-bit "
                         f"range 0..65535 this library scales by; scale it to uint8 (0..255) first")
    if high <= 255 and not from_file:  # 8-bit values held in mode I, e.g. convert("I") of an 8-bit image
        return Image.fromarray(a.astype(np.uint8))
    return Image.fromarray(scale_to_uint8(a, 65535))


def scale_to_uint8(a: np.ndarray, max_value: int) -> np.ndarray:
    """Integers in 0..max_value -> uint8 round(a * 255 / max_value), in exact integer arithmetic. For max_value 65535
    (odd, so never a tie) v * 257 -> v exactly."""
    return ((a.astype(np.int64) * 255 + max_value // 2) // max_value).astype(np.uint8)


def as_image_list(images) -> list:
    """One image -> [image]; a list/tuple/iterable or a 4-D array -> a list of images."""
    if is_single_image(images):
        return [images]
    if isinstance(images, np.ndarray):  # (B, H, W, C)
        return list(images)
    try:
        return list(images)
    except TypeError:
        raise ValueError(f"expected an image or a list of images, found {type(images).__name__}") from None


def is_single_image(images) -> bool:
    """True for one path / PIL image / encoded file / array of at most 3 dimensions; False for lists and 4-D arrays."""
    if isinstance(images, np.ndarray):
        return images.ndim != 4
    return isinstance(images, (str, os.PathLike, Image.Image, *BYTES)) or is_file_object(images)


def is_file_object(image) -> bool:
    """An open file (binary or, to be refused with a hint, text): anything with a read() method."""
    return callable(getattr(image, "read", None)) and not isinstance(image, Image.Image)


def describe(image, index: int | None = None) -> str:
    """How error messages name an image: its path, or its type and shape, with its position in a list."""
    if isinstance(image, (str, os.PathLike)):
        what = str(image)
    elif isinstance(image, Image.Image):
        what = f"PIL image ({image.mode}, {image.width}x{image.height})"
    elif isinstance(image, np.ndarray):
        what = f"array of shape {image.shape} and dtype {image.dtype}"
    elif isinstance(image, BYTES):
        what = f"{type(image).__name__} of length {memoryview(image).nbytes}"
    elif is_file_object(image) and isinstance(getattr(image, "name", None), str):
        what = f"file object {image.name!r}"
    else:
        what = type(image).__name__
    return what if index is None else f"image {index} ({what})"


def shown(text: str) -> str:
    """`text` as is, or as a Python string literal (repr) where printing it as is could be misread: a control
    character (a newline would split the record), any other unprintable character (or one that cannot be encoded,
    as an undecodable file name), leading or trailing whitespace, or a leading quote (so that a name printed raw
    never looks like a literal)."""
    if text.isprintable() and text == text.strip() and not text.startswith(("'", '"')):
        return text
    return repr(text)


def check_image(image, *, name: str | None = None) -> None:
    """Cheap checks before any decoding: the file exists, the array has the right dtype and shape."""
    name = name or describe(image)
    if isinstance(image, (str, os.PathLike)):
        _check_path(Path(image), name)
    elif isinstance(image, np.ndarray):
        _check_array(image, name)
    elif isinstance(image, BYTES):
        if memoryview(image).nbytes == 0:
            raise ValueError(f"{name}: no data (an empty image file)")
    elif is_file_object(image):
        _check_file_object(image, name)
    elif not isinstance(image, Image.Image):
        raise ValueError(f"{name}: expected a path, a PIL image, a uint8 array or an image file's bytes, found "
                         f"{type(image).__name__}")


@contextlib.contextmanager
def pillow_errors(name: str, doing: str):
    """Whatever Pillow raises inside becomes an OSError / ValueError naming the image. Pillow's decoders raise more
    than OSError on damaged files (SyntaxError, struct.error, IndexError, EOFError, ...): all are "cannot read"."""
    try:
        yield
    except UnidentifiedImageError:
        raise OSError(f"{name}: not an image file Pillow can read") from None
    except Image.DecompressionBombError as e:  # not an OSError
        raise ValueError(f"{name}: {e}") from None
    except ValueError as e:  # e.g. a closed image, an unsupported conversion
        raise ValueError(f"{name}: {doing} ({e})") from None
    except Exception as e:
        detail = str(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
        raise OSError(f"{name}: {doing} ({detail})") from None


def _check_path(path: Path, name: str) -> None:
    if not path.exists():
        hint = " (URLs are not supported: download the image first)" if str(path).startswith(("http:", "https:")) \
            else ""
        raise FileNotFoundError(f"image file not found: {name}{hint}")
    if path.is_dir():
        raise IsADirectoryError(f"{name} is a directory, not an image file (pass its files, or use the "
                                f"`levit-np predict DIR` command line, which reads a folder)")
    if not path.is_file():  # a FIFO or a device: reading it could block forever
        raise OSError(f"{name} is not a regular file")


def _check_file_object(f, name: str) -> None:
    if getattr(f, "closed", False):
        raise ValueError(f"{name}: the file object is closed")
    mode = getattr(f, "mode", None)
    if isinstance(f, io.TextIOBase) or (isinstance(mode, str) and "b" not in mode):
        raise ValueError(f"{name}: a file opened in text mode; open image files in binary mode, open(path, 'rb')")


def _open(image, name: str, draft_box: tuple[int, int] | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """A path, bytes or binary file object -> (the decoded PIL image, EXIF orientation applied; its full (height,
    width)). draft_box: decode a JPEG at the smallest DCT scale whose image still covers the size an image of the full
    size is resized to for this box (see fast_decode)."""
    source = io.BytesIO(image if isinstance(image, bytes) else memoryview(image).tobytes()) \
        if isinstance(image, BYTES) else image
    with pillow_errors(name, "cannot read the image"), Image.open(source) as img:
        transposed = img.getexif().get(EXIF_ORIENTATION) in (5, 6, 7, 8)  # exif_transpose swaps the sides
        full = (img.width, img.height) if transposed else (img.height, img.width)  # after exif_transpose
        if draft_box is not None and img.width and img.height:
            height, width = resize_to_cover(*full, draft_box)  # what preprocess_image resizes to
            img.draft(None, (height, width) if transposed else (width, height))  # a no-op but for JPEG
        img = ImageOps.exif_transpose(img)  # HF's load_image applies the EXIF orientation too
        img.load()  # decode now, while the file is open: truncated files fail here, naming the file
        return img, full


def _check_array(a: np.ndarray, name: str) -> None:
    if a.dtype.kind != "u" or a.dtype.itemsize not in (1, 2):
        hint = ("for floats in [0, 1] pass (x.clip(0, 1) * 255).round().astype(np.uint8)" if a.dtype.kind == "f"
                else "scale it to uint8 (0..255) first")
        raise ValueError(f"{name}: image arrays must be uint8 (0..255) or uint16 (0..65535, scaled to 8 bits), "
                         f"found dtype {a.dtype}; {hint}")
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3, 4))):
        raise ValueError(f"{name}: image arrays must be (H, W) or channels-last (H, W, C) with C in 1, 3, 4, "
                         f"found shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name}: the image is empty (shape {a.shape})")


def _from_array(a: np.ndarray, name: str) -> Image.Image:
    """A checked uint8 / uint16 array -> a PIL image of 8 bits per sample."""
    if a.dtype.itemsize == 2:  # uint16
        a = scale_to_uint8(a, 65535)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(a))  # mode L, RGB or RGBA from the shape

