"""Hand-written LLVM IR, through Numba's `@intrinsic`: the float32 GEMM micro-kernel and three one-liners.

`micro_gemm` multiplies MICRO_ROWS rows of x by one packed weight panel (`weights.Panels`, PANEL columns) with
its MICRO_ROWS x PANEL tile of c held in vector registers for the whole k loop, and streams the panel in the order
it was packed, once, at load. The tile is shaped by the CPU Numba compiles for (`target.TILE`: 6 x 64 with
AVX-512, 6 x 16 with AVX2 or NEON, 6 x 8 with SSE) so that its accumulators, one panel row and a broadcast of x fit
the vector registers. `emit_micro_kernel` writes its IR for any tile, so that the tests can compile it for other
targets too (`micro_kernel_ir`). `fast_max` and `pow2` let LLVM vectorise the softmax's max and exp, `clamp` the
Hardswish. Under NUMBA_DISABLE_JIT each has a plain-Python stand-in (`jit.py`).

The IR uses opaque pointers (`ptr`): loads and GEPs name their element types, and intrinsics are declared by name
and overloaded types, so that LLVM mangles them (`llvm.fma.v16f32`, `llvm.prefetch.p0`).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .jit import helper_or_stand_in, intrinsic_or_stand_in, python_clamp, python_max, python_micro_gemm, python_pow2
from .target import TILE, Tile
from .weights import PANEL

MICRO_ROWS = TILE.rows  # x rows per micro-kernel call
assert PANEL == TILE.columns  # the panels are packed as wide as the kernel's tile
CACHE_LINE = 64  # bytes
PREFETCH_ROWS = 32  # panel rows ahead that the micro-kernel asks the cache to fetch ...
PREFETCH_BYTES = 4096  # ... and no fewer bytes than this: a page, past which the hardware prefetchers do not run


def prefetch_distance(tile: Tile) -> int:
    """Panel rows between the row a k step reads and the one it prefetches: PREFETCH_ROWS steps ahead, or more for
    narrow panels, whose k steps are short."""
    return max(PREFETCH_ROWS, -(-PREFETCH_BYTES // (4 * tile.columns)))


def _declare_intrinsic(module, name, overloaded, fnty):
    # module.declare_intrinsic, which mangles the name from the overloaded types; llvmlite 0.50 cannot mangle a
    # vector type, so do it here as LLVM does (<16 x float> -> v16f32)
    try:
        return module.declare_intrinsic(name, overloaded, fnty)
    except AttributeError:
        suffix = ".".join(f"v{t.count}{t.element.intrinsic_name}" if isinstance(t, ir.VectorType)
                          else t.intrinsic_name for t in overloaded)
        name = f"{name}.{suffix}"
        return module.globals[name] if name in module.globals else ir.Function(module, fnty, name)


def emit_micro_kernel(builder, tile: Tile, x_addr, lda, panel_addr, K, c_addr, ldc):
    """Emit the micro-kernel at the builder's position; all arguments i64 values. One loop over k (K >= 1):
    c[r, :] = sum_k x[r, k] * panel[k, :] for r < tile.rows, the tile.rows x tile.vectors_per_row vectors of c in
    registers. x, panel, c: float32 addresses; lda, ldc: row strides in elements (panel rows are tile.columns
    apart). Each k: the panel row's vector loads and one prefetch per cache line of it, prefetch_distance rows
    ahead; per row r one broadcast of x[r, k] and a multiply-add per vector (fused if tile.fma). Leaves the builder
    after the loop."""
    f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
    ptr = ir.PointerType()
    vec = ir.VectorType(f32, tile.lanes)
    nv, cols = tile.vectors_per_row, tile.columns

    def const(n):
        return ir.Constant(i64, n)

    def at(base, index):  # &base[index], base a float32 pointer, index an i64 value
        return builder.gep(base, [index], source_etype=f32)

    if tile.fma:
        fma = _declare_intrinsic(builder.module, "llvm.fma", [vec], ir.FunctionType(vec, [vec] * 3))

        def multiply_add(a, b, c):
            return builder.call(fma, [a, b, c])
    else:  # no FMA unit: a multiply then an add (llvm.fma would become a libm call per lane)
        def multiply_add(a, b, c):
            return builder.fadd(builder.fmul(a, b), c)
    prefetch = _declare_intrinsic(builder.module, "llvm.prefetch", [ptr],
                                  ir.FunctionType(ir.VoidType(), [ptr, i32, i32, i32]))
    x0, p0, c0 = (builder.inttoptr(a, ptr) for a in (x_addr, panel_addr, c_addr))

    entry = builder.block
    loop, done = builder.append_basic_block("micro.k"), builder.append_basic_block("micro.done")
    builder.branch(loop)
    builder.position_at_end(loop)
    k = builder.phi(i64)
    k.add_incoming(const(0), entry)
    acc = []
    for _ in range(tile.rows * nv):
        acc.append(builder.phi(vec))
        acc[-1].add_incoming(ir.Constant(vec, [0.0] * tile.lanes), entry)
    row = builder.mul(k, const(cols))  # offset of panel row k
    ahead = builder.add(row, const(prefetch_distance(tile) * cols))
    for line in range(0, max(1, 4 * cols // CACHE_LINE)):  # read, keep in all levels, data
        builder.call(prefetch, [at(p0, builder.add(ahead, const(line * CACHE_LINE // 4))),
                                ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
    b = [builder.load(at(p0, builder.add(row, const(tile.lanes * v))), typ=vec, align=4) for v in range(nv)]
    new, undef = [], ir.Constant(vec, ir.Undefined)
    for r in range(tile.rows):
        a = builder.load(at(x0, builder.add(builder.mul(const(r), lda), k)), typ=f32, align=4)  # x[r, k]
        splat = builder.shuffle_vector(builder.insert_element(undef, a, ir.Constant(i32, 0)), undef,
                                       ir.Constant(ir.VectorType(i32, tile.lanes), [0] * tile.lanes))
        new.extend(multiply_add(splat, b[v], acc[r * nv + v]) for v in range(nv))
    k_next = builder.add(k, const(1))
    k.add_incoming(k_next, loop)
    for phi, value in zip(acc, new, strict=True):
        phi.add_incoming(value, loop)
    builder.cbranch(builder.icmp_signed("<", k_next, K), loop, done)
    builder.position_at_end(done)
    for r in range(tile.rows):
        for v in range(nv):
            index = builder.add(builder.mul(const(r), ldc), const(tile.lanes * v))
            builder.store(new[r * nv + v], at(c0, index), align=4)


def micro_kernel_ir(tile: Tile, triple: str = "") -> str:
    """A standalone IR module of one function, void micro_gemm(i64 x, i64 lda, i64 panel, i64 K, i64 c, i64 ldc),
    the micro-kernel for `tile`: for compiling it for any target with llvmlite.binding (`target.assembly`)."""
    module = ir.Module("micro_gemm")
    module.triple = triple
    i64 = ir.IntType(64)
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [i64] * 6), "micro_gemm")
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    emit_micro_kernel(builder, tile, *fn.args)
    builder.ret_void()
    return str(module)


@intrinsic
def _micro_gemm_ptr(typingctx, x, lda, panel, K, c, ldc):
    # the micro-kernel for this CPU's tile (`emit_micro_kernel`): x, panel, c float32 addresses, lda/ldc row strides
    def codegen(context, builder, signature, args):
        emit_micro_kernel(builder, TILE, *args)
        return context.get_dummy_value()

    return types.void(types.uintp, types.intp, types.uintp, types.intp, types.uintp, types.intp), codegen


@helper_or_stand_in(python_micro_gemm)
def micro_gemm(x, panel, c):
    # c (MICRO_ROWS, PANEL) = x (MICRO_ROWS, K) @ panel (K, PANEL), float32; x and c may be strided row views
    _micro_gemm_ptr(x.ctypes.data, x.strides[0] // 4, panel.ctypes.data, panel.shape[0], c.ctypes.data,
                    c.strides[0] // 4)


@intrinsic_or_stand_in(python_max)
def fast_max(typingctx, a, b):
    # max(a, b) as a fast-math compare + select, which LLVM vectorises as a reduction (Numba's max() it does not)
    def codegen(context, builder, signature, args):
        greater = builder.fcmp_ordered(">", args[0], args[1], flags=("fast",))
        return builder.select(greater, args[0], args[1], flags=("fast",))
    return a(a, a), codegen


@intrinsic_or_stand_in(python_clamp)
def clamp(typingctx, v, lo, hi):
    # min(max(v, lo), hi) as two ordered compare + selects, which LLVM vectorises; a NaN v gives lo
    def codegen(context, builder, signature, args):
        v, lo, hi = args
        v = builder.select(builder.fcmp_ordered(">", v, lo), v, lo)
        return builder.select(builder.fcmp_ordered("<", v, hi), v, hi)
    return v(v, v, v), codegen


@intrinsic_or_stand_in(python_pow2)
def pow2(typingctx, n):
    # 2^n as a float32, for an int32 n in -126..127: its bit pattern is just the biased exponent (n + 127) << 23
    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        bits = builder.shl(builder.add(args[0], ir.Constant(i32, 127)), ir.Constant(i32, 23))
        return builder.bitcast(bits, ir.FloatType())
    return types.float32(types.int32), codegen
