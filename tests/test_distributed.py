"""levit_np.app.distributed on a real local Dask cluster (2 worker processes): the shards equal one process's output
bit for bit, a worker SIGKILLed in the middle of a task has that task rerun with every image labelled once, and
`levit-np distributed` resumes a folder of shards."""

import os
import signal

import numpy as np
import pytest

pytest.importorskip("distributed", reason="the dask extra: pip install 'levit-np[dask]'")

from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

from helpers import write_photos
from levit_np.app.cli import main
from levit_np.app.distributed import (
    default_shard_size,
    predict_dataset,
    read_shard_embeddings,
    read_shards,
    shard_files,
)
from levit_np.app.labelling import read_embeddings, read_records, record_line

N_IMAGES = 100


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    truncated_png = b"\x89PNG\r\n\x1a\n truncated"
    return write_photos(tmp_path_factory.mktemp("photos"), N_IMAGES, 1, "sub2/broken.png", truncated_png)


@pytest.fixture(scope="module")
def client():
    """A local cluster of 2 spawned worker processes, 1 thread each (the nanny restarts a killed one)."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def one_process(small, photos, tmp_path_factory):
    """one_process(backend) -> (records, embeddings) of `levit-np predict --jsonl --embeddings`, one process,
    batches of 4; run once per backend."""
    folder, done = tmp_path_factory.mktemp("one-process"), {}

    def run(backend):
        if backend not in done:
            jsonl, npy = folder / f"{backend}.jsonl", folder / f"{backend}.npy"
            assert main(["predict", str(photos), "--model", small, "--backend", backend, "--batch-size", "4",
                         "--jsonl", str(jsonl), "--embeddings", str(npy)]) == 1  # broken.png
            done[backend] = read_records(jsonl)[0], read_embeddings(jsonl, npy)[1]
        return done[backend]

    return run


def without_rows(records):
    return [{k: v for k, v in r.items() if k != "embedding"} for r in records]


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_cluster_equals_one_process_bit_for_bit(client, small, photos, one_process, tmp_path_factory, backend):
    records, vectors = one_process(backend)
    out = tmp_path_factory.mktemp("shards")
    run = predict_dataset(photos, out, scheduler=client, model=small, backend=backend, batch_size=4, shard_size=12,
                          embeddings=True)
    assert run.images == N_IMAGES + 1 and run.labelled == N_IMAGES + 1 and run.skipped == 0
    assert len(run.shards) == 9 and run.shards == shard_files(out) and not run.failed_shards
    assert [image for image, _ in run.failures] == [str(photos / "sub2" / "broken.png")]
    assert without_rows(read_shards(out)) == without_rows(records)  # the same lines, in the same order
    images, shard_vectors = read_shard_embeddings(out)
    assert images == [r["image"] for r in records if "predictions" in r]
    assert shard_vectors.dtype == np.float32 and np.array_equal(shard_vectors, vectors)
    assert not list(out.glob(".*"))  # no temporary file left


class KillFirstShard(WorkerPlugin):
    """Fault injection: the first worker to start a levit-np task SIGKILLs its own process, once per cluster
    (the marker file says it happened); every start of a task is logged as `key pid`."""

    def __init__(self, marker: str, log: str):
        self.marker, self.log = marker, log

    def transition(self, key, start, finish, **kwargs):
        if finish != "executing" or not str(key).startswith("levit-np-shard-"):
            return
        with open(self.log, "a") as f:
            f.write(f"{key} {os.getpid()}\n")
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_killed_mid_task_is_replaced_and_its_task_rerun(client, small, photos, one_process, tmp_path):
    records, _ = one_process("numpy")
    marker, log = tmp_path / "killed", tmp_path / "starts.log"
    client.register_plugin(KillFirstShard(str(marker), str(log)), name="kill-first-shard")
    try:
        run = predict_dataset(photos, tmp_path / "out", scheduler=client, model=small, backend="numpy",
                              batch_size=4, shard_size=8)
    finally:
        client.unregister_worker_plugin("kill-first-shard")
    assert marker.exists() and not run.failed_shards
    starts = [line.split() for line in log.read_text().splitlines()]
    killed_key, killed_pid = starts[0]
    reruns = [pid for key, pid in starts[1:] if key == killed_key]
    assert reruns and killed_pid not in reruns  # the engine ran the killed task again, on another process
    assert len(starts) == 13 + 1  # 13 shards, one of them twice
    shards = read_shards(tmp_path / "out")
    assert len(shards) == len({r["image"] for r in shards}) == N_IMAGES + 1  # every image exactly once
    assert without_rows(shards) == without_rows(records)
    client.wait_for_workers(2, timeout=60)  # the nanny started a new worker in place of the killed one


def test_cli_local_cluster_resume(small, photos, one_process, tmp_path, capsys):
    # a first job over part of the images (--files-from), then the whole folder with --resume: the new shards are
    # numbered after the old ones and hold only the images not done yet
    first = sorted(str(p) for p in photos.rglob("*.png"))[:30]
    (tmp_path / "list.txt").write_text("\n".join(first) + "\n")
    out = tmp_path / "out"
    base = ["distributed", "--output", str(out), "--local-cluster", "2", "--model", small, "--backend", "numba",
            "--batch-size", "5", "--shard-size", "10"]
    code = main([*base, "--files-from", str(tmp_path / "list.txt")])
    stdout, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err
    assert stdout.startswith("30 images labelled into 3 shards")
    assert main([*base, str(photos)]) == 1  # refused: not --resume
    assert "already holds 3 shards: pass resume=True (--resume)" in capsys.readouterr().err
    assert main([*base, str(photos), "--resume"]) == 1  # broken.png
    stdout, err = capsys.readouterr()
    assert stdout.startswith(f"{N_IMAGES + 1 - 30} images labelled into 8 shards") and "(30 were done" in stdout
    assert "1 of 101 inputs failed" in err and "broken.png" in err
    assert [p.name for p in shard_files(out)] == [f"part-{i:06d}.jsonl" for i in range(11)]
    records = read_shards(out)
    assert sorted(r["image"] for r in records) == sorted(str(p) for p in photos.rglob("*.png"))
    numba_records, _ = one_process("numba")  # other batches, other shards: the numba backend's rows are the same
    by_image = {r["image"]: r for r in without_rows(numba_records)}
    assert all(r == by_image[r["image"]] for r in without_rows(records))


def test_bad_arguments(client, small, photos, tmp_path):
    with pytest.raises(ValueError, match=r"shard_size \(10\) must be a multiple of batch_size \(4\)"):
        predict_dataset(photos, tmp_path / "out", scheduler=client, batch_size=4, shard_size=10)
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="exists and is not a folder"):
        predict_dataset(photos, tmp_path / "file", scheduler=client)
    with pytest.raises(ValueError, match="scheduler must be a distributed.Client, an address"):
        predict_dataset(photos, tmp_path / "out", scheduler=42)
    with pytest.raises(ValueError, match="workers is for the local cluster"):
        predict_dataset(photos, tmp_path / "out", scheduler=client, workers=2)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "part-000000.jsonl").write_text(record_line(str(photos / "x.png"), [("cat", 1.0)]))
    with pytest.raises(FileExistsError, match="already holds 1 shards: pass resume=True"):
        predict_dataset(photos, tmp_path / "old", scheduler=client)
    with pytest.raises(ValueError, match="holds shards written without embeddings: resume it without"):
        predict_dataset(photos, tmp_path / "old", scheduler=client, embeddings=True, resume=True)


def test_a_task_error_that_is_no_images_stops_the_job(client, photos, tmp_path):
    # the weights are not where the workers look: the task's own error, raised once the engine's retries are spent
    (tmp_path / "no-model").mkdir()
    with pytest.raises(OSError, match="config.json"):
        predict_dataset(photos, tmp_path / "out", scheduler=client, model=tmp_path / "no-model", retries=1,
                        shard_size=32)
    assert not shard_files(tmp_path / "out")


def test_default_shard_size():
    assert default_shard_size(1_000_000, 32, 8) == 32 * 32  # a big job: 32 batches a task
    assert default_shard_size(512, 32, 2) == 64  # a small one: 4 tasks per worker thread
    assert default_shard_size(10, 32, 2) == 32  # at least one batch
    assert default_shard_size(100, 4, 0) == 28  # no worker yet: counted as one
