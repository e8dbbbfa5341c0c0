"""Hand-written LLVM IR, through Numba's `@intrinsic`: the float32 GEMM micro-kernel and two one-liners.

`micro_gemm` multiplies MICRO_ROWS rows of x by one packed weight panel (`weights.Panels`) with its MICRO_ROWS x 4
AVX-512 accumulators held in registers (24 of the 32 vector registers; 4 more hold the panel row, 1 the
broadcast x) and streams the panel in the order it was packed, once, at load. `fast_max` and `pow2` let LLVM
vectorise the softmax's max and exp. Under NUMBA_DISABLE_JIT each has a plain-Python stand-in (`jit.py`).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .jit import helper_or_stand_in, intrinsic_or_stand_in, python_max, python_micro_gemm, python_pow2
from .weights import PANEL

MICRO_ROWS = 6  # x rows per micro-kernel call
PREFETCH = 8192  # bytes ahead in the panel that the micro-kernel asks the cache to fetch (32 panel rows)


@intrinsic
def _micro_gemm_ptr(typingctx, x, lda, panel, K, c, ldc):
    # The micro-kernel, one loop over k (K >= 1): c[r, :] = sum_k x[r, k] * panel[k, :] for r < MICRO_ROWS, with
    # the MICRO_ROWS x 4 vectors of c in registers. x, panel, c: float32 addresses; lda, ldc: row strides in
    # elements (panel rows are PANEL apart). Each k: 4 vector loads of the panel row, a prefetch PREFETCH bytes
    # ahead, and per row r one broadcast of x[r, k] and 4 fused multiply-adds.
    def codegen(context, builder, signature, args):
        x_addr, lda, panel_addr, K, c_addr, ldc = args
        f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
        vec = ir.VectorType(f32, 16)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3), "llvm.fma.v16f32")
        prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer(), i32, i32, i32]),
            "llvm.prefetch.p0i8")
        x0, p0, c0 = (builder.inttoptr(a, f32.as_pointer()) for a in (x_addr, panel_addr, c_addr))
        lanes = PANEL // 16

        def at(base, index):  # &base[index], index an i64 value
            return builder.gep(base, [index])

        def vector_at(base, index):
            return builder.bitcast(at(base, index), vec.as_pointer())

        entry = builder.block
        loop, done = builder.append_basic_block("micro.k"), builder.append_basic_block("micro.done")
        builder.branch(loop)
        builder.position_at_end(loop)
        k = builder.phi(i64)
        k.add_incoming(ir.Constant(i64, 0), entry)
        acc = []
        for _ in range(MICRO_ROWS * lanes):
            acc.append(builder.phi(vec))
            acc[-1].add_incoming(ir.Constant(vec, [0.0] * 16), entry)
        row = builder.mul(k, ir.Constant(i64, PANEL))  # offset of panel row k
        ahead = builder.add(row, ir.Constant(i64, PREFETCH // 4))
        b = []
        for v in range(lanes):
            builder.call(prefetch, [builder.bitcast(at(p0, builder.add(ahead, ir.Constant(i64, 16 * v))),
                                                    ir.IntType(8).as_pointer()),
                                    ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
            b.append(builder.load(vector_at(p0, builder.add(row, ir.Constant(i64, 16 * v))), align=4))
        new, undef = [], ir.Constant(vec, ir.Undefined)
        for r in range(MICRO_ROWS):
            a = builder.load(at(x0, builder.add(builder.mul(ir.Constant(i64, r), lda), k)), align=4)  # x[r, k]
            splat = builder.shuffle_vector(builder.insert_element(undef, a, ir.Constant(i32, 0)), undef,
                                           ir.Constant(ir.VectorType(i32, 16), [0] * 16))  # 16 x x[r, k]
            new.extend(builder.call(fma, [splat, b[v], acc[r * lanes + v]]) for v in range(lanes))
        k_next = builder.add(k, ir.Constant(i64, 1))
        k.add_incoming(k_next, loop)
        for phi, value in zip(acc, new, strict=True):
            phi.add_incoming(value, loop)
        builder.cbranch(builder.icmp_signed("<", k_next, K), loop, done)
        builder.position_at_end(done)
        for r in range(MICRO_ROWS):
            for v in range(lanes):
                index = builder.add(builder.mul(ir.Constant(i64, r), ldc), ir.Constant(i64, 16 * v))
                builder.store(new[r * lanes + v], vector_at(c0, index), align=4)
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


@intrinsic_or_stand_in(python_pow2)
def pow2(typingctx, n):
    # 2^n as a float32, for an int32 n in -126..127: its bit pattern is just the biased exponent (n + 127) << 23
    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        bits = builder.shl(builder.add(args[0], ir.Constant(i32, 127)), ir.Constant(i32, 23))
        return builder.bitcast(bits, ir.FloatType())
    return types.float32(types.int32), codegen
