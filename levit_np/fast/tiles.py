"""Parallel kernels as tiles: serial code for one tile, compiled once, run on Numba's threads through a pointer.

Every kernel splits its output into independent tiles (row chunks x weight panels of a dense layer, output rows of
a conv, (image, head) pairs of an attention). A tile function `fn(t, *args) -> True` computes tile t: plain serial
Numba code over the kernel's arrays. `@tiles` compiles it as an ordinary jitted function (`jit.kernel`), once per
dtype, and runs tiles 0..n-1 through a launcher: a one-line `prange` loop that calls the tile function's C wrapper
by its address.

Why not a `prange` loop around the tile's code, the usual way: Numba compiles the body of a `prange` loop into a
function of its own (typing it a second time), then links that function, and every function it calls, into the
library of the function around the loop, where LLVM optimises and generates all of it again: every kernel's code
would be compiled twice. Called through a pointer, a tile and its helpers are compiled once, in the tile's own
library, and the launcher stays a few lines of IR.

The launcher is compiled per signature of the tile's arguments and checks, when it runs, that the tile behind the
pointer was compiled for the same types (a fingerprint of them compiled into both); arguments of another type (an
array of another layout, say) get a compilation of their own rather than code that reads them as something else.
A tile that raises (Numba's C wrapper prints the exception) fails the call with a RuntimeError.

With NUMBA_DISABLE_JIT=1 the tiles run one after another in Python.
"""

from __future__ import annotations

import types as pytypes
import zlib

import numba
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from .jit import DISABLE_JIT, kernel
from .numba_internals import cfunc_wrapper_address, without_meminfo


def _fingerprint(arg_types) -> int:
    # the same number from the launcher's compile-time types and from numba.typeof of the values in Python
    return zlib.crc32(repr(tuple(arg_types)).encode())


@intrinsic
def _fingerprint_of(typingctx, args):
    # the fingerprint of the types of the tuple `args`, as a compile-time constant
    value = _fingerprint(args.types)
    return types.int64(args), lambda context, builder, sig, llargs: context.get_constant(types.int64, value)


def _borrowed(context, builder, ty, value):
    # an array argument without its memory-info pointer, as a prange body gets it: whatever reference counting of
    # its views is left in the tile's code then does nothing, rather than atomic operations on one counter that all
    # threads share. The caller holds the arrays for the whole launch
    return without_meminfo(context, builder, ty, value) if isinstance(ty, types.Array) else value


@intrinsic
def _call_tile(typingctx, address, t, args):
    # address(t, *args) -> bool: call the C wrapper of a tile function compiled for (int64, *types of args). Numba's
    # C wrapper takes every argument as its native value (an array as its struct) and returns false if the function
    # raised, after printing the exception
    def codegen(context, builder, sig, llargs):
        fn_address, index, packed = llargs
        arg_types = (types.int64, *args.types)
        fnty = ir.FunctionType(context.get_value_type(types.boolean), [context.get_value_type(a) for a in arg_types])
        fn = builder.inttoptr(fn_address, fnty.as_pointer())
        values = [_borrowed(context, builder, ty, builder.extract_value(packed, i)) for i, ty in enumerate(args.types)]
        return builder.call(fn, [context.cast(builder, index, t, types.int64), *values])
    return types.boolean(address, t, args), codegen


def _launch(address, fingerprint, n, args):
    # run tiles 0..n-1 of the tile function at `address` on Numba's threads -> how many failed, or -1 if that
    # function was compiled for other argument types
    if _fingerprint_of(args) != fingerprint:
        return -1
    failed = 0
    for t in prange(n):
        failed += not _call_tile(address, t, args)
    return failed


class Tiles:
    """A tile function and its launcher: `kernel(n, *args)` computes tiles 0..n-1 of `fn(t, *args)` in parallel.

    The tile function is compiled once per dtype of its first argument; the other arguments' types follow from it
    (C-contiguous arrays of that dtype, Python ints and bools, scalars of that dtype)."""

    def __init__(self, fn):
        self.py_func = fn
        self.name = fn.__name__
        if DISABLE_JIT:
            return
        # the launcher: a copy of _launch of its own, named after the tile (its own cache files, its own signatures)
        launch = pytypes.FunctionType(_launch.__code__, _launch.__globals__, f"{fn.__name__}_launch")
        launch.__qualname__, launch.__module__ = f"{fn.__qualname__}_launch", fn.__module__
        self.launcher = kernel(parallel=True, nogil=True)(launch)  # nogil: a failing tile's wrapper takes the GIL
        self.dispatcher = kernel()(fn)
        self._by_dtype = {}  # dtype of the first argument -> (C wrapper address, fingerprint of the argument types)
        self._by_types = {}  # fingerprint -> the same, for the rare arguments of other types

    def _compile(self, args) -> tuple[int, int]:
        # compile (or load from Numba's cache) the tile function for these arguments -> (address, fingerprint)
        arg_types = tuple(numba.typeof(a) for a in args)
        address = cfunc_wrapper_address(self.dispatcher, (types.int64, *arg_types))
        return address, _fingerprint(arg_types)

    def __call__(self, n, *args):
        if DISABLE_JIT:
            for t in range(n):
                self.py_func(t, *args)
            return
        compiled = self._by_dtype.get(args[0].dtype)
        if compiled is None:
            compiled = self._by_dtype[args[0].dtype] = self._compile(args)
        failed = self.launcher(compiled[0], compiled[1], n, args)
        if failed:
            self._not_done(failed, n, args)

    def _not_done(self, failed, n, args):
        # failed: the launcher's answer, -1 or the number of tiles that raised
        if failed < 0:  # other types than the dtype's usual ones: their own compilation, found by their fingerprint
            fingerprint = _fingerprint(numba.typeof(a) for a in args)
            if fingerprint not in self._by_types:
                self._by_types[fingerprint] = self._compile(args)
            failed = self.launcher(*self._by_types[fingerprint], n, args)
        if failed:
            raise RuntimeError(f"{self.name}: {failed} of {n} tiles raised an exception (printed above)")


def tiles(fn) -> Tiles:
    """Decorator: `fn(t, *args)`, returning True, computes tile t of a kernel (see the module docstring)."""
    return Tiles(fn)
