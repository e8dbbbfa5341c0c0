"""The float32 GEMM micro-kernel (levit_np/fast/llvm_ir.py) and the tile it takes from the target (fast/target.py).

- On this machine's target: the micro-kernel against NumPy float64, on strided views (the ragged edges are covered
  through the dense layers in tests/test_kernels.py).
- For AVX-512, AVX2, AVX without FMA, 128-bit SSE and aarch64 NEON: the tile chosen, and the micro-kernel's IR
  compiled for that target with llvmlite, whose k loop must keep every accumulator in a register (no stack access)
  and multiply-add at the full vector width, once per accumulator.
- Numba told to compile for Haswell (AVX2) and for Nehalem (SSE4.2) through NUMBA_CPU_NAME / NUMBA_CPU_FEATURES:
  a whole tiny model and some ragged dense layers against the numpy backend, in a fresh process with its own Numba
  cache. This machine runs that code natively, so this checks the narrower tiles' arithmetic, not just their
  assembly.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import llvmlite.binding as ll
import numba
import numpy as np
import pytest
from test_kernels import TINY

from levit_np.fast import llvm_ir, target, weights

JIT = not numba.config.DISABLE_JIT
X86 = "x86_64-unknown-linux-gnu"
AARCH64 = "aarch64-unknown-linux-gnu"
HASWELL = ("+64bit,+cmov,+cx16,+fxsr,+mmx,+popcnt,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+avx,+avx2,+bmi,+bmi2,"
           "+f16c,+fma,+lzcnt,+movbe,+xsave")
SKYLAKE_AVX512 = HASWELL + ",+adx,+aes,+avx512f,+avx512cd,+avx512bw,+avx512dq,+avx512vl,+clflushopt,+clwb,+pclmul," \
                           "+prfchw,+rdrnd,+rdseed,+xsavec,+xsaveopt,+xsaves"
NEHALEM = "+64bit,+cmov,+cx16,+fxsr,+mmx,+sse,+sse2,+sse3,+ssse3,+sse4.1,+sse4.2,+popcnt"

# name: (triple, cpu, features, the tile expected, the multiply-add instructions of its k loop (regex, count per
# accumulator))
TARGETS = {
    "avx512": (X86, "skylake-avx512", SKYLAKE_AVX512, target.Tile(6, 16, 4, True), [(r"vfmadd\d+ps\s.*%zmm", 1)]),
    "avx2": (X86, "haswell", HASWELL, target.Tile(6, 8, 2, True), [(r"vfmadd\d+ps\s.*%ymm", 1)]),
    # AVX without FMA, its features left to the CPU name (as NUMBA_CPU_FEATURES="" does)
    "avx": (X86, "sandybridge", "", target.Tile(6, 8, 2, False), [(r"\bvmulps\s.*%ymm", 1), (r"\bvaddps\s.*%ymm", 1)]),
    "sse": (X86, "nehalem", NEHALEM, target.Tile(6, 4, 2, False), [(r"\bmulps\s.*%xmm", 1), (r"\baddps\s.*%xmm", 1)]),
    "neon": (AARCH64, "neoverse-n1", "+neon", target.Tile(6, 4, 4, True), [(r"\bfmla\s+v\d+\.4s", 1)]),
}


def known(triple):
    try:
        ll.initialize_all_targets()
        ll.Target.from_triple(triple)
        return True
    except RuntimeError:
        return False


def k_loop(asm):
    """The lines of the one loop in `asm`: from a label to the conditional branch back to it."""
    lines = asm.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^(\.?L\w+):", line))}
    loops = [(labels[m.group(1)], i) for i, line in enumerate(lines)
             if (m := re.match(r"^\s+(?:j(?!mp)\w+|b\.\w+|cbn?z\s+\w+,)\s+(\.?L\w+)", line))
             and labels.get(m.group(1), i) < i]
    assert len(loops) == 1, f"expected one loop, found {len(loops)}:\n{asm}"
    start, end = loops[0]
    return [line for line in lines[start + 1:end + 1] if line.strip() and not line.lstrip().startswith((".", "#"))]


# --- this machine's target ------------------------------------------------------------------------------------------

def test_tile_of_this_target_fits_its_registers():
    isa = target.isa(target.TRIPLE, target.CPU, target.FEATURES)
    assert target.TILE == target.choose_tile(isa)
    assert target.TILE.registers <= isa.registers
    assert weights.PANEL == target.TILE.columns and llvm_ir.MICRO_ROWS == target.TILE.rows


def test_target_is_numbas():
    codegen = numba.core.registry.cpu_target.target_context.codegen()
    assert (target.CPU, target.FEATURES) == (codegen._get_host_cpu_name(), codegen._tm_features)


@pytest.mark.parametrize("K", [1, 2, 7, 300])
def test_micro_gemm_matches_float64(K):
    rows, cols = llvm_ir.MICRO_ROWS, weights.PANEL
    rng = np.random.default_rng(K)
    x = rng.standard_normal((rows + 3, K + 5), dtype=np.float32)[1:1 + rows, 2:2 + K]  # rows K + 5 apart
    panel = weights.pack_panels(rng.standard_normal((K, cols), dtype=np.float32)).data[0]  # (K, PANEL), aligned
    big = np.full((rows + 2, cols + 9), np.nan, np.float32)
    c = big[1:1 + rows, 4:4 + cols]  # rows cols + 9 apart
    llvm_ir.micro_gemm(x, panel, c)
    ref = x.astype(np.float64) @ panel.astype(np.float64)
    assert np.abs(c - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())
    c[...] = 0
    assert np.isnan(big).sum() == big.size - c.size  # nothing written outside the view


# --- each instruction set, compiled with llvmlite -------------------------------------------------------------------

@pytest.mark.parametrize("name", TARGETS)
def test_tile_per_instruction_set(name):
    triple, cpu, features, tile, _ = TARGETS[name]
    if not known(triple):
        pytest.skip(f"this LLVM has no {triple} target")
    assert target.tile_for(cpu, features, triple) == tile
    assert tile.registers <= target.isa(triple, cpu, features).registers


@pytest.mark.parametrize("name", TARGETS)
def test_k_loop_keeps_accumulators_in_registers(name):
    triple, cpu, features, tile, multiply_adds = TARGETS[name]
    if not known(triple):
        pytest.skip(f"this LLVM has no {triple} target")
    asm = target.assembly(llvm_ir.micro_kernel_ir(tile, triple), triple, cpu, features)
    loop = k_loop(asm)
    stack = re.compile(r"\((%rsp|%rbp)|\[sp\b")  # x86 (%rsp)/(%rbp) operands, aarch64 [sp, ...]
    spills = [line for line in loop if stack.search(line)]
    assert not spills, f"{name}: the k loop touches the stack:\n" + "\n".join(spills)
    for pattern, per_accumulator in multiply_adds:
        count = sum(1 for line in loop if re.search(pattern, line))
        assert count == per_accumulator * tile.rows * tile.vectors_per_row, (name, pattern, count, "\n".join(loop))
    if triple == X86 and not tile.fma:
        assert not any("vfmadd" in line for line in loop)


# --- Numba compiling for another instruction set, run on this machine ------------------------------------------------

CHILD = r"""
import json, sys
import numpy as np
import levit_np
from levit_np import layers
from levit_np.fast import kernels, target, weights
from test_kernels import Rand

def err(a, b):
    return float(np.abs(a.astype(np.float64) - b).max() / max(1.0, np.abs(b).max()))

x = np.random.default_rng(0).standard_normal((3, 3, 48, 48)).astype(np.float32)
ours = levit_np.from_pretrained(sys.argv[1], backend="numba", dtype="float32")(x, output_hidden_states=True,
                                                                                  output_attentions=True)
ref = levit_np.from_pretrained(sys.argv[1], backend="numpy", dtype="float32")(x, output_hidden_states=True,
                                                                                output_attentions=True)
errors = {name: err(getattr(ours, name), getattr(ref, name))
          for name in ("logits", "cls_logits", "distillation_logits", "last_hidden_state", "pooler_output")}
errors["hidden_states, attentions"] = max(err(a, b) for a, b in zip(ours.hidden_states + ours.attentions,
                                                                    ref.hidden_states + ref.attentions))
r = Rand(np.float32)
for M, K, N in [(1, 9, 3), (13, 20, 40), (300, 600, 70), (7, 5, 130)]:  # ragged rows and panels
    p, xs = r.linear_bn(K, N), r(M, K)
    errors[f"linear {M}x{K}x{N}"] = err(kernels.linear_bn(xs, **weights.fold_linear(**p), activate=True),
                                        layers.hardswish(layers.linear_bn(xs, **p)))
asm = "".join(kernels._dense_packed_kernel.dispatcher.inspect_asm().values())
t = target.TILE
print(json.dumps({"cpu": target.CPU, "tile": [t.rows, t.lanes, t.vectors_per_row, t.fma], "errors": errors,
                  "zmm": "%zmm" in asm, "ymm fma": bool(__import__("re").search(r"vfmadd\d+ps\s.*%ymm", asm))}))
"""


@pytest.fixture
def tiny(checkpoint):
    """A saved random TINY checkpoint (the whole-model fixture of tests/test_kernels.py)."""
    return checkpoint("LevitForImageClassificationWithTeacher", num_labels=5, **TINY)[1]


@pytest.mark.skipif(not JIT, reason="compiles nothing under NUMBA_DISABLE_JIT")
@pytest.mark.parametrize("name", ["avx2", "sse"])
def test_model_compiled_for_another_instruction_set(tiny, tmp_path, name):
    _, cpu, features, tile, _ = TARGETS[name]
    env = {**os.environ, "NUMBA_CPU_NAME": cpu, "NUMBA_CPU_FEATURES": features, "NUMBA_CACHE_DIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", CHILD, str(tiny)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["cpu"] == cpu
    assert result["tile"] == [tile.rows, tile.lanes, tile.vectors_per_row, tile.fma]
    assert not result["zmm"]  # Numba really compiled for the narrower target
    assert result["ymm fma"] == (name == "avx2")
    worst = max(result["errors"].values())
    assert worst <= 1e-5, result["errors"]
