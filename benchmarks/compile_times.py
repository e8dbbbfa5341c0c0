"""How long Numba takes to compile the numba backend, kernel by kernel: run it in a fresh process.

    python benchmarks/compile_times.py                 # LeViT-128S, float32, an empty Numba cache
    python benchmarks/compile_times.py --dtype float64

Uses Numba's `numba:compile` events: each dispatcher's compile time is inclusive (it contains what it compiles of
the functions it calls); "self" subtracts the compiles nested inside it. Random weights (only the shapes matter).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="128S")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--keep-cache", action="store_true", help="use the usual Numba cache instead of an empty one")
    args = ap.parse_args(argv)
    if not args.keep_cache:
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="levit-numba-cache-")

    import numpy as np
    from numba.core import event

    import levit_np
    from levit_np.fast.jit import SOURCE_HASH
    from levit_np.testing import random_checkpoint

    path = random_checkpoint(tempfile.mkdtemp(prefix="levit-"), args.variant)
    model = levit_np.from_pretrained(path, backend="numba", dtype=args.dtype)
    x = np.zeros((1, 3, *model.config.image_shape), args.dtype)

    spans, stack = [], []

    class Listener(event.Listener):
        def on_start(self, ev):
            name = ev.data["dispatcher"].py_func.__qualname__.removesuffix(f"_{SOURCE_HASH}")  # (jit.py names)
            stack.append((name, time.perf_counter(), []))

        def on_end(self, ev):
            name, t0, children = stack.pop()
            total = time.perf_counter() - t0
            spans.append((name, total, total - sum(children)))
            if stack:
                stack[-1][2].append(total)

    t = time.perf_counter()
    with event.install_listener("numba:compile", Listener()):
        model(x)
    wall = time.perf_counter() - t
    print(f"LeViT-{args.variant} {args.dtype}, first call: {wall:.2f} s, of which Numba compiled "
          f"{sum(s for _, _, s in spans):.2f} s in {len(spans)} compilations\n")
    print("| function | inclusive s | self s |\n|---|---:|---:|")
    for name, total, own in sorted(spans, key=lambda s: -s[1]):
        print(f"| {name} | {total:.2f} | {own:.2f} |")


if __name__ == "__main__":
    main()
