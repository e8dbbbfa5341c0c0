"""CPU inference speed of levit-np against HF Transformers (PyTorch eager) and ONNX Runtime, as a markdown table.

    python benchmarks/bench.py                    # 128S and 256, batch 1 and 32, all cores, + 1-thread scaling,
                                                  # peak RSS and cold start (about 5 minutes on 2 cores)
    python benchmarks/bench.py --quick            # a rough table in about a minute
    python benchmarks/bench.py --threads 2 --repeats 20 --variants 128S --batches 1 8 32 --contenders numba ort

All contenders run in this one process on the same random-weight checkpoint (random weights time the same as real
ones), with the same thread count, in float32 at 224 px, and are timed in turn -- a few calls of A, a few of B, ...,
then A again -- so that a noisy neighbour slows them alike; each figure is the median of the timed calls.
  numpy   levit_np, backend="numpy" (the readable reference)
  numba   levit_np, backend="numba" (the fast path, the default)
  hf      transformers' LevitForImageClassificationWithTeacher, eager PyTorch under torch.inference_mode()
  ort     ONNX Runtime (CPUExecutionProvider, all graph optimisations) on that HF model exported with
          torch.onnx.export
GFLOP/s counts 0.61 GFLOP per image for LeViT-128S and 2.25 for LeViT-256 (the paper's FLOPs, as multiply-adds x 2).
Peak RSS is that of a fresh process which imports, loads and runs one call at that batch size. Cold start is
import + load + first call of the numba backend in a fresh process, with an empty and then a warm Numba cache.
The arithmetic ceiling is our float32 micro-kernel on L1-resident data on every thread at once (`fma_peak`); the table
ends with the share of it that twice HF eager's speed would take.
Needs the `bench` and `test` extras: pip install -e ".[test,bench]".
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FLOPS = {"128S": 0.61, "128": 0.81, "192": 1.31, "256": 2.25, "384": 4.70}  # GFLOP per 224 px image
CONTENDERS = ("numpy", "numba", "hf", "ort")
LABELS = {"numpy": "levit_np numpy", "numba": "levit_np numba", "hf": "HF eager (PyTorch)", "ort": "ONNX Runtime"}
ROOT = Path(__file__).resolve().parent.parent


def build_levit(variant: str, backend: str, path: Path | None = None):
    """levit_np model of `variant` with random weights (written to a temporary checkpoint unless `path` is given)."""
    import levit_np
    from levit_np.testing import random_checkpoint

    if path is None:
        path = random_checkpoint(Path(tempfile.mkdtemp(prefix=f"levit-{variant}-")), variant)
    return levit_np.from_pretrained(str(path), backend=backend)


# --- contenders: each a callable pixel_values (np.ndarray) -> logits ---------------------------------------------

def load_contender(name: str, ckpt: Path, onnx_path: Path, threads: int):
    if name in ("numpy", "numba"):
        import levit_np

        model = build_levit("", name, ckpt)
        if name == "numba":
            return lambda x: model(x).logits

        def numpy_backend(x):
            levit_np.set_num_threads(threads)  # NumPy's BLAS threads: the numba backend sets them to 1 when it runs
            return model(x).logits
        return numpy_backend
    if name == "hf":
        import torch
        import transformers

        transformers.logging.set_verbosity_error()  # our checkpoint has no num_batches_tracked buffers: HF says so
        torch.set_num_threads(threads)
        model = transformers.LevitForImageClassificationWithTeacher.from_pretrained(str(ckpt)).eval()

        def hf(x):
            with torch.inference_mode():
                return model(torch.from_numpy(x)).logits.numpy()
        return hf
    if name == "ort":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        return lambda x: sess.run(None, {"pixel_values": x})[0]
    raise ValueError(name)


def export_onnx(ckpt: Path, onnx_path: Path) -> Path:
    """The HF model, exported with torch.onnx.export (the TorchScript exporter, opset 17, dynamic batch)."""
    import warnings

    import torch
    import transformers

    transformers.logging.set_verbosity_error()

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            return self.m(pixel_values).logits

    model = Logits(transformers.LevitForImageClassificationWithTeacher.from_pretrained(str(ckpt))).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(onnx_path), input_names=["pixel_values"],
                          output_names=["logits"], dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
    return onnx_path


def set_threads(n: int) -> None:
    import torch

    import levit_np

    levit_np.set_num_threads(n)  # Numba's threads (and NumPy's BLAS threads)
    torch.set_num_threads(n)


# --- measurement --------------------------------------------------------------------------------------------------

def time_in_turn(fns: dict, x: np.ndarray, repeats: int, budget_s: float, block: int = 3,
                 warm_s: float = 0.25) -> dict[str, list[float]]:
    """Time the contenders in turn, `block` calls at a time (A A A, B B B, ..., A A A, ...), until each has `repeats`
    timed calls or has spent `budget_s` on them. Returns seconds per call by name.

    Every runtime here parks its idle worker threads by spinning for a while (OpenMP, OpenBLAS, ONNX Runtime): on a
    2-core machine the last runtime's spinners would steal the cores of the next. So each block starts after a pause,
    then runs untimed calls for `warm_s` (caches, thread pools and clocks back up to speed); a contender slower than
    a second per call gets blocks of one call and no warm-up.
    """
    times = {k: [] for k in fns}

    def more(k):
        return len(times[k]) < repeats and sum(times[k]) < budget_s

    while any(more(k) for k in fns):
        for k, f in fns.items():
            if not more(k):
                continue
            time.sleep(0.3)
            slow = bool(times[k]) and statistics.median(times[k]) > 1.0
            t = time.perf_counter()
            while not slow and time.perf_counter() - t < warm_s:
                f(x)
            for _ in range(1 if slow else block):
                t = time.perf_counter()
                f(x)
                times[k].append(time.perf_counter() - t)
    return times


def check_agreement(fns: dict, x: np.ndarray) -> dict[str, float]:
    """Worst relative difference of each contender's logits from HF's (they share the weights); also warms up."""
    outs = {k: np.asarray(f(x), np.float64) for k, f in fns.items()}
    ref = outs.get("hf", next(iter(outs.values())))
    return {k: float(np.abs(v - ref).max() / max(1.0, np.abs(ref).max())) for k, v in outs.items()}


def fma_peak(threads: int, seconds: float = 1.0) -> float:
    """GFLOP/s of levit_np's float32 micro-kernel on `threads` threads at once, each on its own L1-resident
    MICRO_ROWS x 128 times 128 x PANEL product: the arithmetic ceiling of these cores for the tile Numba compiles for
    (in L1 the micro-kernel runs at the FMA units' rate). No forward pass can run faster on the same threads."""
    import numba

    from levit_np.fast.llvm_ir import MICRO_ROWS, micro_gemm
    from levit_np.fast.weights import PANEL

    @numba.njit(parallel=True)
    def spin(x, panels, out, calls):
        for t in numba.prange(x.shape[0]):
            for _ in range(calls):
                micro_gemm(x[t], panels[t], out[t])

    K, rows, cols = 128, MICRO_ROWS, PANEL
    rng = np.random.default_rng(0)
    x = rng.standard_normal((threads, rows, K), dtype=np.float32)
    panels = rng.standard_normal((threads, K, cols), dtype=np.float32)
    out = np.empty((threads, rows, cols), np.float32)
    numba.set_num_threads(threads)
    spin(x, panels, out, 10)
    calls, best = 1000, 0.0
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        spin(x, panels, out, calls)
        best = max(best, threads * calls * 2 * rows * K * cols / (time.perf_counter() - t) / 1e9)
    return best


def _child(code: str, env: dict | None = None) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, cwd=str(ROOT))
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child process failed:\n{out.stderr[-2000:]}")
    return out.stdout.strip().splitlines()[-1]


def peak_rss_mib(name: str, ckpt: Path, onnx_path: Path, batch: int, threads: int) -> float:
    """Peak resident memory of a fresh process that imports, loads and runs one call of `name` at `batch`."""
    code = (f"import sys, numpy as np; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            f"import bench\n"
            f"f = bench.load_contender({name!r}, bench.Path({str(ckpt)!r}), bench.Path({str(onnx_path)!r}), "
            f"{threads})\n"
            f"f(np.zeros(({batch}, 3, 224, 224), np.float32))\n"
            f"print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))")
    # (not getrusage's ru_maxrss: Linux carries the parent's peak over fork and exec into the child's)
    try:
        return int(_child(code, {"NUMBA_NUM_THREADS": str(threads)})) / 1024  # KiB -> MiB
    except (RuntimeError, StopIteration, OSError):
        return float("nan")


def cold_start(ckpt: Path, threads: int) -> list[tuple[str, dict]]:
    """import + load + first call (batch 1) in fresh processes, each backend choice with an empty, then a warm Numba
    cache: "numba" compiles in the foreground; "auto" answers with numpy while it compiles in the background."""
    code = ("import sys, time; t0 = time.perf_counter()\n"
            "import numpy as np, levit_np; t1 = time.perf_counter()\n"
            f"m = levit_np.from_pretrained({str(ckpt)!r}, backend=sys.argv[1]); t2 = time.perf_counter()\n"
            "x = np.zeros((1, 3, 224, 224), np.float32); m(x); t3 = time.perf_counter(); used = m.backend\n"
            "m(x); t4 = time.perf_counter()\n"
            "print(t1 - t0, t2 - t1, t3 - t2, t4 - t3, used)")
    rows = []
    for backend in ("numba", "auto"):
        cache = tempfile.mkdtemp(prefix="levit-numba-cache-")
        for label in ("empty Numba cache", "warm Numba cache"):
            env = {"NUMBA_CACHE_DIR": cache, "NUMBA_NUM_THREADS": str(threads), "LEVIT_NP_BACKGROUND_COMPILE": "0"}
            if label.startswith("warm"):  # fill it first, as `levit-np compile` does
                _child("import levit_np.fast.compiled as c; c.compile_kernels('float32'); print('ok')", env)
            *times, used = _child(code.replace("sys.argv[1]", repr(backend)), env).split()
            imp, load, first, second = map(float, times)
            rows.append((f"backend={backend!r}, {label} (ran {used})",
                         dict(imp=imp, load=load, first=first, second=second)))
    return rows


def machine() -> str:
    import numba
    import onnxruntime
    import torch
    import transformers

    cpu, flags = platform.machine(), ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    except (OSError, StopIteration):
        pass
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return (f"{cpu}, {os.cpu_count()} cores ({isa}), {platform.system()} {platform.release()}; Python "
            f"{platform.python_version()}, NumPy {np.__version__} (OpenBLAS), Numba {numba.__version__} "
            f"(threading layer {numba.threading_layer()}), torch {torch.__version__}, transformers "
            f"{transformers.__version__}, onnxruntime {onnxruntime.__version__}")


def main(argv=None):
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' per-load "Loading weights" bars
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["128S", "256"], choices=sorted(FLOPS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every contender (default: all)")
    ap.add_argument("--repeats", type=int, default=12, help="timed calls per contender and setting (default 12)")
    ap.add_argument("--budget", type=float, default=4.0,
                    help="seconds of timed calls per contender and setting, after which it stops (default 4)")
    ap.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    ap.add_argument("--no-scaling", action="store_true", help="skip the 1-thread run")
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-RSS child processes")
    ap.add_argument("--no-cold-start", action="store_true", help="skip the cold-start child processes")
    ap.add_argument("--quick", action="store_true", help="6 repeats, 2 s budget, no scaling, RSS or cold start")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.budget, args.no_scaling, args.no_rss, args.no_cold_start = 6, 2.0, True, True, True
    if "ort" in args.contenders and "hf" not in args.contenders:
        ap.error("ort runs the exported HF model: keep hf among the contenders")
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    thread_counts = [args.threads] + ([1] if args.threads > 1 and not args.no_scaling else [])

    from levit_np.testing import random_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="levit-bench-"))
    rows, cold = [], None
    for variant in args.variants:
        ckpt = random_checkpoint(tmp / variant, variant)
        onnx_path = tmp / f"{variant}.onnx"
        if "ort" in args.contenders:
            export_onnx(ckpt, onnx_path)
        for threads in thread_counts:
            set_threads(threads)
            fns = {name: load_contender(name, ckpt, onnx_path, threads) for name in args.contenders}
            for batch in args.batches:
                x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224), dtype=np.float32)
                agree = check_agreement(fns, x)
                bad = {k: v for k, v in agree.items() if not v <= 1e-4}
                assert not bad, f"contenders' logits disagree with HF's on {variant}: {bad}"
                for name, ts in time_in_turn(fns, x, args.repeats, args.budget).items():
                    rows.append(dict(variant=variant, batch=batch, threads=threads, name=name,
                                     ms=statistics.median(ts) * 1e3, n=len(ts), err=agree[name]))
                    print(f"# LeViT-{variant} batch {batch}, {threads} threads, {name}: {rows[-1]['ms']:.2f} ms "
                          f"(median of {len(ts)})", file=sys.stderr, flush=True)
            del fns
        if not args.no_rss:
            for batch in args.batches:
                for name in args.contenders:
                    rss = peak_rss_mib(name, ckpt, onnx_path, batch, args.threads)
                    for r in rows:
                        if (r["variant"], r["batch"], r["name"]) == (variant, batch, name):
                            r["rss"] = rss
        if cold is None and not args.no_cold_start and "numba" in args.contenders:
            cold = (variant, cold_start(ckpt, args.threads))
    peak = fma_peak(args.threads)
    print(render(rows, args, thread_counts, cold, peak))


def render(rows, args, thread_counts, cold, peak) -> str:
    def get(v, b, t, n):
        return next((r for r in rows if (r["variant"], r["batch"], r["threads"], r["name"]) == (v, b, t, n)), None)

    T, scaling = args.threads, len(thread_counts) > 1
    lines = [f"Machine: {machine()}.", "",
             f"{T} threads for every contender; float32, 224 px, random weights; median of up to {args.repeats} "
             f"calls per contender, timed in turn.", ""]
    head = ["model", "batch", "backend", "ms / call", "img/s", "vs HF eager", "vs ORT", "GFLOP/s", "peak RSS (MiB)"]
    if scaling:
        head.append(f"1 → {T} threads")
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
    for v in args.variants:
        for b in args.batches:
            hf, ort = get(v, b, T, "hf"), get(v, b, T, "ort")
            for name in args.contenders:
                r, one = get(v, b, T, name), get(v, b, 1, name)
                rss = r.get("rss", float("nan"))
                cells = [f"LeViT-{v}", str(b), LABELS[name], f"{r['ms']:.1f}" if r["ms"] >= 10 else f"{r['ms']:.2f}",
                         f"{b / r['ms'] * 1e3:.0f}",
                         f"{hf['ms'] / r['ms']:.2f}x" if hf else "-", f"{ort['ms'] / r['ms']:.2f}x" if ort else "-",
                         f"{FLOPS[v] * b / r['ms'] * 1e3:.0f}", "-" if rss != rss else f"{rss:.0f}"]
                if scaling:
                    cells.append(f"{one['ms'] / r['ms']:.2f}x" if one else "-")
                lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Arithmetic ceiling (`fma_peak`: the float32 micro-kernel in L1 on {T} threads): "
              f"{peak:.0f} GFLOP/s. Twice HF eager's speed would take, over the whole forward:", ""]
    for v in args.variants:
        for b in args.batches:
            hf = get(v, b, T, "hf")
            if hf:
                need = 2 * FLOPS[v] * b / hf["ms"] * 1e3
                lines.append(f"- LeViT-{v}, batch {b}: {need:.0f} GFLOP/s, {need / peak:.0%} of the ceiling")
    if cold:
        variant, measured = cold
        lines += ["", f"Cold start, LeViT-{variant} (fresh process, batch 1):", "",
                  "| backend, Numba cache | import levit_np | from_pretrained | first call | second call |",
                  "|---|---:|---:|---:|---:|"]
        for label, c in measured:
            lines.append(f"| {label} | {c['imp']:.2f} s | {c['load']:.2f} s | {c['first']:.2f} s | "
                         f"{c['second'] * 1e3:.1f} ms |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
