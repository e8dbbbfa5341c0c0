"""Labelling a collection on a Dask cluster: one task per shard of images, one JSONL file per shard.

    levit-np distributed photos/ --scheduler tcp://10.0.0.1:8786 --output labels/   # a running cluster
    levit-np distributed photos/ --local-cluster 2 --output labels/                   # N worker processes here

    from levit_np.app.distributed import predict_dataset, read_shards
    run = predict_dataset("photos/", "labels/", scheduler="tcp://10.0.0.1:8786")   # a DatasetRun
    records = read_shards("labels/")    # the lines of every shard, in shard order

Needs the `dask` extra (`pip install "levit-np[dask]"`: dask and distributed), on the machine that submits and on
every worker, with levit-np itself; the images' paths and the output folder must be the same on all of them (a
shared file system), and the weights where `from_pretrained` finds them on each worker (a checkpoint directory on
the shared file system, or each worker's Hugging Face cache).

How it runs (`predict_dataset`): planning (`plan_dataset`: the folders expanded on the submitting machine, each
image once, the shards already in `output` read), submission (`submit_shards`: the images left cut into shards of
`shard_size` images, whole batches of `batch_size`, each shard one task, `label_shard`) and collection
(`collect_shards`: each task's outcome, as it completes, into the `DatasetRun`). A worker loads the
model once, on its first task, and keeps it: Dask's worker processes live as long as the cluster, so
`prediction.load_model`'s per-process cache holds it (what Ray Data's callable classes are for). A task writes
its shard to a temporary file and renames it to `part-NNNNNN.jsonl` (with `part-NNNNNN.npy` for embeddings) when
complete, so a task the engine runs again (its worker was killed or lost: the scheduler reschedules it, up to
distributed's `allowed-failures`; it raised: `retries`) replaces its shard instead of adding lines, and a shard
file that exists is complete. The lines are those of `levit-np predict --jsonl` (`labelling.py`); the shards, in
order, hold the lines one process writes, bit for bit (the batches are the same).

`resume=True` reads the shards already in `output`, skips their images, and numbers the new shards after them.

The local cluster (`scheduler=None`, `--local-cluster N`) runs N processes on this machine, as `predict --workers N`
does; `workers.py` says why both are kept.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..checks import non_negative_int, positive_int
from ..cores import available_cpus, threads_per_worker
from ..hub import DEFAULT_MODEL
from .collection import collect_images, unique
from .labelling import JsonlOutput, batches, label_batches, read_embeddings, read_records
from .prediction import load_model
from .workers import use_threads

SHARD_NAME = "part-{:06d}"  # part-000000.jsonl, part-000000.npy
SHARD_PATTERN = re.compile(r"part-(\d{6,})\.jsonl")
SHARD_BATCHES = 32  # batches per task at most, by default: seconds of work or more, few tasks for the scheduler
TASKS_PER_THREAD = 4  # by default, tasks per worker thread at least: a slow or lost worker does not hold the end
DEFAULT_RETRIES = 2  # reruns of a task that raised (a worker that died is the scheduler's allowed-failures)


@dataclass
class DatasetRun:
    """What `predict_dataset` did."""

    images: int  # the images asked for, each once
    skipped: int  # already in the output's shards (resume)
    labelled: int  # labelled by this run (failures included)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (image, message): images with an error line
    failed_shards: list[tuple[int, str]] = field(default_factory=list)  # (shard, why): tasks the engine gave up on
    shards: list[Path] = field(default_factory=list)  # the shard files this run wrote


def predict_dataset(images: str | os.PathLike | Iterable[str | os.PathLike], output: str | os.PathLike, *,
                    scheduler=None, workers: int | None = None, model: str | os.PathLike = DEFAULT_MODEL,
                    backend: str | None = None, image_size=None, top_k: int = 5, batch_size: int = 32,
                    shard_size: int | None = None, embeddings: bool = False, resume: bool = False,
                    retries: int = DEFAULT_RETRIES, threads: int | None = None, fast_decode: bool = False,
                    progress: bool = False) -> DatasetRun:
    """Label `images` on a Dask cluster, writing JSONL shards (and .npy embeddings) into the folder `output`.

    images: a folder (searched recursively, as `levit-np predict DIR`), an image path, or a list of them.
    scheduler: a `distributed.Client`, a scheduler address ("tcp://host:8786") or scheduler file (.json), or None
        for a `distributed.LocalCluster` of `workers` processes (default: one per core) for this call.
    model, backend, image_size, top_k, batch_size: as for `levit_np.predict`; the model is loaded once per worker.
    shard_size: images per task, a multiple of batch_size (so that the batches are one process's); default: 32
        batches, fewer where that would give the cluster's worker threads fewer than 4 tasks each.
    embeddings: also write each shard's pooler_output rows, part-NNNNNN.npy (see `labelling.py`).
    resume: continue an output folder that holds shards already (without it, such a folder is refused).
    retries: reruns of a task that raised. threads: Numba / BLAS threads per task, and the threads that preprocess
        its images (default: as the worker is set up; for the local cluster, cores // workers).
    fast_decode: as for `levit_np.predict` (not bit-exact). progress: a progress bar on stderr (when it is a
        terminal).
    Raises ValueError / OSError for bad arguments or an output folder that cannot be written, and the error a
    task raised that is no image's own (the weights are missing, the output cannot be written); images that
    cannot be read are `failures`, and tasks the engine gave up on are `failed_shards`, not exceptions.
    """
    _check_arguments(top_k=top_k, batch_size=batch_size, shard_size=shard_size, retries=retries, threads=threads)
    plan = plan_dataset(images, output, resume=resume, embeddings=embeddings)
    run = DatasetRun(images=len(plan.images), skipped=len(plan.images) - len(plan.todo), labelled=0,
                     failures=plan.failures)
    if not plan.todo:
        return run
    model_spec = {"model": os.fspath(model) if isinstance(model, os.PathLike) else model, "backend": backend}
    if image_size is not None:
        model_spec["image_size"] = image_size
    job = {"model": model_spec, "output": str(plan.output), "top_k": top_k, "batch_size": batch_size,
           "embeddings": embeddings, "threads": threads, "fast_decode": fast_decode}
    client, close = _connect(scheduler, workers, job)
    try:
        if shard_size is None:
            shard_size = default_shard_size(len(plan.todo), batch_size, sum(client.nthreads().values()))
        futures = submit_shards(client, list(batches(plan.todo, shard_size)), plan.next_index, job, retries)
        collect_shards(futures, run, plan.output, progress=progress)
    finally:
        close()
    if not run.failed_shards:
        for leftover in plan.output.glob(".part-*.tmp"):  # from tasks whose worker was killed while writing
            leftover.unlink(missing_ok=True)
    run.shards.sort()
    return run


def _check_arguments(*, top_k, batch_size, shard_size, retries, threads) -> None:
    positive_int(top_k, "top_k")
    positive_int(batch_size, "batch_size")
    non_negative_int(retries, "retries")
    if threads is not None:
        positive_int(threads, "threads")
    if shard_size is not None and positive_int(shard_size, "shard_size") % batch_size:
        raise ValueError(f"shard_size ({shard_size}) must be a multiple of batch_size ({batch_size}), so that each "
                         f"shard runs whole batches, the same as one process")


# --- planning: the images, and those the output's shards hold already ----------------------------------------------

@dataclass
class DatasetPlan:
    """What a job is to do: its images (each once), those not in `output`'s shards yet, the failures known so far
    (folders without images, and the error lines of the shards there) and the number of its first new shard."""

    output: Path
    images: list[str]
    todo: list[str]
    failures: list[tuple[str, str]]
    next_index: int


def plan_dataset(images: str | os.PathLike | Iterable[str | os.PathLike], output: str | os.PathLike, *,
                 resume: bool = False, embeddings: bool = False) -> DatasetPlan:
    """The folders walked (`collection.collect_images`), the output folder checked (it exists, or is made, and can
    be written) and, with resume, its shards read: which images are left to do."""
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    found, folder_failures, _ = collect_images([os.fspath(image) for image in images])
    found = unique(found)
    out = _output_folder(output)
    done, shard_failures, next_index = read_done(out, resume=resume, embeddings=embeddings)
    wanted = set(found)
    failures = folder_failures + [f for f in shard_failures if f[0] in wanted]  # this job's images only
    return DatasetPlan(out, found, [image for image in found if image not in done], failures, next_index)


def read_done(output: Path, *, resume: bool, embeddings: bool) -> tuple[set[str], list[tuple[str, str]], int]:
    """(the images the shards in `output` hold, their (image, message) error lines, the number after the last
    shard's). Shards there without resume, or written with(out) embeddings unlike this job, are an error."""
    existing = shard_files(output)
    if existing and not resume:
        raise FileExistsError(f"{output} already holds {len(existing)} shards: pass resume=True (--resume) to "
                              f"continue that job, or use another folder")
    done, failures, next_index, kinds = set(), [], 0, set()
    for path in existing:
        for record in read_records(path)[0]:
            done.add(record["image"])
            if "error" in record:
                failures.append((record["image"], record["error"]))
            else:
                kinds.add("embedding" in record)
        next_index = max(next_index, _shard_index(path) + 1)
    if kinds and kinds != {embeddings}:
        said = "with" if True in kinds else "without"
        raise ValueError(f"{output} holds shards written {said} embeddings: resume it {said} embeddings "
                         f"(--embeddings)")
    return done, failures, next_index


def default_shard_size(images: int, batch_size: int, threads: int) -> int:
    """Whole batches, at most SHARD_BATCHES, and few enough that `threads` worker threads get TASKS_PER_THREAD
    tasks each (at least one batch)."""
    per_task = -(-images // (TASKS_PER_THREAD * max(threads, 1)))  # ceil
    return min(SHARD_BATCHES, max(1, -(-per_task // batch_size))) * batch_size


# --- submission and collection -------------------------------------------------------------------------------------

def submit_shards(client, shards: list[list[str]], first_index: int, job: dict, retries: int) -> dict:
    """One task per shard (`label_shard`), numbered from `first_index` -> {future: (shard index, images)}. Should a
    submission fail, the tasks already submitted are cancelled."""
    token = uuid.uuid4().hex[:12]  # task keys of this run, unique on a long-lived cluster
    futures = {}
    try:
        for index, shard in enumerate(shards, first_index):
            future = client.submit(label_shard, index, shard, job, key=f"levit-np-shard-{token}-{index}",
                                   retries=retries, pure=False)
            futures[future] = (index, len(shard))
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    return futures


def collect_shards(futures: dict, run: DatasetRun, output: Path, *, progress: bool = False) -> None:
    """Wait for the tasks `submit_shards` made, adding each one's outcome to `run` as it completes (a progress bar
    on stderr with `progress`). A task's error that is no image's own (OSError, ValueError: every task would fail)
    is raised, the tasks left cancelled; one the engine gave up on for other reasons is a failed shard."""
    from distributed import as_completed
    from tqdm import tqdm

    try:
        with tqdm(total=run.images, initial=run.skipped, unit="img", file=sys.stderr,
                  disable=None if progress else True) as bar:
            for future in as_completed(list(futures)):
                index, size = futures.pop(future)
                if future.status == "finished":
                    result = future.result()
                    run.failures.extend(tuple(f) for f in result["failures"])
                    run.shards.append(output / f"{SHARD_NAME.format(index)}.jsonl")
                    run.labelled += size
                else:
                    error = future.exception()
                    if isinstance(error, (OSError, ValueError)):  # not one image's: every task would fail
                        raise error
                    run.failed_shards.append((index, f"{type(error).__name__}: {error}"))
                future.release()
                bar.update(size)
    finally:
        for future in futures:
            future.cancel()


# --- a task, on a worker -------------------------------------------------------------------------------------------

def label_shard(index: int, images: list[str], job: dict) -> dict:
    """One task, on a worker: label `images` into part-{index}.jsonl (+ .npy) of job["output"], atomically.
    Returns {"shard", "images", "failures", "worker"}."""
    if job.get("threads"):
        use_threads(job["threads"])  # this task's thread runs the model
    model = load_model(**job["model"])  # once per worker process: the cache keeps it for the next tasks
    out = Path(job["output"])
    name = SHARD_NAME.format(index)
    tag = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # a task run twice never shares a file
    tmp_jsonl = out / f".{name}.jsonl.{tag}.tmp"
    tmp_npy = out / f".{name}.npy.{tag}.tmp" if job["embeddings"] else None
    try:
        with JsonlOutput(tmp_jsonl, embeddings=tmp_npy, sync="close") as writer:
            for batch in label_batches(model, images, top_k=job["top_k"], batch_size=job["batch_size"],
                                       embeddings=job["embeddings"], fast_decode=job.get("fast_decode", False),
                                       threads=job.get("threads")):
                writer.write(batch)
        if tmp_npy is not None:  # first: a shard's .jsonl exists only once everything it names does
            os.replace(tmp_npy, out / f"{name}.npy")
        os.replace(tmp_jsonl, out / f"{name}.jsonl")
    finally:
        for tmp in (tmp_jsonl, tmp_npy):
            if tmp is not None:
                tmp.unlink(missing_ok=True)
    return {"shard": index, "images": len(images), "failures": writer.failed,
            "worker": f"{socket.gethostname()}:{os.getpid()}"}


# --- reading the shards --------------------------------------------------------------------------------------------

def shard_files(output: str | os.PathLike) -> list[Path]:
    """The complete shards in `output` (part-NNNNNN.jsonl), in shard order."""
    folder = Path(output)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if SHARD_PATTERN.fullmatch(p.name)), key=_shard_index)


def read_shards(output: str | os.PathLike) -> list[dict]:
    """Every record of every shard in `output`, in shard order: the lines one `predict --jsonl` process writes,
    except that an "embedding" row counts within its shard's .npy."""
    return [record for path in shard_files(output) for record in read_records(path)[0]]


def read_shard_embeddings(output: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """(images, (n, C) float32 array): the embeddings of every shard in `output`, in shard order (each shard's
    pair read by `labelling.read_embeddings`)."""
    images, arrays = [], []
    for path in shard_files(output):
        names, array = read_embeddings(path, path.with_suffix(".npy"))
        images += names
        arrays.append(np.asarray(array))
    if not arrays:
        raise ValueError(f"{output} holds no shards with embeddings")
    return images, np.concatenate(arrays)


def _shard_index(path: Path) -> int:
    return int(SHARD_PATTERN.fullmatch(path.name).group(1))


def _output_folder(output) -> Path:
    """`output` as a folder that exists and can be written, else an OSError naming it."""
    out = Path(output)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".levit-np-write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except FileExistsError:
        raise NotADirectoryError(f"output {out} exists and is not a folder") from None
    except OSError as e:
        raise OSError(f"cannot write into the output folder {out}: {e.strerror or e}") from None
    return out


def _connect(scheduler, workers: int | None, job: dict):
    """(client, close): a Client for `scheduler`, or a LocalCluster of `workers` spawned processes."""
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError as e:
        raise ModuleNotFoundError(f"levit_np.app.distributed needs Dask ({e}): pip install 'levit-np[dask]'") from None
    if scheduler is not None:
        if workers is not None:
            raise ValueError("workers is for the local cluster (scheduler=None); a running cluster has its own")
        if isinstance(scheduler, Client):
            return scheduler, lambda: None
        if not isinstance(scheduler, (str, os.PathLike)):
            raise ValueError(f"scheduler must be a distributed.Client, an address such as 'tcp://host:8786' or a "
                             f"scheduler file, found {type(scheduler).__name__}")
        text = os.fspath(scheduler)
        kw = {"scheduler_file": text} if text.endswith(".json") else {"address": text}
        try:
            client = Client(**kw, timeout="30s")
        except (OSError, TimeoutError) as e:
            raise OSError(f"cannot reach the Dask scheduler {text}: {e}") from None
        return client, client.close
    n = positive_int(workers if workers is not None else available_cpus(), "workers")
    if job["threads"] is None:
        job["threads"] = threads_per_worker(n)
    # spawned worker processes (Dask's default, made explicit): never a fork of a process that ran Numba's pool.
    # No MALLOC_TRIM_THRESHOLD_ from the nanny: setting it turns off glibc's dynamic mmap threshold, so that every
    # large array of every forward pass would be mapped and page-faulted afresh instead of reusing the heap.
    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn",
                          "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        # dashboard_address=":0": a free port (None still binds its HTTP server to 8787, which may be taken)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0")
    client = Client(cluster)

    def close():
        client.close()
        cluster.close()

    return client, close
