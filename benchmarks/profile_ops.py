"""Where the numba backend spends its time: per layer function and per Numba kernel, at one batch size.

    python benchmarks/profile_ops.py --variant 128S --batch 1 --threads 2
    python benchmarks/profile_ops.py --variant 256 --batch 32 --repeats 5

Random weights (only the shapes matter for time). Every public layer function of the numba backend and every parallel
kernel behind it is wrapped in a timer. The kernels call OpenBLAS for their GEMMs, so their time includes it; "NumPy
glue" is a function's time minus its kernels' (allocations, the strided-query gather); "forward" is what
levit_forward does around the layer calls (pooling, Python).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
from bench import FLOPS  # benchmarks/, this script's folder, is on sys.path

import levit_np
from levit_np.fast import blas, kernels
from levit_np.testing import random_checkpoint

PUBLIC = ("patch_embeddings", "attention", "attention_subsample", "mlp", "add", "classification_layer")
KERNELS = ("_conv_kernel", "_dense_blas_kernel", "_dense_packed_kernel", "_add_kernel", "_attention_kernel")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="128S", choices=sorted(FLOPS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="default: all cores")
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args(argv)
    if args.threads:
        levit_np.set_num_threads(args.threads)
    model = levit_np.from_pretrained(random_checkpoint(Path(tempfile.mkdtemp()) / args.variant, args.variant),
                                     backend="numba")
    x = np.random.default_rng(0).standard_normal((args.batch, 3, 224, 224), dtype=np.float32)
    t = time.perf_counter()
    while time.perf_counter() - t < 1.0:  # compile, then warm caches, threads and clocks up
        model(x)

    times, calls, stack = collections.defaultdict(float), collections.Counter(), []

    def timed(name, fn, public):
        def wrapper(*a, **kw):
            key = name if public else f"{stack[-1] if stack else '?'} / {name}"
            if public:
                stack.append(name)
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                times[key] += time.perf_counter() - t
                calls[key] += 1
                if public:
                    stack.pop()
        return wrapper

    originals = {k: getattr(kernels, k) for k in KERNELS}
    try:
        for k, fn in originals.items():
            setattr(kernels, k, timed(k, fn, False))  # the public functions look them up at call time
        model._ops = dataclasses.replace(model._ops, **{k: timed(k, getattr(model._ops, k), True) for k in PUBLIC})
        model(x)
        times.clear(), calls.clear()
        t = time.perf_counter()
        for _ in range(args.repeats):
            model(x)
        wall = (time.perf_counter() - t) / args.repeats
    finally:
        for k, fn in originals.items():
            setattr(kernels, k, fn)

    n = args.repeats
    print(f"LeViT-{args.variant}, batch {args.batch}, {blas.get_num_threads()} threads: {wall * 1e3:.2f} ms per "
          f"forward (mean of {n}), {FLOPS[args.variant] * args.batch / wall:.0f} GFLOP/s\n")
    print("| op | ms per forward | share | calls per forward |\n|---|---:|---:|---:|")
    for name in PUBLIC:
        if name not in times:
            continue
        print(f"| {name} | {times[name] / n * 1e3:.3f} | {times[name] / n / wall:.1%} | {calls[name] // n} |")
        inner = {k: v for k, v in times.items() if k.startswith(name + " / ")}
        for k, v in inner.items():
            print(f"| &nbsp;&nbsp;{k.split(' / ')[1]} | {v / n * 1e3:.3f} | {v / n / wall:.1%} | {calls[k] // n} |")
        if inner:
            rest = times[name] - sum(inner.values())
            print(f"| &nbsp;&nbsp;NumPy glue | {rest / n * 1e3:.3f} | {rest / n / wall:.1%} | |")
    rest = wall - sum(times[k] for k in PUBLIC) / n
    print(f"| forward (pooling, Python) | {rest * 1e3:.3f} | {rest / wall:.1%} | |")


if __name__ == "__main__":
    main()
