"""Real photos end to end: decode + preprocess + LeViT-128S, in images per second, levit-np against the pipelines a
practitioner would build, as markdown.

    python benchmarks/photos.py                        # every contender and image set, 3 rounds (~10 min on 2 cores)
    python benchmarks/photos.py --sets 12mp inet --rounds 2 --contenders serial exact fast ceiling
    python benchmarks/photos.py --split                 # exact mode: preprocessing threads x model threads, 12mp+inet
    python benchmarks/photos.py --fidelity              # fast_decode's deviation from the exact pixel_values, per set

The photos are made from the project's two sample photos (examples/cat.jpg, the COCO two-cats PNG), resized to each
set's size with a little sensor-like noise so that they compress as photos do (a 12 MP JPEG at quality 90 is ~2 MB):
  12mp   4000 x 3000 JPEG        3mp    2000 x 1500 JPEG
  inet   500 x 375 JPEG (ImageNet / COCO size, ~0.2 MP)          png    2000 x 1500 PNG (no DCT-domain scaling)
Every contender runs the same random-weight LeViT-128S checkpoint (random weights time the same as real ones) on
all cores (torch, ONNX Runtime and Numba with the same thread count), each in a process of its own, started afresh
for each turn; the contenders take turns round by round, and the figure is the median of the rounds (range in
brackets). What is timed: from the first image's decode to the last image's logits, the model already loaded and
warmed up (the process start, imports and weights loading are not timed, except for exact --workers 2, whose
worker processes start inside the timed call, as they do for a user).

Contenders:
  serial        levit-np before parallel preprocessing: each batch's images preprocessed one after another on the
                calling thread (`preprocess_image`), then the numba forward pass
  exact         levit-np as `levit-np predict DIR --jsonl` runs it (`labelling.label_batches`): preprocessing on a
                pool of threads, pipelined with the model; bit-exact with HF's LevitImageProcessor
  fast          the same with fast_decode=True (not bit-exact)
  exact-w2      exact with --workers 2 (two processes, one thread each)
  ceiling       exact preprocessing alone (`preprocess_each` on all cores), no model: the most exact mode can reach
  hf            HF's pipeline("image-classification") at batch 32, its defaults (preprocessing on the calling thread)
  hf-dl         the same pipeline with num_workers=2 (a torch DataLoader of 2 worker processes preprocesses)
  dl-ort        a torch DataLoader (2 workers, PIL decode + HF's LevitImageProcessorPil) feeding ONNX Runtime
Needs the `bench` and `test` extras: pip install -e ".[test,bench]".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SOURCES = (ROOT / "examples" / "cat.jpg", ROOT.parent / "shared" / "data" / "coco_000000039769_cats.png")
SETS = {  # name -> (width, height, format, images)
    "12mp": (4000, 3000, "JPEG", 24),
    "3mp": (2000, 1500, "JPEG", 48),
    "inet": (500, 375, "JPEG", 256),
    "png": (2000, 1500, "PNG", 24),
}
CONTENDERS = ("serial", "exact", "fast", "exact-w2", "ceiling", "hf", "hf-dl", "dl-ort")
BATCH = 32
NOISE = 3.0  # standard deviation of the luminance noise, in uint8 steps


def make_photos(folder: Path, name: str) -> list[str]:
    """The set's photos in folder/name/ (made once), alternating between the two sample photos."""
    width, height, fmt, count = SETS[name]
    out = folder / name
    files = [out / f"{i:03d}.{'jpg' if fmt == 'JPEG' else 'png'}" for i in range(count)]
    if all(f.exists() for f in files):
        return [str(f) for f in files]
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sources = [Image.open(s).convert("RGB") for s in SOURCES if s.exists()]
    bases = [np.asarray(s.resize((width, height), Image.Resampling.BICUBIC), np.float32) for s in sources]
    for i, f in enumerate(files):
        noise = rng.normal(0, NOISE, (height, width, 1)).astype(np.float32)  # (H, W, 1): luminance noise
        image = Image.fromarray((bases[i % len(bases)] + noise).clip(0, 255).astype(np.uint8))
        image.save(f, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return [str(f) for f in files]


# --- contenders, each run in a process of its own: images -> seconds --------------------------------------------------

def run_contender(name: str, files: list[str], ckpt: str, onnx_path: str, threads: int,
                  preprocess_threads: int | None = None) -> float:
    """Load `name`, warm it up, then time it over `files` (seconds)."""
    if name in ("serial", "exact", "fast", "exact-w2", "ceiling"):
        import levit_np
        from levit_np.app import labelling, workers
        from levit_np.preprocessing import preprocess_each

        levit_np.set_num_threads(threads)
        model = levit_np.from_pretrained(ckpt, backend="numba")
        model(np.zeros((BATCH, 3, 224, 224), np.float32))  # warm-up (the kernels are compiled by the parent)
        start = time.perf_counter()
        if name == "serial":
            for i in range(0, len(files), BATCH):
                model(np.stack([serial_preprocess(f) for f in files[i:i + BATCH]]))
        elif name == "ceiling":
            for _ in preprocess_each(files, threads=threads):
                pass
        elif name == "exact-w2":
            spec = {"model": ckpt, "backend": "numba"}
            for _ in workers.label_batches_in_processes(spec, files, workers=2, batch_size=BATCH):
                pass
        else:
            for _ in labelling.label_batches(model, files, batch_size=BATCH, fast_decode=name == "fast",
                                             threads=preprocess_threads or threads):
                pass
        return time.perf_counter() - start
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(threads)
    if name in ("hf", "hf-dl"):
        pipe = transformers.pipeline("image-classification", model=ckpt, device=-1)
        kw = {"batch_size": BATCH, "num_workers": 2 if name == "hf-dl" else 0}
        list(pipe(files[:2], **kw))  # warm-up
        start = time.perf_counter()
        for _ in pipe(files, **kw):
            pass
        return time.perf_counter() - start
    if name == "dl-ort":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
        sess.run(None, {"pixel_values": np.zeros((BATCH, 3, 224, 224), np.float32)})  # warm-up
        loader = torch.utils.data.DataLoader(ProcessorDataset(files, ckpt), batch_size=BATCH, num_workers=2)
        start = time.perf_counter()
        for x in loader:
            sess.run(None, {"pixel_values": x.numpy()})
        return time.perf_counter() - start
    raise ValueError(name)


def serial_preprocess(path: str) -> np.ndarray:
    """levit-np's preprocessing before the thread pool: decode, resize, crop, then HF's rescale and normalize as
    float arithmetic on every pixel (since replaced by a table lookup giving the same numbers)."""
    from PIL import Image

    from levit_np.preprocessing import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        RESCALE_FACTOR,
        load_rgb,
        resize_box,
        resize_to_cover,
    )

    rgb = load_rgb(path)
    height, width = resize_to_cover(rgb.height, rgb.width, resize_box(224))
    resized = np.asarray(rgb.resize((width, height), Image.Resampling.BICUBIC))  # (H', W', 3) uint8
    top, left = (height - 224) // 2, (width - 224) // 2
    x = (resized[top:top + 224, left:left + 224].astype(np.float64) * RESCALE_FACTOR).astype(np.float32)
    x = (x - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))  # (3, 224, 224)


class ProcessorDataset:
    """A map-style dataset: path -> HF's pixel_values (3, 224, 224), PIL decode + LevitImageProcessorPil."""

    def __init__(self, files: list[str], ckpt: str):
        from transformers import LevitImageProcessorPil

        self.files = files
        self.processor = LevitImageProcessorPil.from_pretrained(ckpt)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.files[i]) as image:
            return self.processor(image.convert("RGB"), return_tensors="pt")["pixel_values"][0]


def child(name: str, files: list[str], ckpt: Path, onnx_path: Path, threads: int,
          preprocess_threads: int | None = None) -> float:
    """run_contender in a fresh process -> seconds."""
    request = json.dumps({"name": name, "files": files, "ckpt": str(ckpt), "onnx_path": str(onnx_path),
                          "threads": threads, "preprocess_threads": preprocess_threads})
    out = subprocess.run([sys.executable, __file__, "--child"], input=request, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"})
    if out.returncode:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


# --- the parent: checkpoint, photos, rounds, table -----------------------------------------------------------------

def prepare(tmp: Path) -> tuple[Path, Path]:
    """A random 128S checkpoint with HF's preprocessor config beside it, its ONNX export, the numba kernels
    compiled."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench import export_onnx
    from transformers import LevitImageProcessorPil

    import levit_np
    from levit_np.testing import random_checkpoint

    ckpt = random_checkpoint(tmp / "128S", "128S")
    LevitImageProcessorPil().save_pretrained(ckpt)  # what pipeline() and the DataLoader preprocess with
    onnx_path = export_onnx(ckpt, tmp / "128S.onnx")
    levit_np.from_pretrained(str(ckpt), backend="numba")(np.zeros((1, 3, 224, 224), np.float32))  # compile, cache
    return ckpt, onnx_path


def summary(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads per contender (default: all cores)")
    ap.add_argument("--split", action="store_true",
                    help="exact mode only: each (preprocessing threads, model threads) pair, to choose the split")
    ap.add_argument("--photos", default=str(Path(tempfile.gettempdir()) / "levit-np-photos"),
                    help="where the photos are made (kept between runs)")
    ap.add_argument("--fidelity", action="store_true",
                    help="no timing: fast_decode's deviation from the exact pixel_values, per set")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        request = json.loads(sys.stdin.read())
        print(run_contender(**request))
        return
    files = {name: make_photos(Path(args.photos), name) for name in args.sets}
    for name in args.sets:  # into the page cache, for every contender alike
        for f in files[name]:
            Path(f).read_bytes()
    if args.fidelity:
        print(fidelity(files))
        return
    tmp = Path(tempfile.mkdtemp(prefix="levit-photos-"))
    ckpt, onnx_path = prepare(tmp)
    if args.split:
        cells = [("serial", "serial", args.threads, None)]
        cells += [(f"exact, {p} preprocessing + {m} model threads", "exact", m, p)
                  for p in range(1, 2 * args.threads + 1) for m in range(1, args.threads + 1)]
    else:
        cells = [(name, name, args.threads, None) for name in args.contenders]
    seconds = {(label, s): [] for label, *_ in cells for s in args.sets}
    for r in range(args.rounds):
        for s in args.sets:
            for label, name, threads, pre in cells:
                seconds[label, s].append(child(name, files[s], ckpt, onnx_path, threads, pre))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(render(cells, args, files, seconds))


def fidelity(files: dict[str, list[str]]) -> str:
    """|exact - fast_decode| of pixel_values per set: the mean over all values, the largest value, and the largest
    per-image mean, in pixel_values units and in uint8 steps (one step is 1 / (255 std), ~0.017-0.0175)."""
    from levit_np.preprocessing import IMAGENET_STD, preprocess

    step = 1 / (255 * max(IMAGENET_STD))  # the smallest pixel_values difference one uint8 step makes
    lines = ["| set | images | mean abs. difference | worst image's mean | max abs. difference |",
             "|---|---:|---:|---:|---:|"]
    for name, paths in files.items():
        diff = np.abs(preprocess(paths) - preprocess(paths, fast_decode=True))  # (B, 3, 224, 224)
        per_image = diff.mean(axis=(1, 2, 3))
        lines.append(f"| {name} | {len(paths)} | {diff.mean():.4f} ({diff.mean() / step:.2f} steps) | "
                     f"{per_image.max():.4f} | {diff.max():.3f} ({diff.max() / step:.0f} steps) |")
    return "\n".join(lines)


def render(cells, args, files, seconds) -> str:
    import PIL

    lines = [f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
             f"{args.rounds} rounds; Pillow {PIL.__version__}, numpy {np.__version__}", "",
             "Images per second (median of the rounds, [range]); x serial: the median's ratio to `serial` "
             "(today's serial path) in the same run", ""]
    header = "| contender | " + " | ".join(f"{s} ({len(files[s])} images)" for s in args.sets) + " |"
    lines += [header, "|---|" + "---:|" * len(args.sets)]
    base = {s: statistics.median(seconds["serial", s]) for s in args.sets if ("serial", s) in seconds}
    for label, *_ in cells:
        row = []
        for s in args.sets:
            med, lo, hi = summary(seconds[label, s])
            n = len(files[s])
            text = f"{n / med:.1f} [{n / hi:.1f}-{n / lo:.1f}]"
            if s in base and label != "serial":
                text += f", {base[s] / med:.2f}x"
            row.append(text)
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
