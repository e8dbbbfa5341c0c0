"""`levit-np predict --workers N`: the batches of a labelling job on N processes of one machine, results in order.

Each worker is a fresh interpreter (multiprocessing's "spawn", never "fork": a child forked after Numba's OpenMP
pool started would hang, see `fast/threads.py`), loads the model once (`prediction.load_model`'s per-process
cache) and runs with cores // N threads (`cores.threads_per_worker`), so that N workers share the cores instead of
fighting over them. The batches are the ones one process runs (`labelling.batches`), and they come back in order,
so the output equals one process's, bit for bit (the numba backend's rows do not depend on the batch or the thread
count; the numpy backend's do not depend on the thread count).

Why both this and the Dask local cluster (`distributed.predict_dataset(workers=N)`, `levit-np distributed
--local-cluster N`), which also run a job on N local processes: this one needs no Dask (a plain install) and feeds
one resumable JSONL file, in order, the file one process writes; the local cluster runs the very code path of a
real cluster (shards, task retries, a lost worker's task run again), so that a cluster job can be tried on one
machine. Both size their workers with `cores.threads_per_worker` and set them up with `use_threads`.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from ..checks import positive_int
from ..cores import threads_per_worker
from .labelling import LabelledBatch, batches, label_batch

AHEAD = 2  # batches queued per worker beyond the one it runs: enough to never idle, few enough to bound memory


def label_batches_in_processes(model_spec: dict, images: list[str], *, workers: int, top_k: int = 5,
                               batch_size: int = 32, embeddings: bool = False, fast_decode: bool = False,
                               threads: int | None = None) -> Iterator[LabelledBatch]:
    """labelling.label_batches on `workers` spawned processes: the same batches, yielded in order.

    model_spec: the keyword arguments of `prediction.load_model` (model, backend, ...) each worker loads with.
    threads: per worker, for its model and for preprocessing its batch; default cores // workers. A worker that
    raises (say, the weights are missing) raises here with its own error; a worker that dies (killed, out of memory)
    raises ChildProcessError.
    """
    positive_int(workers, "workers")
    chunks = list(batches(images, batch_size))
    if not chunks:
        return
    import multiprocessing

    n = min(workers, len(chunks))
    threads = threads or threads_per_worker(workers)
    pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                               initargs=(threads,))
    options = {"top_k": top_k, "embeddings": embeddings, "fast_decode": fast_decode, "threads": threads}
    try:
        todo = iter(chunks)
        pending = deque(pool.submit(_label, model_spec, chunk, options)
                        for chunk in itertools.islice(todo, n * (1 + AHEAD)))
        while pending:
            try:
                batch = pending.popleft().result()
            except BrokenProcessPool:
                raise ChildProcessError("a --workers process died (killed, or out of memory) before finishing its "
                                        "batch; what was written before it stays valid (rerun with --resume to "
                                        "continue a --jsonl file)") from None
            chunk = next(todo, None)
            if chunk is not None:
                pending.append(pool.submit(_label, model_spec, chunk, options))
            yield batch
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def use_threads(threads: int) -> None:
    """Run this process's model on `threads` threads, at most NUMBA_NUM_THREADS (all Numba allows here): a
    --workers process and a Dask task set themselves up with it."""
    import numba

    from ..fast import set_num_threads

    set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def _start_worker(threads: int) -> None:
    # Ctrl-C reaches the whole process group: the parent stops the job, the workers just go with their pool
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # a parent killed outright (SIGKILL) closes no queue: without this, its workers would wait for work forever
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    use_threads(threads)


def _exit_with_parent() -> None:
    import multiprocessing.connection

    parent = multiprocessing.parent_process()
    if parent is not None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)


def _label(model_spec: dict, images: list[str], options: dict) -> LabelledBatch:
    from .prediction import load_model

    return label_batch(load_model(**model_spec), images, **options)
