"""The CPU that Numba compiles for, and the shape of the float32 GEMM micro-kernel's tile on it.

The micro-kernel (`llvm_ir.micro_gemm`) keeps a rows x columns tile of c in vector registers for the whole k loop.
How big that tile may be depends on the instruction set Numba targets: the vector width (16 float32 lanes with
AVX-512, 8 with AVX/AVX2, 4 with SSE or NEON), the number of vector registers (32 with AVX-512 and on aarch64, 16 on
x86 below AVX-512) and whether there is a fused multiply-add. A tile that does not fit makes LLVM split the vectors
and spill the accumulators to the stack on every k step.

The target is Numba's own: NUMBA_CPU_NAME and NUMBA_CPU_FEATURES as `numba.config` reads them, else the host CPU and
its features (as Numba filters them: NUMBA_ENABLE_AVX=0 drops every avx* feature). What a (CPU, features) pair
means is LLVM's business: a CPU name implies features and features imply others (+avx512f brings AVX2 and FMA,
-avx takes AVX2 and AVX-512 with it). Rather than copy its tables, `isa` compiles one <16 x float> add and one fused
multiply-add for the target and reads the widest vector register and the FMA instruction off the assembly.

`TILE` is computed once, at import, for the real target; `tile_for(cpu, features, triple)` gives any other
target's (the tests compile the micro-kernel for AVX-512, AVX2, SSE and aarch64 with it).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import llvmlite.binding as ll

from .numba_internals import jit_target

ROWS = 6  # x rows per micro-kernel tile, on every target (see `choose_tile`)
MAX_VECTORS_PER_ROW = 4  # wider panels only pad narrow layers with more zero columns


@dataclass(frozen=True)
class Isa:
    """What the micro-kernel needs to know of an instruction set: float32 lanes per vector register, how many
    vector registers there are, and whether a fused multiply-add exists."""

    lanes: int
    registers: int
    fma: bool


@dataclass(frozen=True)
class Tile:
    """The micro-kernel's register tile: `rows` x (`vectors_per_row` vectors of `lanes` float32), `fma` or a multiply
    then an add. Its `columns` are the panel width (`weights.PANEL`)."""

    rows: int
    lanes: int
    vectors_per_row: int
    fma: bool = True

    @property
    def columns(self) -> int:
        return self.lanes * self.vectors_per_row

    @property
    def registers(self) -> int:
        # vector registers live in the k loop: the accumulators, one panel row, one broadcast of x, and without FMA
        # one product on its way to its accumulator
        return self.rows * self.vectors_per_row + self.vectors_per_row + 1 + (0 if self.fma else 1)


def numba_target() -> tuple[str, str, str]:
    """(triple, cpu, features) that Numba's JIT compiles for (`numba_internals.jit_target`)."""
    return jit_target()


_PROBE = """
define void @width(ptr %p) {
  %a = load <16 x float>, ptr %p, align 64
  %q = getelementptr float, ptr %p, i64 16
  %b = load <16 x float>, ptr %q, align 64
  %s = fadd <16 x float> %a, %b
  store <16 x float> %s, ptr %p, align 64
  ret void
}
define void @fused(ptr %p) {
  %a = load <16 x float>, ptr %p, align 64
  %q = getelementptr float, ptr %p, i64 16
  %b = load <16 x float>, ptr %q, align 64
  %f = call <16 x float> @llvm.fma.v16f32(<16 x float> %a, <16 x float> %b, <16 x float> %a)
  store <16 x float> %f, ptr %p, align 64
  ret void
}
declare <16 x float> @llvm.fma.v16f32(<16 x float>, <16 x float>, <16 x float>)
"""


def target_machine(triple: str, cpu: str, features: str):
    """An llvmlite TargetMachine for the target, at Numba's optimisation level 3."""
    if triple.split("-")[0] != ll.get_process_triple().split("-")[0]:
        ll.initialize_all_targets()  # a foreign target (the tests' aarch64)
        ll.initialize_all_asmprinters()
    else:
        ll.initialize_native_target()
        ll.initialize_native_asmprinter()
    return ll.Target.from_triple(triple).create_target_machine(cpu=cpu, features=features, opt=3)


def assembly(ir_text: str, triple: str, cpu: str, features: str) -> str:
    """The assembly that LLVM makes of a textual IR module for the target."""
    module = ll.parse_assembly(ir_text)
    module.triple = triple
    module.verify()
    return target_machine(triple, cpu, features).emit_assembly(module)


@functools.lru_cache
def isa(triple: str, cpu: str, features: str) -> Isa:
    """The vector width, register count and FMA of a target, read off the assembly of `_PROBE` compiled for it:
    the registers that its <16 x float> add uses, and whether its fused multiply-add became an instruction (or a
    libm call per lane)."""
    arch = triple.split("-")[0]
    if arch not in ("x86_64", "amd64", "aarch64", "arm64"):
        return Isa(4, 16, False)  # elsewhere, assume the least: 4-wide vectors, 16 registers, a multiply then an add
    width, fused = re.split(r"^fused:", assembly(_PROBE, triple, cpu, features), flags=re.MULTILINE)
    if arch in ("aarch64", "arm64"):
        return Isa(4, 32, re.search(r"\bfmla\b", fused) is not None)  # NEON: 32 128-bit registers
    lanes = 16 if "%zmm" in width else 8 if "%ymm" in width else 4  # x86-64 always has SSE2's 16 xmm registers
    return Isa(lanes, 32 if lanes == 16 else 16, "vfmadd" in fused)  # AVX-512 doubles the registers, too


def choose_tile(target: Isa) -> Tile:
    """The micro-kernel tile for an instruction set: ROWS rows, as many vectors per row as the registers hold.

    Each k step loads one panel row (vectors_per_row vectors) and broadcasts ROWS values of x, then does
    ROWS * vectors_per_row multiply-adds, so the accumulators are as many independent dependency chains. Six rows
    make that at least 12 chains, which covers the FMA latency times the FMA units of current cores (4-5 cycles x 2),
    and amortise each panel row over six rows of x. The vectors per row then fill the registers:
    6 * v + v + 1 (+ 1 without FMA) <= registers:

        AVX-512  32 zmm x 16 lanes: 6 x (4 x 16) = 6 x 64, 24 + 4 + 1 = 29 registers
        AVX2     16 ymm x  8 lanes: 6 x (2 x  8) = 6 x 16, 12 + 2 + 1 = 15 (BLIS's and OpenBLAS's Haswell sgemm tile)
        AVX      16 ymm, no FMA:    6 x (2 x  8) = 6 x 16, 12 + 2 + 1 + 1 = 16
        SSE      16 xmm, no FMA:    6 x (2 x  4) = 6 x  8, 16 (4 x 12 would need 17)
        NEON     32 v   x  4 lanes: 6 x (4 x  4) = 6 x 16, 29: LeViT's widths are multiples of 16, so its panels
                                    carry no padding (8 x 12 would pad 128 columns to 132)
    """
    spare = 0 if target.fma else 1
    vectors = min(MAX_VECTORS_PER_ROW, (target.registers - 1 - spare) // (ROWS + 1))
    return Tile(ROWS, target.lanes, max(1, vectors), target.fma)


def tile_for(cpu: str, features: str, triple: str | None = None) -> Tile:
    """The micro-kernel tile for a CPU name and LLVM feature string ('+avx2,+fma,...'), on `triple` (default: this
    process's)."""
    return choose_tile(isa(triple or ll.get_process_triple(), cpu, features))


TRIPLE, CPU, FEATURES = numba_target()
TILE = tile_for(CPU, FEATURES, TRIPLE)  # the tile of the CPU Numba compiles for
