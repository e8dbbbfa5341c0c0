"""The `levit-np` command line (also `python -m levit_np`).

    levit-np predict cat.jpg dog.png [--model facebook/levit-128S] [--top-k 5] [--json] [--backend NAME]
    levit-np predict photos/ --json > labels.jsonl    # a folder (recursively): progress bar on stderr
    levit-np info facebook/levit-128S                 # variant, parameters, labels, where the weights live
    levit-np fetch [NAME ...] [--dir weights]         # download checkpoints (default: all five released ones)

Errors are one line on stderr and a non-zero exit status, never a traceback. In `predict`, an image that cannot be
read does not stop the others: the failures are listed at the end and the exit status is 1. In text output (and in
error messages) a file name or label that could be misread (control characters such as a newline, leading or
trailing spaces, a leading quote) is shown as a Python string literal, e.g. 'a\\nb.png'; --json output is strict
JSON (no NaN) whatever the names.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .config import VARIANTS
from .hub import DEFAULT_MODEL, RELEASED, fetch, resolve
from .model import from_pretrained
from .prediction import DEFAULT_BATCH_SIZE, iter_predictions, load_model
from .preprocessing import check_image, resize_short_side

PROG = "levit-np"


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 1 failure, 2 usage error)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (OSError, ValueError) as e:  # bad model / weights not found (with instructions) / unreadable input
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="LeViT image classification in pure NumPy.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{predict,info,fetch,compile}")

    p = sub.add_parser("predict", help="classify images (files or folders)",
                       description="Print the top-k ImageNet labels of each image, with softmax probabilities.")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files, or folders (searched recursively for files Pillow can read)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"Hub id, released variant ({', '.join(VARIANTS)}) or checkpoint directory "
                        f"(default: {DEFAULT_MODEL})")
    p.add_argument("--top-k", type=_positive_int, default=5, help="labels per image (default: 5)")
    p.add_argument("--json", action="store_true",
                   help='one JSON object per line: {"image": ..., "predictions": [{"label", "probability"}]}')
    p.add_argument("--backend", default=None, choices=["auto", "numba", "numpy"],
                   help="forward-pass backend (default: auto, numba once its kernels are compiled)")
    p.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE,
                   help=f"images per forward pass (default: {DEFAULT_BATCH_SIZE})")
    p.set_defaults(run=run_predict)

    p = sub.add_parser("info", help="describe a checkpoint and where its weights live")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"(default: {DEFAULT_MODEL})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run_info)

    p = sub.add_parser("fetch", help="download checkpoints from the Hugging Face Hub",
                       description="Download config.json + model.safetensors into the Hugging Face cache "
                                   "(HF_HOME / HF_HUB_CACHE), or into DIR/<name>/ with --dir.")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help=f"Hub ids or variants (default: the five released: {', '.join(VARIANTS)})")
    p.add_argument("--dir", default=None, help="download into DIR/<name>/ instead of the Hugging Face cache")
    p.set_defaults(run=run_fetch)

    p = sub.add_parser("compile", help="compile the numba backend's kernels for this CPU, once",
                       description="Compile the fast kernels now, into Numba's on-disk cache, so that every later "
                                   "run (and backend='auto') uses them from its first image.")
    p.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "float64"],
                   help="the precisions to compile (default: float32)")
    p.set_defaults(run=run_compile)
    return parser


def run_compile(args) -> int:
    import time

    from .fast import compiled

    for dtype in args.dtype:
        if compiled.is_compiled(dtype):
            print(f"{dtype}: already compiled, in {compiled.cache_dir()}")
            continue
        print(f"compiling the numba kernels ({dtype}) for this CPU...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        compiled.compile_kernels(dtype)
        print(f"{dtype}: compiled in {time.perf_counter() - t:.1f} s, cached in {compiled.cache_dir()}")
    return 0


def fast_path_info() -> dict:
    """What backend='auto' runs here, and the fast path's build: micro-kernel tile, threads, cache."""
    import numba

    from .fast import blas, compiled, target

    tile = target.TILE
    return {"auto_backend": {d: "numba" if compiled.is_compiled(d) else "numpy (kernels not compiled yet)"
                             for d in compiled.DTYPES},
            "numba_cache": str(compiled.cache_dir()),
            "cpu": target.numba_target()[1],
            "micro_kernel": f"{tile.rows} x {tile.columns} float32 ({tile.vectors_per_row} vectors of {tile.lanes}"
                            f"{', FMA' if tile.fma else ', no FMA'})",
            "blas": blas.blas_description(),
            "threads": numba.get_num_threads(),
            "threading_layer": threading_layer()}


def threading_layer() -> str:
    """The layer Numba's thread pool runs on (tbb, omp or workqueue): the one a forward pass would use, started now
    if no forward has run yet."""
    import numba
    from numba.np.ufunc import parallel

    from .fast import threads  # noqa: F401 - loads TBB, as the backend does

    try:
        parallel._launch_threads()  # what a first parallel kernel does; it chooses the layer
        return f"{numba.threading_layer()} (NUMBA_THREADING_LAYER={numba.config.THREADING_LAYER})"
    except Exception as e:  # noqa: BLE001 - info reports, never fails
        return f"unknown ({e})"


def run_predict(args) -> int:
    images, failures, folder = collect_images(args.images)
    total = len(images) + len(failures)  # each image, and each folder without images
    readable = []
    for image in images:  # cheap checks (the file exists) before the model is loaded
        try:
            check_image(image, name=shown(image))
            readable.append(image)
        except (OSError, ValueError) as e:
            failures.append((image, str(e)))
    if readable:
        model = load_model(args.model, args.backend)
        from tqdm import tqdm

        with tqdm(total=len(readable), unit="img", file=sys.stderr, disable=None if folder else True) as bar:
            for i, result in iter_predictions(readable, model, top_k=args.top_k, batch_size=args.batch_size,
                                              names=[shown(image) for image in readable], errors="return"):
                if isinstance(result, Exception):
                    failures.append((readable[i], str(result)))
                else:
                    tqdm.write(format_predictions(readable[i], result, args.json), file=sys.stdout)
                bar.update()
    if failures:
        print(f"{PROG}: {len(failures)} of {total} inputs failed:", file=sys.stderr)
        for image, message in failures:  # every message names its image already
            message = " ".join(message.splitlines())  # one line per failure, whatever the decoder said
            print(f"  {message}" if shown(image) in message else f"  {shown(image)}: {message}", file=sys.stderr)
        return 1
    return 0


def collect_images(args: list[str]) -> tuple[list[str], list[tuple[str, str]], bool]:
    """Command-line arguments -> (image paths, (folder, message) for folders without images, any folder given)."""
    images, failures, folder = [], [], False
    for arg in args:
        if Path(arg).is_dir():
            folder = True
            files = image_files(Path(arg))
            if not files:
                failures.append((arg, f"{shown(arg)}: no image files in this folder"))
            images.extend(files)
        else:
            images.append(arg)  # a missing file is reported with the other failures
    return images, failures, folder


def format_predictions(image: str, predictions: list[tuple[str, float]], as_json: bool) -> str:
    """One JSON line, or the image name followed by one "probability  label" line per prediction."""
    if as_json:  # allow_nan=False: strict JSON, never NaN (predict reports non-finite logits as a failure)
        return json.dumps({"image": image, "predictions": [{"label": label, "probability": p}
                                                           for label, p in predictions]}, allow_nan=False)
    return "\n".join([shown(image)] + [f"  {p:.4f}  {shown(label)}" for label, p in predictions])


def shown(text: str) -> str:
    """`text` as is, or as a Python string literal (repr) where printing it as is could be misread: a control
    character (a newline would split the record), any other unprintable character (or one that cannot be encoded,
    as an undecodable file name), leading or trailing whitespace, or a leading quote (so that a name printed raw
    never looks like a literal)."""
    if text.isprintable() and text == text.strip() and not text.startswith(("'", '"')):
        return text
    return repr(text)


def image_files(folder: Path) -> list[str]:
    """Files under `folder` (recursively, hidden ones skipped) whose extension Pillow can open, sorted."""
    from PIL import Image

    Image.init()
    extensions = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    return sorted(str(f) for f in folder.rglob("*")
                  if f.suffix.lower() in extensions and f.is_file()
                  and not any(part.startswith(".") for part in f.relative_to(folder).parts))


def run_info(args) -> int:
    path = resolve(args.model)
    model = from_pretrained(path, backend="numpy")
    c = model.config
    variant = next((v for v, kw in VARIANTS.items() if all(tuple(getattr(c, k)) == v2 for k, v2 in kw.items())),
                   None)
    weights = path / "model.safetensors"
    info = {
        "model": str(args.model),
        "variant": f"LeViT-{variant}" if variant else None,
        "architecture": model.architecture,
        "hidden_sizes": list(c.hidden_sizes), "num_attention_heads": list(c.num_attention_heads),
        "depths": list(c.depths), "key_dim": list(c.key_dim),
        "image_size": c.image_size,
        "parameters": int(model.num_parameters),
        "num_labels": c.num_labels,
        "labels": [c.id2label[i] for i in range(c.num_labels)],
        "weights": str(path.resolve()),
        "weights_bytes": weights.stat().st_size,
        "fast_path": fast_path_info(),
    }
    if args.json:
        print(json.dumps(info))
        return 0
    labels = info["labels"]
    first = "; ".join(shown(label) for label in labels[:3]) + ("; ..." if len(labels) > 3 else "")
    print(f"model:         {info['model']}\n"
          f"variant:       {info['variant'] or 'custom (not one of the released variants)'}\n"
          f"architecture:  {info['architecture']}\n"
          f"config:        hidden_sizes {info['hidden_sizes']}, heads {info['num_attention_heads']}, "
          f"depths {info['depths']}, key_dim {info['key_dim']}\n"
          f"image size:    {c.image_size} (short side resized to {resize_short_side(c.image_size)}, "
          f"center crop {c.image_size})\n"
          f"parameters:    {info['parameters']:,} ({info['parameters'] / 1e6:.2f}M)\n"
          f"labels:        {len(labels)} ({first})\n"
          f"weights:       {info['weights']} (model.safetensors, {info['weights_bytes'] / 1e6:.1f} MB)")
    fast = info["fast_path"]
    print(f"backend:       auto runs {fast['auto_backend']['float32']} (float32), "
          f"{fast['auto_backend']['float64']} (float64); `levit-np compile` compiles the kernels\n"
          f"numba:         {fast['threads']} threads, threading layer {fast['threading_layer']}, cache "
          f"{fast['numba_cache']}\n"
          f"micro-kernel:  {fast['micro_kernel']} for CPU {fast['cpu']}")
    return 0


def run_fetch(args) -> int:
    failures = []
    for name in args.names or RELEASED:
        try:
            print(f"{name}: {fetch(name, args.dir)}")
        except (OSError, ValueError) as e:
            failures.append(f"{name}: {e}")
    for message in failures:
        print(f"{PROG}: error: {message}", file=sys.stderr)
    return 1 if failures else 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {value}")
    return value
