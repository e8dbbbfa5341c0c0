"""What `levit-np info` says of the fast path: what backend="auto" runs here, the micro-kernel tile, the BLAS, the
threads and the threading layer, and where the compiled kernels are cached."""

from __future__ import annotations

import numba

from . import blas, compiled, target, threads  # noqa: F401 - threads loads TBB, as the backend does
from .numba_internals import start_thread_pool


def fast_path_info() -> dict:
    """What backend='auto' runs here, and the fast path's build: micro-kernel tile, threads, cache."""
    tile = target.TILE
    return {"auto_backend": {d: "numba" if compiled.is_compiled(d) else "numpy (kernels not compiled yet)"
                             for d in compiled.DTYPES},
            "numba_cache": str(compiled.cache_dir()),
            "cpu": target.numba_target()[1],
            "micro_kernel": f"{tile.rows} x {tile.columns} float32 ({tile.vectors_per_row} vectors of {tile.lanes}"
                            f"{', FMA' if tile.fma else ', no FMA'})",
            "blas": blas.blas_description(),
            "threads": numba.get_num_threads(),
            "threading_layer": threading_layer()}


def threading_layer() -> str:
    """The layer Numba's thread pool runs on (tbb, omp or workqueue): the one a forward pass would use, started now
    if no forward has run yet."""
    try:
        start_thread_pool()  # what a first parallel kernel does; it chooses the layer
        return f"{numba.threading_layer()} (NUMBA_THREADING_LAYER={numba.config.THREADING_LAYER})"
    except Exception as e:  # info reports, never fails
        return f"unknown ({e})"
