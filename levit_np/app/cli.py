"""The `levit-np` command line (also `python -m levit_np`).

    levit-np predict cat.jpg dog.png [--model facebook/levit-128S] [--top-k 5] [--json] [--backend NAME]
    levit-np predict photos/ --json > labels.jsonl    # a folder (recursively): progress bar on stderr
    levit-np predict wide.jpg --image-size 224x384    # at another input size: S or HEIGHTxWIDTH, multiples of 16
    levit-np predict photos/ --jsonl labels.jsonl [--resume] [--embeddings emb.npy] [--workers N]   # a collection
    levit-np predict photos/ --jsonl labels.jsonl --fast-decode    # large photos, faster, not bit-exact
    levit-np distributed photos/ --scheduler tcp://host:8786 --output labels/       # on a Dask cluster, in shards
    levit-np info facebook/levit-128S                 # variant, parameters, labels, where the weights live
    levit-np fetch [NAME ...] [--dir weights]         # download checkpoints (default: all five released ones)

Errors are one line on stderr and a non-zero exit status, never a traceback. In `predict`, an image that cannot be
read does not stop the others: the failures are listed at the end and the exit status is 1. In text output (and in
error messages) a file name or label that could be misread (control characters such as a newline, leading or
trailing spaces, a leading quote) is shown as a Python string literal, e.g. 'a\\nb.png'; --json output is strict
JSON (no NaN) whatever the names.

The options `predict` and `distributed` share (the images, the model, its input size, the labelling) are declared
once (`_shared_options`); each subcommand is one `add_*` function that declares the rest and one `run_*` function.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from .. import __version__
from ..checks import non_negative_int, positive_int
from ..config import VARIANTS, LevitConfig, as_grid
from ..hub import DEFAULT_MODEL, RELEASED, fetch, resolve
from ..model import from_pretrained
from ..preprocessing import check_image, resize_box, resize_short_side, shown
from .collection import collect_images, unique
from .labelling import JsonlOutput, LabelledBatch, batches, label_batches
from .prediction import DEFAULT_BATCH_SIZE, load_model

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
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{predict,info,fetch,compile,distributed}")
    images, model, size, labelling = _shared_options()
    add_predict(sub, [images, model, size, labelling])
    add_info(sub, [size])
    add_fetch(sub)
    add_compile(sub)
    add_distributed(sub, [images, model, size, labelling])
    return parser


def _shared_options() -> tuple[argparse.ArgumentParser, ...]:
    """The option groups more than one subcommand takes, as argparse parents: images, model, size, labelling."""
    images = argparse.ArgumentParser(add_help=False)
    images.add_argument("images", nargs="*", metavar="IMAGE",
                        help="image files, or folders (searched recursively for files Pillow can read)")
    images.add_argument("--files-from", metavar="FILE", default=None,
                        help="read more image paths from FILE, one per line ('-': standard input)")
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--model", default=DEFAULT_MODEL,
                       help=f"Hub id, released variant ({', '.join(VARIANTS)}) or checkpoint directory "
                            f"(default: {DEFAULT_MODEL})")
    model.add_argument("--backend", default=None, choices=["auto", "numba", "numpy"],
                       help="forward-pass backend (default: auto, numba once its kernels are compiled)")
    size = argparse.ArgumentParser(add_help=False)
    size.add_argument("--image-size", type=image_size_arg, default=None, metavar="S|HxW",
                      help="the model at this input size, S or HEIGHTxWIDTH in pixels (multiples of 16, e.g. "
                           "224x384): its attention biases are resized to it (default: the checkpoint's own size)")
    labelling = argparse.ArgumentParser(add_help=False)
    labelling.add_argument("--top-k", type=_positive_int, default=5, help="labels per image (default: 5)")
    labelling.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE,
                           help=f"images per forward pass (default: {DEFAULT_BATCH_SIZE})")
    labelling.add_argument("--fast-decode", action="store_true",
                           help="decode JPEGs at a reduced scale and resize with a reducing pass: several times "
                                "faster on large photos, NOT bit-exact with HF's preprocessing "
                                "(docs/preprocessing.md)")
    return images, model, size, labelling


# --- predict ----------------------------------------------------------------------------------------------------

def add_predict(sub, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("predict", parents=parents, help="classify images (files or folders)",
                       description="Print the top-k ImageNet labels of each image, with softmax probabilities.")
    p.add_argument("--json", action="store_true",
                   help='one JSON object per line: {"image": ..., "predictions": [{"label", "probability"}]}')
    p.add_argument("--jsonl", metavar="FILE", default=None,
                   help="write the --json lines to FILE instead, a batch at a time (flushed and fsynced), with an "
                        '{"image", "error"} line for each image that failed')
    p.add_argument("--resume", action="store_true",
                   help="continue the --jsonl FILE of an interrupted run: skip the images it holds, append the rest")
    p.add_argument("--embeddings", metavar="FILE.npy", default=None,
                   help="with --jsonl: also store each image's pooler_output (float32) as a row of FILE.npy; its "
                        'line says which ("embedding": row)')
    p.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                   help="run N processes (spawned, cores // N threads each); the output is one process's "
                        "(default: 1)")
    p.set_defaults(run=run_predict, usage_error=p.error)


def run_predict(args) -> int:
    _require_images(args)
    given = [option for option, value in (("--resume", args.resume), ("--embeddings", args.embeddings)) if value]
    if given and not args.jsonl:  # name only the options given
        args.usage_error(f"{' and '.join(given)} {'go' if len(given) > 1 else 'goes'} with --jsonl FILE")
    images, failures, folder = collect_images(args.images + files_from(args.files_from))
    output = None
    if args.jsonl:  # one line per image: each image once, those already in a resumed file skipped
        images = unique(images)
        output = JsonlOutput(args.jsonl, resume=args.resume, embeddings=args.embeddings)
    total = len(images) + len(failures)  # each image, and each folder without images
    try:
        todo = images if output is None else [image for image in images if image not in output.done]
        if output is not None and args.resume and (len(todo) < len(images) or output.partial_bytes):
            cut = f", a partial last line ({output.partial_bytes} bytes) cut off" if output.partial_bytes else ""
            print(f"{PROG}: resuming {shown(args.jsonl)}: {len(images) - len(todo)} of {len(images)} images "
                  f"done{cut}", file=sys.stderr)
        labelled = labelled_batches(args, todo)
        write_batches(labelled, output, failures, args.json, total=len(images), done=len(images) - len(todo),
                      progress=folder)
    finally:
        if output is not None:
            output.close()
    if output is not None:  # this run's failures and those of the runs it resumed
        wanted = set(images)
        failures += [(image, message) for image, message in output.failed if image in wanted]
    return report_failures(failures, total)


def labelled_batches(args, images: list[str]) -> Iterator[LabelledBatch]:
    """The batches of `images` labelled as `args` say: in this process, or on --workers processes. Cheap checks
    (the file exists) come first: when no image is readable, no model is loaded."""
    unreadable = {}
    for image in images:
        try:
            check_image(image, name=shown(image))
        except (OSError, ValueError) as e:
            unreadable[image] = str(e)
    if len(unreadable) == len(images):
        return (LabelledBatch(chunk, [unreadable[image] for image in chunk])
                for chunk in batches(images, args.batch_size))
    spec = {"model": args.model, "backend": args.backend}
    if args.image_size is not None:
        spec["image_size"] = args.image_size
    options = dict(top_k=args.top_k, batch_size=args.batch_size, embeddings=bool(args.embeddings),
                   fast_decode=args.fast_decode)
    if args.workers == 1:
        return label_batches(load_model(**spec), images, **options)
    from .workers import label_batches_in_processes

    spec["model"] = str(resolve(args.model))  # found (or downloaded) once, here, not by every worker
    return label_batches_in_processes(spec, images, workers=args.workers, **options)


def write_batches(labelled: Iterator[LabelledBatch], output: JsonlOutput | None, failures: list, as_json: bool, *,
                  total: int, done: int, progress: bool) -> None:
    """Each batch into the --jsonl `output`, or printed (its failures added to `failures`); a progress bar on
    stderr over `total` images, `done` of them done already, when `progress` (a folder was given)."""
    from tqdm import tqdm

    with tqdm(total=total, initial=done, unit="img", file=sys.stderr, disable=None if progress else True) as bar:
        for batch in labelled:
            if output is not None:
                output.write(batch)
            else:
                failures.extend(batch.failures)
                for image, result in zip(batch.images, batch.results, strict=True):
                    if not isinstance(result, str):
                        tqdm.write(format_predictions(image, result, as_json), file=sys.stdout)
            bar.update(len(batch.images))


def format_predictions(image: str, predictions: list[tuple[str, float]], as_json: bool) -> str:
    """One JSON line, or the image name followed by one "probability  label" line per prediction."""
    if as_json:  # allow_nan=False: strict JSON, never NaN (predict reports non-finite logits as a failure)
        return json.dumps({"image": image, "predictions": [{"label": label, "probability": p}
                                                           for label, p in predictions]}, allow_nan=False)
    return "\n".join([shown(image)] + [f"  {p:.4f}  {shown(label)}" for label, p in predictions])


def report_failures(failures: list[tuple[str, str]], total: int) -> int:
    """List the failures on stderr, one line each; the exit status: 1 if there were any, else 0."""
    if not failures:
        return 0
    print(f"{PROG}: {len(failures)} of {total} inputs failed:", file=sys.stderr)
    for image, message in failures:  # every message names its image already
        message = " ".join(message.splitlines())  # one line per failure, whatever the decoder said
        print(f"  {message}" if shown(image) in message else f"  {shown(image)}: {message}", file=sys.stderr)
    return 1


def files_from(path: str | None) -> list[str]:
    """--files-from: the paths in the file `path` (or standard input for "-"), one per line, blank lines skipped."""
    if path is None:
        return []
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8",
                                                                         errors="surrogateescape")
    except OSError as e:
        raise OSError(f"cannot read --files-from {shown(path)}: {e.strerror or e}") from None
    return [line for line in text.splitlines() if line.strip()]


def _require_images(args) -> None:
    if not (args.images or args.files_from):
        args.usage_error("give image files or folders, or --files-from FILE")


# --- distributed ------------------------------------------------------------------------------------------------

def add_distributed(sub, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("distributed", parents=parents, help="label a collection on a Dask cluster, into JSONL shards",
                       description="Label images on a Dask cluster (pip install 'levit-np[dask]'): one task per "
                                   "shard, each written to DIR/part-NNNNNN.jsonl when complete, with the lines of "
                                   "`predict --jsonl`. Paths and DIR must be the same on every worker.")
    p.add_argument("--output", required=True, metavar="DIR", help="the folder the shards go to")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="a running Dask scheduler: tcp://host:8786, or its scheduler file (.json)")
    where.add_argument("--local-cluster", type=_positive_int, metavar="N",
                       help="start a Dask cluster of N worker processes on this machine for the job")
    p.add_argument("--shard-size", type=_positive_int, default=None, metavar="IMAGES",
                   help="images per task, a multiple of --batch-size (default: 32 batches, fewer for a job too "
                        "small to give each worker 4 tasks)")
    p.add_argument("--embeddings", action="store_true",
                   help="also store each image's pooler_output (float32) in DIR/part-NNNNNN.npy")
    p.add_argument("--resume", action="store_true", help="continue DIR: skip the images its shards hold")
    p.add_argument("--retries", type=_non_negative_int, default=2, help="reruns of a task that raised (default: 2)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="threads per task (default: the worker's; cores // N with --local-cluster)")
    p.set_defaults(run=run_distributed, usage_error=p.error)


def run_distributed(args) -> int:
    _require_images(args)
    from .distributed import predict_dataset

    try:
        run = predict_dataset(args.images + files_from(args.files_from), args.output, scheduler=args.scheduler,
                              workers=args.local_cluster, model=args.model, backend=args.backend,
                              image_size=args.image_size, top_k=args.top_k, batch_size=args.batch_size,
                              shard_size=args.shard_size, embeddings=args.embeddings, resume=args.resume,
                              retries=args.retries, threads=args.threads, fast_decode=args.fast_decode,
                              progress=True)
    except ModuleNotFoundError as e:  # the dask extra is not installed
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    print(f"{run.labelled} images labelled into {len(run.shards)} shards in {shown(args.output)}"
          + (f" ({run.skipped} were done already)" if run.skipped else ""))
    status = report_failures(run.failures, run.images)
    if run.failed_shards:
        print(f"{PROG}: {len(run.failed_shards)} shards failed (rerun with --resume to retry them):", file=sys.stderr)
        for index, why in run.failed_shards:
            print(f"  shard {index}: {' '.join(why.splitlines())}", file=sys.stderr)
        status = 1
    return status


# --- info -------------------------------------------------------------------------------------------------------

def add_info(sub, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("info", parents=parents, help="describe a checkpoint and where its weights live",
                       description="Describe a checkpoint: its variant, architecture, parameter count, labels and "
                                   "input size, where its weights live, and what the fast path runs on this "
                                   "machine.")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help=f"Hub id, released variant ({', '.join(VARIANTS)}) or checkpoint directory (default: "
                        f"{DEFAULT_MODEL})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run_info)


def run_info(args) -> int:
    info = model_info(args.model, args.image_size)
    if args.json:
        print(json.dumps(info))
    else:
        print(info_text(info))
    return 0


def model_info(name: str, image_size=None) -> dict:
    """What `levit-np info` says of a checkpoint (at `image_size`) and of the fast path here."""
    from ..fast.report import fast_path_info

    path = resolve(name)
    model = from_pretrained(path, backend="numpy", image_size=image_size)
    c = model.config
    variant = next((v for v, kw in VARIANTS.items() if all(tuple(getattr(c, k)) == v2 for k, v2 in kw.items())),
                   None)
    weights = path / "model.safetensors"
    return {
        "model": str(name),
        "variant": f"LeViT-{variant}" if variant else None,
        "architecture": model.architecture,
        "hidden_sizes": list(c.hidden_sizes), "num_attention_heads": list(c.num_attention_heads),
        "depths": list(c.depths), "key_dim": list(c.key_dim),
        "image_size": c.image_size if isinstance(c.image_size, int) else list(c.image_size),  # S, or [h, w]
        "token_grids": [list(grid) for grid in c.resolutions],  # (rows, columns) per stage
        "parameters": int(model.num_parameters),
        "num_labels": c.num_labels,
        "labels": [c.id2label[i] for i in range(c.num_labels)],
        "weights": str(path.resolve()),
        "weights_bytes": weights.stat().st_size,
        "fast_path": fast_path_info(),
    }


def info_text(info: dict) -> str:
    """`model_info`'s dict as `levit-np info` prints it."""
    labels, fast = info["labels"], info["fast_path"]
    first = "; ".join(shown(label) for label in labels[:3]) + ("; ..." if len(labels) > 3 else "")
    image_size = tuple(info["image_size"]) if isinstance(info["image_size"], list) else info["image_size"]
    grids = info["token_grids"]
    return (f"model:         {info['model']}\n"
            f"variant:       {info['variant'] or 'custom (not one of the released variants)'}\n"
            f"architecture:  {info['architecture']}\n"
            f"config:        hidden_sizes {info['hidden_sizes']}, heads {info['num_attention_heads']}, "
            f"depths {info['depths']}, key_dim {info['key_dim']}\n"
            f"image size:    {size_text(image_size)} ({resize_text(image_size)}, center crop "
            f"{size_text(image_size)}); token grids {' -> '.join(size_text(g) for g in grids)}\n"
            f"parameters:    {info['parameters']:,} ({info['parameters'] / 1e6:.2f}M)\n"
            f"labels:        {len(labels)} ({first})\n"
            f"weights:       {info['weights']} (model.safetensors, {info['weights_bytes'] / 1e6:.1f} MB)\n"
            f"backend:       auto runs {fast['auto_backend']['float32']} (float32), "
            f"{fast['auto_backend']['float64']} (float64); `levit-np compile` compiles the kernels\n"
            f"numba:         {fast['threads']} threads, threading layer {fast['threading_layer']}, cache "
            f"{fast['numba_cache']}\n"
            f"micro-kernel:  {fast['micro_kernel']} for CPU {fast['cpu']}")


def size_text(size) -> str:
    """224 -> "224x224"; (448, 800) -> "448x800": height x width."""
    height, width = as_grid(size)
    return f"{height}x{width}"


def resize_text(image_size) -> str:
    """How preprocessing resizes an image before its center crop, in words."""
    if isinstance(image_size, int):
        return f"short side resized to {resize_short_side(image_size)}"
    return f"resized to cover {size_text(resize_box(image_size))}"


# --- fetch, compile ---------------------------------------------------------------------------------------------

def add_fetch(sub) -> None:
    p = sub.add_parser("fetch", help="download checkpoints from the Hugging Face Hub",
                       description="Download config.json + model.safetensors into the Hugging Face cache "
                                   "(HF_HOME / HF_HUB_CACHE), or into DIR/<name>/ with --dir.")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help=f"Hub ids or variants (default: the five released: {', '.join(VARIANTS)})")
    p.add_argument("--dir", default=None, help="download into DIR/<name>/ instead of the Hugging Face cache")
    p.set_defaults(run=run_fetch)


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


def add_compile(sub) -> None:
    p = sub.add_parser("compile", help="compile the numba backend's kernels for this CPU, once",
                       description="Compile the fast kernels now, into Numba's on-disk cache, so that every later "
                                   "run (and backend='auto') uses them from its first image.")
    p.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "float64"],
                   help="the precisions to compile (default: float32)")
    p.set_defaults(run=run_compile)


def run_compile(args) -> int:
    import time

    from ..fast import compiled

    for dtype in args.dtype:
        if compiled.is_compiled(dtype):
            print(f"{dtype}: already compiled, in {compiled.cache_dir()}")
            continue
        print(f"compiling the numba kernels ({dtype}) for this CPU...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        compiled.compile_kernels(dtype)
        print(f"{dtype}: compiled in {time.perf_counter() - t:.1f} s, cached in {compiled.cache_dir()}")
    return 0


# --- argument types ---------------------------------------------------------------------------------------------

def image_size_arg(text: str):
    """--image-size: "320" (320 x 320) or "448x800" (height x width) -> 320 or (448, 800), multiples of 16."""
    match = re.fullmatch(r"\s*(\d{1,6})\s*(?:[xX]\s*(\d{1,6})\s*)?", text, flags=re.ASCII)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected S or HEIGHTxWIDTH in pixels (e.g. 224 or 448x800), found "
                                         f"{text!r}")
    sides = [int(side) for side in match.groups() if side is not None]
    try:  # the same bounds as a config.json's image_size: 1..1024 per side, and the conv stem's multiples of 16
        return LevitConfig(image_size=sides[0] if len(sides) == 1 else tuple(sides)).image_size
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None


def _positive_int(text: str) -> int:
    """--top-k, --workers...: `checks.positive_int` as an argparse type."""
    return _integer(text, positive_int, "a positive integer")


def _non_negative_int(text: str) -> int:
    """--retries: `checks.non_negative_int` as an argparse type."""
    return _integer(text, non_negative_int, "a non-negative integer")


def _integer(text: str, check, kind: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind}, found {text!r}") from None
    try:
        return check(value, "the value")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind}, found {value}") from None
