"""CPU inference speed of levit-np against HF Transformers (PyTorch eager), ONNX Runtime and OpenVINO, as markdown.

    python benchmarks/bench.py                          # this CPU, idle: 128S and 256, batch 1 and 32 (~5 min)
    python benchmarks/bench.py --conditions native avx2 sse busy   # the issue-10 table: every condition (~25 min)
    python benchmarks/bench.py --quick --conditions avx2           # a rough reading in a few minutes
    python benchmarks/bench.py --threads 2 1 --variants 128S --batches 1 8 32 --contenders numba ort

Each contender runs in a process of its own (they would slow each other inside one), all on the same random-weight
checkpoint (random weights time the same as real ones), in float32 at 224 px with the same thread count. The
processes take turns: in each round every contender runs a block of calls (after a pause, so that the previous one's
spinning threads have gone to sleep, and a short untimed warm-up); the figure is the median of all timed calls and
the range is that of the rounds' medians.

Contenders:
  numpy     levit_np, backend="numpy" (the readable reference)
  numba     levit_np, backend="numba" (the fast path), on its default threading layer (TBB where installed)
  numba-omp the same on Numba's GNU OpenMP layer (NUMBA_THREADING_LAYER=omp)
  hf        transformers' LevitForImageClassificationWithTeacher, eager PyTorch under torch.inference_mode()
  ort       ONNX Runtime (CPUExecutionProvider, all graph optimisations) on the HF model exported by torch.onnx.export
  ov        OpenVINO on that ONNX file, INFERENCE_PRECISION_HINT=f32, LATENCY hint
  ov-auto   OpenVINO with its default precision (bf16 where the CPU has AMX or AVX-512 BF16: not float32 results)
Conditions:
  native    this CPU as it is, idle
  avx2      Numba compiles for Haswell (AVX2 + FMA, 16 vector registers); HF eager limited to AVX2 (MKL, ATen and
            oneDNN); SciPy's OpenBLAS as on Haswell. ONNX Runtime and OpenVINO cannot be limited: not run.
  sse       the same for 128-bit vectors (Nehalem: SSE4.2, no FMA; NEON's width)
  busy      native, with one other process spinning on a core (`python -c "while True: pass"`) the whole time
The arithmetic ceiling of a condition is our float32 micro-kernel on L1-resident data on every thread at once,
compiled for that condition's CPU (`fma_peak`); "% peak" is the numba backend's share of it. GFLOP/s counts 0.61
GFLOP per image for LeViT-128S and 2.25 for LeViT-256 (the paper's FLOPs, as multiply-adds x 2). Peak RSS is that of
the contender's process at the end (its largest batch). Cold start is import + load + first call in fresh processes
with an empty and then a warm Numba cache.
Needs the `bench` and `test` extras: pip install -e ".[test,bench]" (and `pip install openvino` for ov).
"""

from __future__ import annotations

import argparse
import contextlib
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

FLOPS = {"128S": 0.61, "128": 0.81, "192": 1.31, "256": 2.25, "384": 4.70}  # GFLOP per 224 px image
CONTENDERS = ("numpy", "numba", "numba-omp", "hf", "ort", "ov", "ov-auto")
DEFAULT_CONTENDERS = ("numba", "hf", "ort", "ov", "ov-auto")
LABELS = {"numpy": "levit_np numpy", "numba": "levit_np numba", "numba-omp": "levit_np numba, GNU OpenMP",
          "hf": "HF eager (PyTorch)", "ort": "ONNX Runtime",
          "ov": "OpenVINO f32", "ov-auto": "OpenVINO default (bf16 on AMX)"}
# contenders whose logits must agree with HF's to float32 rounding
FLOAT32 = {"numpy", "numba", "numba-omp", "hf", "ort", "ov"}
ROOT = Path(__file__).resolve().parent.parent

_X86 = "+64bit,+cmov,+cx16,+fxsr,+mmx,+popcnt,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3"
# condition -> (environment of the levit_np processes, environment of HF eager's, contenders it can limit)
CONDITIONS = {
    "native": ({}, {}, CONTENDERS),
    "avx2": ({"NUMBA_CPU_NAME": "haswell",
              "NUMBA_CPU_FEATURES": _X86 + ",+avx,+avx2,+bmi,+bmi2,+f16c,+fma,+lzcnt,+movbe,+xsave",
              "OPENBLAS_CORETYPE": "Haswell"},
             {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
             ("numpy", "numba", "numba-omp", "hf")),
    "sse": ({"NUMBA_CPU_NAME": "nehalem", "NUMBA_CPU_FEATURES": _X86, "OPENBLAS_CORETYPE": "Nehalem"},
            {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
            ("numpy", "numba", "numba-omp", "hf")),
    "busy": ({}, {}, CONTENDERS),
}


# --- contenders: each a callable pixel_values (np.ndarray) -> logits, built in its own process ----------------------

def load_contender(name: str, ckpt: Path, onnx_path: Path, threads: int):
    if name in ("numpy", "numba", "numba-omp"):
        import levit_np

        levit_np.set_num_threads(threads)
        model = levit_np.from_pretrained(str(ckpt), backend=name.split("-")[0])
        return lambda x: model(x).logits
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
    if name in ("ov", "ov-auto"):
        import openvino as ov

        props = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        if name == "ov":
            props["INFERENCE_PRECISION_HINT"] = "f32"
        compiled = ov.Core().compile_model(str(onnx_path), "CPU", props)
        request = compiled.create_infer_request()
        return lambda x: request.infer({0: x})[0].copy()
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


# --- the contender's process: `bench.py --worker NAME CKPT ONNX THREADS`, driven by JSON lines on stdin ----------

REPLY = "@bench "  # the prefix of the worker's replies on stdout; libraries may print other lines


def worker(name: str, ckpt: str, onnx_path: str, threads: int) -> None:
    """Load one contender, then answer the parent: {"run": batch, "calls": n, "warm_s": s} -> seconds per call;
    {"logits": batch} -> logits of the agreement input; {"peak": true} -> fma_peak; {"rss": true} -> peak RSS."""
    fn = load_contender(name, Path(ckpt), Path(onnx_path), threads)
    inputs = {}

    def x_of(batch):
        if batch not in inputs:
            inputs[batch] = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224), dtype=np.float32)
        return inputs[batch]

    def reply(obj):
        sys.stdout.write(REPLY + json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply({"ready": describe_process(name)})
    for line in sys.stdin:
        ask = json.loads(line)
        if "run" in ask:
            x = x_of(ask["run"])
            t = time.perf_counter()
            while time.perf_counter() - t < ask["warm_s"]:
                fn(x)
            times = []
            for _ in range(ask["calls"]):
                t = time.perf_counter()
                fn(x)
                times.append(time.perf_counter() - t)
            reply({"times": times})
        elif "logits" in ask:
            reply({"logits": np.asarray(fn(x_of(ask["logits"])), np.float64).tolist()})
        elif "peak" in ask:
            reply({"peak": fma_peak(threads)})
        elif "rss" in ask:  # VmHWM, not getrusage: Linux carries the parent's peak over fork and exec
            hwm = next((line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")), "nan")
            reply({"rss": float(hwm) / 1024})


def describe_process(name: str) -> str:
    if name not in ("numpy", "numba", "numba-omp"):
        return ""
    from levit_np.fast.report import fast_path_info

    info = fast_path_info()
    return f"{info['cpu']}, tile {info['micro_kernel']}, {info['threading_layer']}, BLAS {info['blas']}"


class Contender:
    """The parent's handle on one contender's process."""

    def __init__(self, name: str, condition: str, ckpt: Path, onnx_path: Path, threads: int, cache_root: Path):
        levit_env, hf_env, _ = CONDITIONS[condition]
        env = {**os.environ, "NUMBA_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
               "LEVIT_NP_BACKGROUND_COMPILE": "0"}
        env.update(hf_env if name == "hf" else levit_env if name in ("numpy", "numba", "numba-omp") else {})
        if name == "numba-omp":
            env["NUMBA_THREADING_LAYER"] = "omp"
        if "NUMBA_CPU_NAME" in env:  # an emulated CPU's kernels get a cache of their own, kept between runs
            env["NUMBA_CACHE_DIR"] = str(cache_root / env["NUMBA_CPU_NAME"])
        self.name, self.condition = name, condition
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", name, str(ckpt), str(onnx_path),
                                      str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env, cwd=str(ROOT))
        self.info = self._read()["ready"]

    def ask(self, **request):
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY):])
        raise RuntimeError(f"the {self.name} process ({self.condition}) ended: exit status {self.proc.wait()}")

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class BusyNeighbour:
    """One other process spinning on a core for as long as the `with` lasts."""

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


# --- measurement ------------------------------------------------------------------------------------------------

def measure(contenders: list[Contender], batch: int, rounds: int, block: int, budget_s: float,
            warm_s: float = 0.25) -> dict[str, list[list[float]]]:
    """Seconds per call of each contender, by round: in each round each contender runs `block` calls in turn (one,
    and no warm-up, when it takes more than a second a call), until `rounds` rounds or `budget_s` seconds of its
    calls. Every runtime here parks idle threads by spinning for a while (OpenMP, OpenBLAS, ONNX Runtime, OpenVINO):
    each block starts after a pause, so that the previous contender's spinners have gone to sleep."""
    times = {c.name: [] for c in contenders}
    for _ in range(rounds):
        for c in contenders:
            spent = sum(map(sum, times[c.name]))
            if spent >= budget_s:
                continue
            time.sleep(0.3)
            slow = bool(times[c.name]) and statistics.median(times[c.name][-1]) > 1.0
            times[c.name].append(c.ask(run=batch, calls=1 if slow else block, warm_s=0 if slow else warm_s)["times"])
    return times


def summary(rounds: list[list[float]]) -> dict:
    medians = [statistics.median(r) for r in rounds]
    return dict(ms=statistics.median([t for r in rounds for t in r]) * 1e3, lo=min(medians) * 1e3,
                hi=max(medians) * 1e3, n=sum(map(len, rounds)))


def run_condition(condition: str, args, ckpts: dict, cache_root: Path, rows: list, peaks: dict, infos: dict):
    names = [n for n in args.contenders if n in CONDITIONS[condition][2]]
    for threads in args.threads:
        for variant in args.variants:
            ckpt, onnx_path = ckpts[variant]
            contenders = []
            try:
                for name in names:
                    contenders.append(Contender(name, condition, ckpt, onnx_path, threads, cache_root))
                    infos[(condition, name)] = contenders[-1].info
                    print(f"# {condition}: {name} ready {contenders[-1].info}", file=sys.stderr, flush=True)
                by_name = {c.name: c for c in contenders}
                if (condition, threads) not in peaks and "numba" in by_name:
                    peaks[(condition, threads)] = by_name["numba"].ask(peak=True)["peak"]
                measured = []  # this variant's rows
                with BusyNeighbour() if condition == "busy" else contextlib.nullcontext():
                    for batch in args.batches:
                        agree = check_agreement(contenders, batch)
                        for name, rounds in measure(contenders, batch, args.rounds, args.block, args.budget).items():
                            r = dict(condition=condition, variant=variant, batch=batch, threads=threads, name=name,
                                     err=agree[name], **summary(rounds))
                            measured.append(r)
                            print(f"# {condition}, LeViT-{variant} batch {batch}, {threads} threads, {name}: "
                                  f"{r['ms']:.2f} ms [{r['lo']:.2f}-{r['hi']:.2f}] (n={r['n']})", file=sys.stderr,
                                  flush=True)
                rss = {c.name: c.ask(rss=True)["rss"] for c in contenders}  # each process's peak, its largest batch
                rows += [{**r, "rss": rss[r["name"]]} for r in measured]
            finally:
                for c in contenders:
                    c.close()


def check_agreement(contenders: list[Contender], batch: int) -> dict[str, float]:
    """Worst relative difference of each contender's logits from HF's (all share the weights); float32 contenders
    must agree to 1e-4 (float32 rounding over the whole network)."""
    outs = {c.name: np.array(c.ask(logits=batch)["logits"]) for c in contenders}
    ref = outs.get("hf", next(iter(outs.values())))
    errs = {k: float(np.abs(v - ref).max() / max(1.0, np.abs(ref).max())) for k, v in outs.items()}
    bad = {k: v for k, v in errs.items() if k in FLOAT32 and not v <= 1e-4}
    assert not bad, f"contenders' logits disagree with HF's: {bad}"
    return errs


def cold_start(ckpt: Path, threads: int) -> list[tuple[str, dict]]:
    """import + load + first call (batch 1) in fresh processes, each backend choice with an empty, then a warm Numba
    cache: "numba" compiles in the foreground; "auto"
    answers with numpy while it compiles in the background."""
    code = ("import sys, time; t0 = time.perf_counter()\n"
            "import numpy as np, levit_np; t1 = time.perf_counter()\n"
            f"m = levit_np.from_pretrained({str(ckpt)!r}, backend=sys.argv[1]); t2 = time.perf_counter()\n"
            "x = np.zeros((1, 3, 224, 224), np.float32); m(x); t3 = time.perf_counter(); used = m.backend\n"
            "m(x); t4 = time.perf_counter()\n"
            "print(t1 - t0, t2 - t1, t3 - t2, t4 - t3, used)")
    rows = []
    for backend, labels in (("numba", ("empty Numba cache", "warm Numba cache")),
                            ("auto", ("empty Numba cache", "warm Numba cache"))):
        cache = tempfile.mkdtemp(prefix="levit-numba-cache-")
        for label in labels:
            env = {"NUMBA_CACHE_DIR": cache, "NUMBA_NUM_THREADS": str(threads), "LEVIT_NP_BACKGROUND_COMPILE": "0"}
            if label.startswith("warm"):  # fill it first, as `levit-np compile` does
                _child("import levit_np.fast.compiled as c; c.compile_kernels('float32'); print('ok')", env)
            *times, used = _child(code, env, backend).split()
            imp, load, first, second = map(float, times)
            rows.append((f"backend={backend!r}, {label} (ran {used})",
                         dict(imp=imp, load=load, first=first, second=second)))
    return rows


def _child(code: str, env: dict, *argv: str) -> str:
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                         env={**os.environ, **env}, cwd=str(ROOT))
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child process failed:\n{out.stderr[-2000:]}")
    return out.stdout.strip().splitlines()[-1]


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
    isa += " + AMX" if "amx_tile" in flags else ""
    try:
        import openvino
        ov = f", openvino {openvino.__version__.split('-')[0]}"
    except ImportError:
        ov = ""
    return (f"{cpu}, {os.cpu_count()} cores ({isa}), {platform.system()} {platform.release()}; Python "
            f"{platform.python_version()}, NumPy {np.__version__}, Numba {numba.__version__}, torch "
            f"{torch.__version__}, transformers {transformers.__version__}, onnxruntime {onnxruntime.__version__}"
            f"{ov}")


def main(argv=None):
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' per-load "Loading weights" bars
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conditions", nargs="+", default=["native"], choices=list(CONDITIONS))
    ap.add_argument("--variants", nargs="+", default=["128S", "256"], choices=sorted(FLOPS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--threads", nargs="+", type=int, default=[os.cpu_count()],
                    help="thread counts, each contender the same (default: all cores)")
    ap.add_argument("--contenders", nargs="+", default=list(DEFAULT_CONTENDERS), choices=CONTENDERS)
    ap.add_argument("--rounds", type=int, default=6, help="rounds of turns (default 6)")
    ap.add_argument("--block", type=int, default=3, help="timed calls per contender and round (default 3)")
    ap.add_argument("--budget", type=float, default=6.0,
                    help="seconds of timed calls per contender and setting, after which it stops (default 6)")
    ap.add_argument("--no-cold-start", action="store_true", help="skip the cold-start child processes")
    ap.add_argument("--quick", action="store_true", help="3 rounds, 3 s budget, no cold start")
    ap.add_argument("--worker", nargs=4, metavar=("NAME", "CKPT", "ONNX", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        name, ckpt, onnx_path, threads = args.worker
        return worker(name, ckpt, onnx_path, int(threads))
    if args.quick:
        args.rounds, args.budget, args.no_cold_start = 3, 3.0, True
    if not {"ort", "ov", "ov-auto"}.isdisjoint(args.contenders) and "hf" not in args.contenders:
        ap.error("ort and ov run the exported HF model, and every contender is checked against HF: keep hf")

    from levit_np.testing import random_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="levit-bench-"))
    cache_root = Path(tempfile.gettempdir()) / "levit-np-bench-numba-cache"  # kept: emulated CPUs compile once
    ckpts = {}
    for variant in args.variants:
        ckpt = random_checkpoint(tmp / variant, variant)
        ckpts[variant] = (ckpt, export_onnx(ckpt, tmp / f"{variant}.onnx"))
    rows, peaks, infos = [], {}, {}
    for condition in args.conditions:
        run_condition(condition, args, ckpts, cache_root, rows, peaks, infos)
    cold = None
    if not args.no_cold_start and "numba" in args.contenders:
        cold = (args.variants[0], cold_start(ckpts[args.variants[0]][0], args.threads[0]))
    print(render(rows, args, peaks, infos, cold))


def render(rows, args, peaks, infos, cold) -> str:
    def get(c, v, b, t, n):
        return next((r for r in rows if (r["condition"], r["variant"], r["batch"], r["threads"], r["name"]) ==
                     (c, v, b, t, n)), None)

    def ms(x):
        return f"{x:.1f}" if x >= 10 else f"{x:.2f}"

    lines = [f"Machine: {machine()}.", "",
             f"float32, 224 px, random weights; each contender in its own process, {args.rounds} rounds of "
             f"{args.block} calls in turn; median of all calls [range of the rounds' medians].", ""]
    for condition in args.conditions:
        names = [n for n in args.contenders if n in CONDITIONS[condition][2]]
        levit_env, hf_env, _ = CONDITIONS[condition]
        lines += [f"### {condition}", ""]
        if levit_env or hf_env:
            lines += [f"levit_np: {' '.join(f'{k}={v}' for k, v in levit_env.items())}; HF eager: "
                      f"{' '.join(f'{k}={v}' for k, v in hf_env.items())}.", ""]
        if (condition, "numba") in infos:
            lines += [f"numba backend: {infos[(condition, 'numba')]}.", ""]
        for t in args.threads:
            peak = peaks.get((condition, t))
            if peak:
                lines += [f"Arithmetic ceiling, {t} threads (`fma_peak`): {peak:.0f} GFLOP/s.", ""]
            head = ["model", "batch", "threads", "contender", "ms / call [range]", "img/s", "vs HF eager", "vs ORT",
                    "vs OV f32", "GFLOP/s", "% peak", "peak RSS (MiB)", "logits vs HF"]
            lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * (len(head) - 4)) + "|"]
            for v in args.variants:
                for b in args.batches:
                    refs = {n: get(condition, v, b, t, n) for n in ("hf", "ort", "ov")}
                    for name in names:
                        r = get(condition, v, b, t, name)
                        if r is None:
                            continue
                        gflops = FLOPS[v] * b / r["ms"] * 1e3
                        vs = [f"{refs[n]['ms'] / r['ms']:.2f}x" if refs[n] else "-" for n in ("hf", "ort", "ov")]
                        rss = r.get("rss", float("nan"))
                        lines.append("| " + " | ".join([
                            f"LeViT-{v}", str(b), str(t), LABELS[name],
                            f"{ms(r['ms'])} [{ms(r['lo'])}-{ms(r['hi'])}]", f"{b / r['ms'] * 1e3:.0f}", *vs,
                            f"{gflops:.0f}", f"{gflops / peak:.0%}" if peak and name.startswith("numba") else "-",
                            "-" if rss != rss else f"{rss:.0f}", f"{r['err']:.1e}"]) + " |")
            lines.append("")
    if cold:
        variant, measured = cold
        lines += [f"Cold start, LeViT-{variant} (fresh process, batch 1):", "",
                  "| backend, Numba cache | import levit_np | from_pretrained | first call | second call |",
                  "|---|---:|---:|---:|---:|"]
        for label, c in measured:
            lines.append(f"| {label} | {c['imp']:.2f} s | {c['load']:.2f} s | {c['first']:.2f} s | "
                         f"{c['second'] * 1e3:.1f} ms |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
