"""Every private Numba internal that the fast path relies on, each behind one small function of this module.

Numba's public API covers most of the fast path: `numba.njit`, `cfunc`, `prange`, `typeof`, `config`, `types`,
`threading_layer`, `numba.extending.intrinsic` with the target context and llvmlite IR builder that an intrinsic's
code generator is handed, and llvmlite's own `ir` and `binding`. What it does not cover is used here and nowhere
else (tests/test_numba_internals.py checks that no other module of levit_np imports a private Numba module), so a
Numba release that moves one of these breaks one function of this file, which says what it needs:

    numba.core.config.CPU_NAME, CPU_FEATURES       jit_target: the CPU Numba's JIT compiles for, the same way as
    numba.core.codegen.get_host_cpu_features       its JITCPUCodegen (the micro-kernel's tile and the cache key
                                                   must be the target's that the kernels are compiled for)
    Dispatcher._cache._cache_path                  cache_dir: the folder of Numba's on-disk cache of a function
                                                   (where compiled.py keeps its markers beside the kernels)
    CompileResult.library, .fndesc                 cfunc_wrapper_address: the address of the C wrapper of one
      .llvm_cfunc_wrapper_name                     compiled signature (tiles.py calls a tile through it)
    numba.np.ufunc.parallel._is_initialized        thread_pool_started: whether the thread pool (and so the
                                                   threading layer) has been started in this process
    numba.np.ufunc.parallel._launch_threads        start_thread_pool: start it without running a kernel (what a
                                                   first parallel kernel does; it chooses the threading layer)
    numba.core.cgutils.alloca_once_value           stack_slot: a value in a stack slot of the function's entry
                                                   block (the BLAS takes its scalars by pointer)
    numba.core.cgutils.get_or_insert_function      declare_function: a C function declared once per LLVM module
    the array data model: context.make_array,      array_data, without_meminfo: an array argument's data pointer,
      its .data and .meminfo fields, and           and the array with a null memory-info pointer (reference
      types.MemInfoPointer                         counting then skips it: NRT_incref/decref ignore null)

Each function imports the private module it needs when it is called.
"""

from __future__ import annotations

from pathlib import Path

# --- the target -------------------------------------------------------------------------------------------------

def jit_target() -> tuple[str, str, str]:
    """(triple, cpu, features) that Numba's JIT compiles for, as `numba.core.codegen.JITCPUCodegen` picks them:
    config.CPU_NAME unless None, else the host's name; config.CPU_FEATURES unless None, else the host's features
    as Numba filters them (NUMBA_ENABLE_AVX=0 drops every avx* feature)."""
    import llvmlite.binding as ll
    from numba.core import config
    from numba.core.codegen import get_host_cpu_features

    cpu = ll.get_host_cpu_name() if config.CPU_NAME is None else config.CPU_NAME
    features = get_host_cpu_features() if config.CPU_FEATURES is None else config.CPU_FEATURES
    return ll.get_process_triple(), cpu, features


# --- dispatchers ------------------------------------------------------------------------------------------------

def cache_dir(dispatcher) -> Path:
    """The folder where Numba caches the compiled code of `dispatcher` (a function jitted with cache=True)."""
    return Path(dispatcher._cache._cache_path)


def cfunc_wrapper_address(dispatcher, signature) -> int:
    """The address of the C wrapper of `dispatcher` compiled for `signature` (compiled, or loaded from the cache,
    now): it takes each argument as its native value (an array as its struct) and returns false if the function
    raised, after printing the exception."""
    dispatcher.compile(signature)
    compiled = dispatcher.overloads[signature]
    return compiled.library.get_pointer_to_function(compiled.fndesc.llvm_cfunc_wrapper_name)


# --- the thread pool --------------------------------------------------------------------------------------------

def thread_pool_started() -> bool:
    """Whether Numba's thread pool has started in this process (after which its threading layer is fixed)."""
    from numba.np.ufunc import parallel

    return bool(parallel._is_initialized)


def start_thread_pool() -> None:
    """Start Numba's thread pool now, as a first parallel kernel would, choosing its threading layer."""
    from numba.np.ufunc import parallel

    parallel._launch_threads()


# --- code generation inside an @intrinsic -----------------------------------------------------------------------

def stack_slot(builder, value):
    """A pointer to a stack slot holding `value`, allocated once in the function's entry block (not per loop)."""
    from numba.core import cgutils

    return cgutils.alloca_once_value(builder, value)


def declare_function(module, fnty, name: str):
    """The function `name` of LLVM type `fnty` in `module`, declared there unless it already is."""
    from numba.core import cgutils

    return cgutils.get_or_insert_function(module, fnty, name)


def array_data(context, builder, ty, value):
    """The data pointer of the array `value` of Numba type `ty`."""
    return context.make_array(ty)(context, builder, value).data


def without_meminfo(context, builder, ty, value):
    """The array `value` of Numba type `ty` with a null memory-info pointer: reference counting of it and its
    views does nothing (NRT_incref/decref skip a null pointer). Its owner must keep the memory alive."""
    from numba import types

    array = context.make_array(ty)(context, builder, value)
    array.meminfo = context.get_constant_null(types.MemInfoPointer(ty.dtype))
    return array._getvalue()
