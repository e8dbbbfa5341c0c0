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
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from . import __version__
from .config import VARIANTS, LevitConfig, as_grid
from .hub import DEFAULT_MODEL, RELEASED, fetch, resolve
from .model import from_pretrained
from .prediction import DEFAULT_BATCH_SIZE, load_model
from .preprocessing import check_image, resize_box, resize_short_side, shown

PROG = "levit-np"
FAST_DECODE_HELP = ("decode JPEGs at a reduced scale and resize with a reducing pass: several times faster on large "
                    "photos, NOT bit-exact with HF's preprocessing (docs/preprocessing.md)")


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

    p = sub.add_parser("predict", help="classify images (files or folders)",
                       description="Print the top-k ImageNet labels of each image, with softmax probabilities.")
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help="image files, or folders (searched recursively for files Pillow can read)")
    p.add_argument("--files-from", metavar="FILE", default=None,
                   help="read more image paths from FILE, one per line ('-': standard input)")
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
    p.add_argument("--image-size", type=image_size_arg, default=None, metavar="S|HxW",
                   help="run the model at this input size, S or HEIGHTxWIDTH in pixels (multiples of 16, e.g. "
                        "224x384); its attention biases are resized to it (default: the checkpoint's own size)")
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
    p.add_argument("--fast-decode", action="store_true", help=FAST_DECODE_HELP)
    p.set_defaults(run=run_predict, usage_error=p.error)

    p = sub.add_parser("info", help="describe a checkpoint and where its weights live")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"(default: {DEFAULT_MODEL})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--image-size", type=image_size_arg, default=None, metavar="S|HxW",
                   help="describe the model at this input size (token grids, preprocessing)")
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

    p = sub.add_parser("distributed", help="label a collection on a Dask cluster, into JSONL shards",
                       description="Label images on a Dask cluster (pip install 'levit-np[dask]'): one task per "
                                   "shard, each written to DIR/part-NNNNNN.jsonl when complete, with the lines of "
                                   "`predict --jsonl`. Paths and DIR must be the same on every worker.")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files, or folders (searched recursively)")
    p.add_argument("--files-from", metavar="FILE", default=None,
                   help="read more image paths from FILE, one per line ('-': standard input)")
    p.add_argument("--output", required=True, metavar="DIR", help="the folder the shards go to")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="a running Dask scheduler: tcp://host:8786, or its scheduler file (.json)")
    where.add_argument("--local-cluster", type=_positive_int, metavar="N",
                       help="start a Dask cluster of N worker processes on this machine for the job")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"as for predict (default: {DEFAULT_MODEL})")
    p.add_argument("--backend", default=None, choices=["auto", "numba", "numpy"], help="as for predict")
    p.add_argument("--image-size", type=image_size_arg, default=None, metavar="S|HxW", help="as for predict")
    p.add_argument("--top-k", type=_positive_int, default=5, help="labels per image (default: 5)")
    p.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE,
                   help=f"images per forward pass (default: {DEFAULT_BATCH_SIZE})")
    p.add_argument("--shard-size", type=_positive_int, default=None, metavar="IMAGES",
                   help="images per task, a multiple of --batch-size (default: 32 batches, fewer for a job too "
                        "small to give each worker 4 tasks)")
    p.add_argument("--embeddings", action="store_true",
                   help="also store each image's pooler_output (float32) in DIR/part-NNNNNN.npy")
    p.add_argument("--resume", action="store_true", help="continue DIR: skip the images its shards hold")
    p.add_argument("--retries", type=int, default=2, help="reruns of a task that raised (default: 2)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="threads per task (default: the worker's; cores // N with --local-cluster)")
    p.add_argument("--fast-decode", action="store_true", help=FAST_DECODE_HELP)
    p.set_defaults(run=run_distributed, usage_error=p.error)
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


def run_predict(args) -> int:
    from .labelling import JsonlOutput, LabelledBatch, batches, label_batches, unique

    if not (args.images or args.files_from):
        args.usage_error("give image files or folders, or --files-from FILE")
    if (args.resume or args.embeddings) and not args.jsonl:
        args.usage_error("--resume and --embeddings go with --jsonl FILE")
    images, failures, folder = collect_images(args.images + files_from(args.files_from))
    output = None
    if args.jsonl:  # one line per image: each image once, those already in a resumed file skipped
        images = unique(images)
        output = JsonlOutput(args.jsonl, resume=args.resume, embeddings=args.embeddings)
    total = len(images) + len(failures)  # each image, and each folder without images
    try:
        todo = images if output is None else [image for image in images if image not in output.done]
        skipped = len(images) - len(todo)
        if output is not None and args.resume and (skipped or output.partial_bytes):
            cut = f", a partial last line ({output.partial_bytes} bytes) cut off" if output.partial_bytes else ""
            print(f"{PROG}: resuming {shown(args.jsonl)}: {skipped} of {len(images)} images done{cut}",
                  file=sys.stderr)
        unreadable = {}
        for image in todo:  # cheap checks (the file exists) first: no model is loaded when nothing is readable
            try:
                check_image(image, name=shown(image))
            except (OSError, ValueError) as e:
                unreadable[image] = str(e)
        spec = {"model": args.model, "backend": args.backend}
        if args.image_size is not None:
            spec["image_size"] = args.image_size
        options = dict(top_k=args.top_k, batch_size=args.batch_size, embeddings=bool(args.embeddings),
                       fast_decode=args.fast_decode)
        if len(unreadable) == len(todo):
            source = (LabelledBatch(chunk, [unreadable[image] for image in chunk])
                      for chunk in batches(todo, args.batch_size))
        elif args.workers == 1:
            source = label_batches(load_model(**spec), todo, **options)
        else:
            from . import workers

            spec["model"] = str(resolve(args.model))  # found (or downloaded) once, here, not by every worker
            source = workers.label_batches(spec, todo, workers=args.workers, **options)
        from tqdm import tqdm

        with tqdm(total=len(images), initial=skipped, unit="img", file=sys.stderr,
                  disable=None if folder else True) as bar:
            for batch in source:
                if output is not None:
                    output.write(batch)
                else:
                    failures.extend(batch.failures)
                    for image, result in zip(batch.images, batch.results, strict=True):
                        if not isinstance(result, str):
                            tqdm.write(format_predictions(image, result, args.json), file=sys.stdout)
                bar.update(len(batch.images))
    finally:
        if output is not None:
            output.close()
    if output is not None:  # this run's failures and those of the runs it resumed
        wanted = set(images)
        failures += [(image, message) for image, message in output.failed if image in wanted]
    return report_failures(failures, total)


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


def run_distributed(args) -> int:
    if not (args.images or args.files_from):
        args.usage_error("give image files or folders, or --files-from FILE")
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


def image_files(folder: Path) -> list[str]:
    """Files under `folder` (recursively, hidden ones skipped) whose extension Pillow can open, sorted."""
    from PIL import Image

    Image.init()
    extensions = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    return sorted(str(f) for f in folder.rglob("*")
                  if f.suffix.lower() in extensions and f.is_file()
                  and not any(part.startswith(".") for part in f.relative_to(folder).parts))


def run_info(args) -> int:
    from .fast.report import fast_path_info

    path = resolve(args.model)
    model = from_pretrained(path, backend="numpy", image_size=args.image_size)
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
        "image_size": c.image_size if isinstance(c.image_size, int) else list(c.image_size),  # S, or [h, w]
        "token_grids": [list(grid) for grid in c.resolutions],  # (rows, columns) per stage
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
          f"image size:    {size_text(c.image_size)} ({resize_text(c.image_size)}, center crop "
          f"{size_text(c.image_size)}); token grids {' -> '.join(size_text(g) for g in c.resolutions)}\n"
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


def size_text(size) -> str:
    """224 -> "224x224"; (448, 800) -> "448x800": height x width."""
    height, width = as_grid(size)
    return f"{height}x{width}"


def resize_text(image_size) -> str:
    """How preprocessing resizes an image before its center crop, in words."""
    if isinstance(image_size, int):
        return f"short side resized to {resize_short_side(image_size)}"
    return f"resized to cover {size_text(resize_box(image_size))}"


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
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {value}")
    return value
