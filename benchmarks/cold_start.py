"""What each cold-start mechanism of the fast path buys: the first call on an empty Numba cache, in a fresh process.

    python benchmarks/cold_start.py auto            # backend="auto" (background compile) against backend="numba"
    python benchmarks/cold_start.py tiles --tree /tmp/levit-a422584     # this tree against one without tiles.py
    python benchmarks/cold_start.py stem --tree /tmp/levit-43d2423      # a tree that had the two-process compile:
                                                                        # on (its default) and off

Each run is a fresh interpreter with an empty NUMBA_CACHE_DIR of its own that loads a random LeViT-128S (float32)
and times its first forward pass on one 224 x 224 image; the variants of a comparison run interleaved, --runs times
each. docs/cold-start.md holds the results and what was kept because of them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import levit_np
model = levit_np.from_pretrained(sys.argv[1], backend=sys.argv[2])
x = np.zeros((1, 3, 224, 224), np.float32)
t1 = time.perf_counter()
model(x)
t2 = time.perf_counter()
first = model.backend
while sys.argv[2] == "auto" and model.backend != "numba" and time.perf_counter() - t2 < 300:
    time.sleep(0.5)  # until the background compile is done (it would slow the next run down otherwise)
    model(x)
print(json.dumps({"load": t1 - t0, "first_call": t2 - t1, "backend": first, "numba_after": time.perf_counter() - t1,
                  "source": levit_np.__file__}))
"""


def run(root: Path, checkpoint: Path, backend: str, env: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="levit-cold-") as cache:
        full = {**os.environ, "PYTHONPATH": str(root), "NUMBA_CACHE_DIR": cache, **env}
        out = subprocess.run([sys.executable, "-c", CHILD, str(checkpoint), backend], capture_output=True,
                             text=True, env=full, cwd=cache, timeout=600)
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        found = json.loads(out.stdout.strip().splitlines()[-1])
        assert Path(found["source"]).is_relative_to(root), found["source"]
        return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mechanism", choices=["stem", "tiles", "auto"])
    ap.add_argument("--tree", type=Path, help="another source tree to compare (a git worktree of an older commit)")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from levit_np.testing import random_checkpoint

    checkpoint = random_checkpoint(Path(tempfile.mkdtemp(prefix="levit-128S-")), "128S")
    one_process = {"LEVIT_NP_PARALLEL_COMPILE": "0"}  # read by the trees that had the two-process compile
    if args.mechanism != "auto" and args.tree is None:
        ap.error(f"{args.mechanism} needs --tree: e.g. `git worktree add --detach /tmp/levit-a422584 a422584`")
    if args.mechanism == "stem":
        tree = args.tree.resolve()
        variants = {"with (2 processes)": (tree, "numba", {"LEVIT_NP_PARALLEL_COMPILE": "1"}),
                    "without (1 process)": (tree, "numba", one_process)}
    elif args.mechanism == "tiles":
        variants = {"with (this tree)": (REPO, "numba", one_process),
                    f"without ({args.tree})": (args.tree.resolve(), "numba", one_process)}
    else:
        variants = {"with (auto: numpy while compiling)": (REPO, "auto", {"LEVIT_NP_BACKGROUND_COMPILE": "1"}),
                    "without (numba, compiled first)": (REPO, "numba", {})}
    times = {name: [] for name in variants}
    for i in range(args.runs):
        for name, (root, backend, env) in variants.items():
            found = run(root, checkpoint, backend, env)
            times[name].append(found["first_call"])
            print(f"run {i + 1} {name:<40} first call {found['first_call']:6.2f} s ({found['backend']}), "
                  f"import + load {found['load']:.2f} s"
                  + (f", numba from {found['numba_after']:.2f} s" if backend == "auto" else ""), flush=True)
    for name, t in times.items():
        print(f"{name:<46} median {statistics.median(t):6.2f} s  [{', '.join(f'{v:.2f}' for v in t)}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
