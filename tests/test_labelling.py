"""Labelling a collection: `predict --jsonl` (one line per image, written per batch), `--resume` after a real
SIGKILL, `--embeddings`, `--workers N`; results compared with one uninterrupted process, bit for bit."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tqdm
from PIL import Image

import levit_np
from helpers import SMALL, write_photos
from levit_np.app.cli import main
from levit_np.app.collection import image_files
from levit_np.app.labelling import EmbeddingsFile, JsonlOutput, read_embeddings, read_records

REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 40


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder of N_IMAGES small images in subfolders, and one file that is no image."""
    return write_photos(tmp_path_factory.mktemp("photos"), N_IMAGES, 0, "sub1/broken.jpg", b"this is no JPEG")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def lines(path) -> list[str]:
    return Path(path).read_text().splitlines()


@pytest.fixture(scope="module")
def reference(small, photos, tmp_path_factory):
    """One uninterrupted process, numpy backend, batch size 4: out.jsonl + out.npy."""
    folder = tmp_path_factory.mktemp("reference")
    assert main(["predict", str(photos), "--model", small, "--backend", "numpy", "--batch-size", "4",
                 "--jsonl", str(folder / "out.jsonl"), "--embeddings", str(folder / "out.npy")]) == 1  # broken.jpg
    return folder / "out.jsonl", folder / "out.npy"


def test_jsonl_lines_are_the_json_lines_plus_errors(small, photos, tmp_path, capsys):
    code, stdout_json, _ = run(capsys, "predict", photos, "--model", small, "--backend", "numpy", "--json")
    code_jsonl, out, err = run(capsys, "predict", photos, "--model", small, "--backend", "numpy",
                               "--jsonl", tmp_path / "out.jsonl")
    assert code == code_jsonl == 1 and out == ""  # the lines go to the file, not stdout
    assert "1 of 41 inputs failed" in err and "broken.jpg: not an image file" in err
    written = lines(tmp_path / "out.jsonl")
    records = [json.loads(line) for line in written]
    assert [line for line, r in zip(written, records, strict=True) if "error" not in r] == stdout_json.splitlines()
    [error] = [r for r in records if "error" in r]
    assert error == {"image": str(photos / "sub1" / "broken.jpg"),
                     "error": f"{photos / 'sub1' / 'broken.jpg'}: not an image file Pillow can read"}
    assert sorted(r["image"] for r in records) == sorted(image_files(photos))  # each image once


def test_embeddings_are_the_pooler_output(small, photos, reference):
    jsonl, npy = reference
    images, vectors = read_embeddings(jsonl, npy)
    assert vectors.dtype == np.float32 and vectors.shape == (N_IMAGES, SMALL["hidden_sizes"][-1])
    assert np.load(npy).shape == vectors.shape  # a standard .npy
    ok = [r["image"] for r in read_records(jsonl)[0] if "predictions" in r]
    assert images == ok  # rows in line order
    model = levit_np.from_pretrained(small, backend="numpy")
    for start in range(0, N_IMAGES, 8):  # spot checks, batch by batch
        batch = images[start:start + 4]
        expected = model(levit_np.preprocess(batch, 64)).pooler_output
        np.testing.assert_allclose(vectors[start:start + len(batch)], expected, rtol=0, atol=1e-5)


def test_files_from_and_a_missing_file_get_error_lines(small, photos, tmp_path, capsys):
    listed = [str(p) for p in sorted(photos.rglob("*.png"))[:5]] + [str(tmp_path / "missing.png")]
    (tmp_path / "list.txt").write_text("\n".join(listed) + "\n\n")
    code, _, err = run(capsys, "predict", "--files-from", tmp_path / "list.txt", "--model", small,
                       "--backend", "numpy", "--jsonl", tmp_path / "out.jsonl")
    assert code == 1 and "1 of 6 inputs failed" in err
    records = [json.loads(line) for line in lines(tmp_path / "out.jsonl")]
    assert [r["image"] for r in records] == listed
    assert records[-1]["error"] == f"image file not found: {tmp_path / 'missing.png'}"


def test_resume_skips_done_images_and_counts_them_in_the_progress_bar(small, photos, reference, tmp_path, capsys,
                                                                      monkeypatch):
    jsonl, npy = reference
    text = jsonl.read_bytes()
    done = 20  # five batches of 4 (the done images are always whole batches), then a partial line
    cut = len(b"".join(text.splitlines(keepends=True)[:done])) + 20
    (tmp_path / "out.jsonl").write_bytes(text[:cut])
    (tmp_path / "out.npy").write_bytes(npy.read_bytes())  # every row: the unnamed ones are cut off
    bars = []

    class Bar(tqdm.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": False})  # shown, though stderr is no terminal
            bars.append(self)

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    code, _, err = run(capsys, "predict", photos, "--model", small, "--backend", "numpy", "--batch-size", "4",
                       "--jsonl", tmp_path / "out.jsonl", "--embeddings", tmp_path / "out.npy", "--resume")
    assert code == 1 and f"{done} of {N_IMAGES + 1} images done, a partial last line" in err
    assert (tmp_path / "out.jsonl").read_bytes() == text  # the uninterrupted run's file, byte for byte
    assert (tmp_path / "out.npy").read_bytes() == npy.read_bytes()
    [bar] = bars
    assert bar.total == N_IMAGES + 1 and bar.n == N_IMAGES + 1  # it started at the skipped ones
    # a finished file: nothing to do, the same failure reported, the files unchanged
    code, _, err = run(capsys, "predict", photos, "--model", small, "--jsonl", tmp_path / "out.jsonl",
                       "--embeddings", tmp_path / "out.npy", "--resume")
    assert code == 1 and "broken.jpg: not an image file" in err
    assert (tmp_path / "out.jsonl").read_bytes() == text


SELF_KILL = textwrap.dedent("""
    # levit-np predict, SIGKILLed by itself in the middle of writing its third batch: the batch's embedding rows
    # are written, then the first 30 bytes of its lines
    import os, signal, sys
    from levit_np.app import cli, labelling

    calls = []
    real = labelling.JsonlOutput._write

    def write(self, text):
        calls.append(1)
        if len(calls) == 3:
            self._file.write(text[:30].encode())
            self._file.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        real(self, text)

    labelling.JsonlOutput._write = write
    sys.exit(cli.main(sys.argv[1:]))
""")


def test_resume_after_sigkill_mid_write(small, photos, reference, tmp_path, capsys):
    jsonl, npy = reference
    argv = ["predict", str(photos), "--model", small, "--backend", "numpy", "--batch-size", "4",
            "--jsonl", str(tmp_path / "out.jsonl"), "--embeddings", str(tmp_path / "out.npy")]
    proc = subprocess.run([sys.executable, "-c", SELF_KILL, *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    killed = (tmp_path / "out.jsonl").read_bytes()
    assert killed.count(b"\n") == 8 and not killed.endswith(b"\n")  # two batches and half a line
    assert np.load(tmp_path / "out.npy").shape[0] == 12  # three batches of rows: the third one named by no line
    code, _, err = run(capsys, *argv, "--resume")
    assert code == 1 and "8 of 41 images done, a partial last line" in err
    assert (tmp_path / "out.jsonl").read_bytes() == jsonl.read_bytes()
    assert (tmp_path / "out.npy").read_bytes() == npy.read_bytes()


def test_resume_after_sigkill_from_outside_with_workers(small, photos, reference, tmp_path, capsys):
    # the real thing: `python -m levit_np predict --workers 2`, SIGKILLed at some point of its run, then resumed
    jsonl, npy = reference
    argv = ["predict", str(photos), "--model", small, "--backend", "numpy", "--batch-size", "4", "--workers", "2",
            "--jsonl", str(tmp_path / "out.jsonl"), "--embeddings", str(tmp_path / "out.npy")]
    proc = subprocess.Popen([sys.executable, "-m", "levit_np", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if (tmp_path / "out.jsonl").exists() and (tmp_path / "out.jsonl").read_bytes().count(b"\n") >= 4:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()  # it was killed before it finished
    proc.stderr.close()
    assert 4 <= (tmp_path / "out.jsonl").read_bytes().count(b"\n") < N_IMAGES + 1
    code, _, _ = run(capsys, *argv, "--resume")
    assert code == 1
    records = [json.loads(line) for line in lines(tmp_path / "out.jsonl")]
    assert len({r["image"] for r in records}) == len(records) == N_IMAGES + 1  # none lost, none twice
    assert (tmp_path / "out.jsonl").read_bytes() == jsonl.read_bytes()
    assert (tmp_path / "out.npy").read_bytes() == npy.read_bytes()


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_workers_equal_one_process_bit_for_bit(small, photos, tmp_path, capsys, backend):
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        code, _, _ = run(capsys, "predict", photos, "--model", small, "--backend", backend, "--batch-size", "3",
                         "--workers", workers, "--jsonl", f"{out}.jsonl", "--embeddings", f"{out}.npy")
        assert code == 1
        outputs.append((Path(f"{out}.jsonl").read_bytes(), Path(f"{out}.npy").read_bytes()))
    assert outputs[0] == outputs[1]
    # and to standard output, text: the same lines in the same order
    text = [run(capsys, "predict", photos, "--model", small, "--backend", backend, "--workers", workers)[1]
            for workers in (1, 2)]
    assert text[0] == text[1] and text[0].count("\n") == 6 * N_IMAGES


def test_a_worker_error_is_reported_without_traceback(tmp_path, photos, capsys):
    (tmp_path / "empty-model").mkdir()
    code, _, err = run(capsys, "predict", photos, "--model", tmp_path / "empty-model", "--workers", "2")
    assert code == 1 and err.startswith("levit-np: error:") and "config.json" in err


@pytest.mark.parametrize("argv, message", [
    (["--resume"], "--resume goes with --jsonl FILE"),
    (["--embeddings", "e.npy"], "--embeddings goes with --jsonl FILE"),
    (["--resume", "--embeddings", "e.npy"], "--resume and --embeddings go with --jsonl FILE"),
    (["--workers", "0"], "argument --workers: expected a positive integer, found 0"),
    (["--workers", "two"], "argument --workers: expected a positive integer, found 'two'"),
])
def test_usage_errors(photos, argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(["predict", str(photos), *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: levit-np predict" in err and message in err


def test_no_images_at_all_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["predict", "--jsonl", "out.jsonl"])
    assert info.value.code == 2 and "give image files or folders, or --files-from FILE" in capsys.readouterr().err


def test_bad_files(small, photos, reference, tmp_path, capsys):
    jsonl, npy = reference
    base = ["predict", photos, "--model", small, "--backend", "numpy"]

    def error(*argv):
        code, out, err = run(capsys, *base, *argv)
        assert code == 1 and out == "" and err.count("\n") == 1, err
        return err

    (tmp_path / "done.jsonl").write_bytes(jsonl.read_bytes())
    assert "done.jsonl already exists" in error("--jsonl", tmp_path / "done.jsonl")
    assert "pass --resume to continue it" in error("--jsonl", tmp_path / "done.jsonl")
    assert f"cannot write {tmp_path / 'no' / 'out.jsonl'}: No such file or directory" in \
        error("--jsonl", tmp_path / "no" / "out.jsonl")
    assert f"{tmp_path} is a directory" in error("--jsonl", tmp_path)
    (tmp_path / "notes.txt").write_text("shopping list\nmilk\n")
    assert f"{tmp_path / 'notes.txt'}: line 1 is not a levit-np prediction record" in \
        error("--jsonl", tmp_path / "notes.txt", "--resume")
    (tmp_path / "oneword.txt").write_text("hello")  # no newline: still not a partial line of ours, left alone
    assert "line 1 is not a levit-np prediction record" in error("--jsonl", tmp_path / "oneword.txt", "--resume")
    assert (tmp_path / "oneword.txt").read_text() == "hello"
    assert "was written with --embeddings" in error("--jsonl", tmp_path / "done.jsonl", "--resume")
    assert "resume it with --embeddings and the same .npy file" in \
        error("--jsonl", tmp_path / "done.jsonl", "--resume")
    (tmp_path / "few.npy").write_bytes(npy.read_bytes()[:1000])
    assert "few.npy holds 3 embedding rows but its JSONL file names 40" in \
        error("--jsonl", tmp_path / "done.jsonl", "--resume", "--embeddings", tmp_path / "few.npy")
    np.save(tmp_path / "other.npy", np.zeros((40, 64), np.float64))
    assert "other.npy is not an embeddings file written by levit-np" in \
        error("--jsonl", tmp_path / "done.jsonl", "--resume", "--embeddings", tmp_path / "other.npy")
    assert f"cannot read --files-from {tmp_path / 'nope.txt'}" in error("--files-from", tmp_path / "nope.txt")
    assert (tmp_path / "done.jsonl").read_bytes() == jsonl.read_bytes()  # no failed resume touched it


def test_resume_without_a_file_starts_one(small, photos, reference, tmp_path, capsys):
    # the same command line starts a job and restarts it
    argv = ["predict", photos, "--model", small, "--backend", "numpy", "--batch-size", "4", "--resume",
            "--jsonl", tmp_path / "out.jsonl", "--embeddings", tmp_path / "out.npy"]
    assert run(capsys, *argv)[0] == 1
    assert (tmp_path / "out.jsonl").read_bytes() == reference[0].read_bytes()


def test_embeddings_file_is_a_valid_npy_after_every_batch(tmp_path):
    path = tmp_path / "e.npy"
    rows = np.random.default_rng(0).standard_normal((7, 5), dtype=np.float32)
    f = EmbeddingsFile(path)
    assert np.load(path).shape == (0, 0)
    f.append(rows[:3])
    np.testing.assert_array_equal(np.load(path), rows[:3])
    f.append(rows[3:])
    f.close()
    np.testing.assert_array_equal(np.load(path, mmap_mode="r"), rows)
    f = EmbeddingsFile(path, rows=4)  # a resume whose lines name 4 rows: the others are cut off
    f.close()
    np.testing.assert_array_equal(np.load(path), rows[:4])
    with pytest.raises(ValueError, match="embeddings 5 wide, this model's are 6"):
        EmbeddingsFile(path, rows=4).append(np.zeros((1, 6), np.float32))



def test_embeddings_header_is_numpys_and_a_file_from_the_hand_written_header_resumes(tmp_path):
    path = tmp_path / "e.npy"
    rows = np.random.default_rng(1).standard_normal((3, 4), dtype=np.float32)
    with open(path, "wb") as f:  # as levit-np wrote it before numpy.lib.format did: its dict padded to 128 bytes
        text = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }".ljust(117) + "\n"
        f.write(b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1") + rows.tobytes())
    f = EmbeddingsFile(path, rows=2)
    f.append(rows[2:])
    f.close()
    np.testing.assert_array_equal(np.load(path), rows)
    with open(path, "rb") as f:
        assert np.lib.format.read_magic(f) == (1, 0)
        assert np.lib.format.read_array_header_1_0(f) == ((3, 4), False, np.dtype("<f4")) and f.tell() == 128

def test_a_crash_that_left_zeros_at_the_end(reference, tmp_path):
    jsonl, npy = reference
    (tmp_path / "out.jsonl").write_bytes(jsonl.read_bytes()[:2000].rpartition(b"\n")[0] + b"\n" + b"\0" * 300)
    (tmp_path / "out.npy").write_bytes(npy.read_bytes())
    out = JsonlOutput(tmp_path / "out.jsonl", resume=True, embeddings=tmp_path / "out.npy")
    out.close()
    assert out.partial_bytes == 300 and not (tmp_path / "out.jsonl").read_bytes().endswith(b"\0")


def test_import_levit_np_imports_no_engine():
    code = "import levit_np, sys; print(' '.join(sys.modules))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout.split())
    assert not {"dask", "distributed", "ray", "torch", "transformers", "levit_np.app.labelling"} & loaded
    assert os.environ.get("LEVIT_NP_BACKGROUND_COMPILE") == "0"  # conftest: no compile left running


def test_a_folder_of_any_depth_is_walked_without_recursion(tmp_path):
    from levit_np.app.collection import collect_images

    deep = path = tmp_path / "root"
    deep.mkdir()
    levels = []
    try:
        for _ in range(1100):  # deeper than Python's recursion limit (made one by one: mkdir(parents=True) recurses)
            path = path / "d"
            path.mkdir()
            levels.append(path)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path / "bottom.png")
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(deep / "top.png")
        (deep / ".hidden").mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(deep / ".hidden" / "skipped.png")
        images, failures, folder = collect_images([str(deep)])
        assert images == sorted([str(deep / "top.png"), str(path / "bottom.png")]) and not failures and folder
    finally:  # removed bottom up: shutil.rmtree, which pytest cleans its old temporary folders with, recurses
        (path / "bottom.png").unlink(missing_ok=True)
        for level in reversed(levels):
            level.rmdir()


def test_the_walk_finds_what_rglob_finds(photos):
    from levit_np.app.collection import image_files

    expected = sorted(str(p) for p in Path(photos).rglob("*.png"))  # every image of the fixture is a visible PNG
    assert [f for f in image_files(Path(photos)) if f.endswith(".png")] == expected


@pytest.mark.parametrize("same", ["path", "dot-path"])
def test_jsonl_and_embeddings_must_be_two_files(small, photos, tmp_path, capsys, same, monkeypatch):
    monkeypatch.chdir(tmp_path)
    other = "out.jsonl" if same == "path" else "./sub/../out.jsonl"
    (tmp_path / "sub").mkdir()
    code, _, err = run(capsys, "predict", photos, "--model", small, "--jsonl", "out.jsonl", "--embeddings", other)
    assert code == 1 and "the JSONL file and the embeddings file are one file (out.jsonl)" in err
    assert not (tmp_path / "out.jsonl").exists()  # refused before anything was written


@pytest.mark.parametrize("device", ["/dev/null", "fifo"])
def test_jsonl_to_a_device_or_a_pipe_is_refused_at_once(small, photos, tmp_path, capsys, device):
    target = device
    if device == "fifo":
        target = tmp_path / "pipe"
        os.mkfifo(target)
    code, _, err = run(capsys, "predict", photos, "--model", small, "--jsonl", target)
    assert code == 1 and f"{target} is not a regular file" in err
