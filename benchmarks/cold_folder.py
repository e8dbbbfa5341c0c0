"""A folder of photos on a fresh install: `levit-np predict FOLDER` end to end, whole process, by backend and cache.

    python benchmarks/cold_folder.py                    # 500 photos, LeViT-128S (random weights), 2 runs each
    python benchmarks/cold_folder.py --images 50 --runs 3

Each run is a fresh `levit-np predict FOLDER --json` process with its own Numba cache: empty (a fresh install) or
filled first by `levit-np compile` (a warm one). "auto" is the default backend (the numpy reference while the kernels
compile in a background process, numba once they are); "numba" compiles in the foreground first, as the default
did before; "numpy" never compiles. The photos are random JPEGs of assorted sizes (decoding and resizing them is part
of the job); the runs are interleaved, and the medians [ranges] of the wall times are printed as markdown.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

CASES = [("auto", "empty"), ("numba", "empty"), ("numpy", "empty"), ("auto", "warm"), ("numba", "warm")]


def make_photos(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = rng.integers(240, 640, size=2)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"photo_{i:04d}.jpg", quality=90)
    return folder


def run(ckpt: Path, photos: Path, backend: str, cache: str, tmp: Path, n: int) -> float:
    cache_dir = Path(tempfile.mkdtemp(prefix="levit-numba-cache-", dir=tmp))
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    cli = [sys.executable, "-m", "levit_np"]
    if cache == "warm":
        subprocess.run([*cli, "compile"], env=env, check=True, capture_output=True)
    t = time.perf_counter()
    out = subprocess.run([*cli, "predict", str(photos), "--model", str(ckpt), "--backend", backend, "--json"],
                         env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or len(lines) != n:
        raise RuntimeError(f"{backend}, {cache} cache: exit {out.returncode}, {len(lines)} lines\n{out.stderr[-2000:]}")
    # a background compile started by "auto" outlives the predict process: let it end before the next run
    while any(cache_dir.glob("levit_np-compiling-*")):
        time.sleep(0.5)
    return wall


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--variant", default="128S")
    args = ap.parse_args(argv)

    from levit_np.testing import random_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="levit-cold-folder-"))
    ckpt = random_checkpoint(tmp / args.variant, args.variant)
    photos = make_photos(tmp / "photos", args.images)
    walls = {case: [] for case in CASES}
    for _ in range(args.runs):
        for backend, cache in CASES:
            walls[(backend, cache)].append(run(ckpt, photos, backend, cache, tmp, args.images))
            print(f"# {backend}, {cache} cache: {walls[(backend, cache)][-1]:.1f} s", file=sys.stderr, flush=True)
    print(f"`levit-np predict FOLDER --json`, {args.images} JPEGs, LeViT-{args.variant}, {os.cpu_count()} cores, "
          f"whole process (median [range] of {args.runs} runs):\n")
    print("| backend | Numba cache | wall | images/s |\n|---|---|---:|---:|")
    for (backend, cache), ws in walls.items():
        m = statistics.median(ws)
        print(f"| {backend} | {cache} | {m:.1f} s [{min(ws):.1f}-{max(ws):.1f}] | {args.images / m:.0f} |")


if __name__ == "__main__":
    main()
