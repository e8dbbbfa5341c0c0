"""The fast path (`backend="numba"`): Numba twins of the `layers.py` functions over weights prepared at load.

    jit.py       JIT settings, and the plain-Python stand-ins used under NUMBA_DISABLE_JIT=1
    blas.py      the BLAS called from inside the kernels, and thread control
    llvm_ir.py   hand-written LLVM IR: the float32 GEMM micro-kernel, a vectorisable max and 2^n
    weights.py   load time, plain NumPy: BatchNorm folding, panel packing, bias gathering
    kernels.py   the dense, conv and attention kernels, each behind its documented twin
    tiles.py     how a kernel runs: its tile function compiled once, run on all threads by a prange launcher
    threads.py   the threading layer (TBB preferred), and use from several threads or forked processes
    target.py    the CPU Numba compiles for, and the micro-kernel's tile on it
    compiled.py  whether the kernels are compiled (Numba's on-disk cache), and compiling them ahead of time
    runtime.py   how a forward pass runs (one at a time; a cold cache said), and backend="auto"
    report.py    what `levit-np info` says of the fast path
    numba_internals.py   every private Numba internal the modules above rely on, each behind a small function
"""

from . import threads  # noqa: F401 - loads TBB (threads.load_tbb) before any kernel starts the thread pool
from .blas import get_num_threads, set_num_threads
from .kernels import add, attention, attention_subsample, classification_layer, mlp, patch_embeddings
from .runtime import run, until_ready
from .weights import prepare

# what `backend.Backend("numba", ...)` is made of (levit_np.backend builds it: the fast path does not import it)
FUNCTIONS = dict(prepare=prepare, patch_embeddings=patch_embeddings, attention=attention,
                 attention_subsample=attention_subsample, mlp=mlp, classification_layer=classification_layer, add=add,
                 run=run, until_ready=until_ready)

__all__ = ["FUNCTIONS", "get_num_threads", "set_num_threads"]
