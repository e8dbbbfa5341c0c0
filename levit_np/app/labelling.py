"""Labelling a collection: one JSON line per image, written as it goes, resumable, with optional embeddings.

    levit-np predict photos/ --jsonl labels.jsonl [--embeddings emb.npy] [--resume] [--workers N]

The JSONL file holds one object per image, the same as `predict --json` prints:

    {"image": "photos/a.jpg", "predictions": [{"label": "tabby, tabby cat", "probability": 0.61}, ...]}
    {"image": "photos/b.jpg", "predictions": [...], "embedding": 1}    # with --embeddings: its row in the .npy
    {"image": "photos/broken.jpg", "error": "photos/broken.jpg: not an image file Pillow can read"}

`image` is the path as it was given (the key `--resume` matches on). An image that cannot be read, or whose
logits are not finite, gets an `error` line, so that a resumed job does not try it again and again (delete those
lines to retry them). Lines are written a batch at a time, each batch with one write, then flushed and fsynced.

**Resume.** A job killed at any point (SIGKILL included) leaves whole lines, possibly followed by one partial line
(the batch being written). `JsonlOutput(path, resume=True)` reads the file, cuts that partial line off, and
reports which images are done; the job then appends the rest. The same command over the same images writes the
same file, byte for byte, whether it ran through or was killed and resumed: the images run in the same batches
(the done images are always whole batches at the head of the list).

**Embeddings** (`--embeddings FILE.npy`): each image's pooler_output (the mean of the last stage's tokens, float32,
little-endian, `config.hidden_sizes[-1]` wide), one row per image with predictions, in the order of their lines;
each such line says its row (`"embedding": 17`). The file is a standard .npy (`np.load(path, mmap_mode="r")`)
whose header is rewritten after every batch; the rows are written before the lines that name them, so a resume
finds every named row and cuts off any row no line names yet. `read_embeddings(jsonl, npy)` returns the images
in row order with the array.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from ..model import Levit
from ..preprocessing import preprocess_each, shown
from .prediction import classify


@dataclass
class LabelledBatch:
    """What one batch of images gave: per image, its top-k (label, probability) pairs or the message of its error;
    with embeddings, the (n, C) float32 pooler_output rows of the images that have predictions, in order."""

    images: list[str]
    results: list[list[tuple[str, float]] | str]
    embeddings: np.ndarray | None = None

    @property
    def failures(self) -> list[tuple[str, str]]:
        return [(image, r) for image, r in zip(self.images, self.results, strict=True) if isinstance(r, str)]


def batches(images: list, batch_size: int) -> Iterator[list]:
    """Consecutive slices of `batch_size` images (the last may be shorter): the batches every runner uses, so that
    one process, --workers N and a cluster run the same batches."""
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size]


def label_batch(model: Levit, images: list[str], *, top_k: int = 5, embeddings: bool = False,
                fast_decode: bool = False, threads: int | None = None) -> LabelledBatch:
    """Run one batch of image paths through `model`: check and preprocess each on `threads` threads (a failure is
    that image's error), one forward pass over the readable ones, top-k labels per image (non-finite logits are
    that image's error). A missing file takes no place in the forward pass: the batches of a list are the same
    wherever it is split."""
    names = [shown(image) for image in images]
    pixels = list(preprocess_each(images, model.config.image_size, names=names, threads=threads,
                                  fast_decode=fast_decode))
    return _labelled(model, images, pixels, names, top_k=top_k, embeddings=embeddings)


def label_batches(model: Levit, images: list[str], *, top_k: int = 5, batch_size: int = 32,
                  embeddings: bool = False, fast_decode: bool = False,
                  threads: int | None = None) -> Iterator[LabelledBatch]:
    """label_batch over consecutive batches of `images`, in this process: the next batch is preprocessed on
    `threads` threads while the model runs this one, and while the caller writes its results."""
    names = [shown(image) for image in images]
    with contextlib.closing(preprocess_each(images, model.config.image_size, names=names, threads=threads,
                                            fast_decode=fast_decode, ahead=batch_size)) as pixels:
        for chunk, chunk_names in zip(batches(images, batch_size), batches(names, batch_size), strict=True):
            yield _labelled(model, chunk, list(islice(pixels, len(chunk))), chunk_names, top_k=top_k,
                            embeddings=embeddings)


def _labelled(model: Levit, images: list[str], pixels: list, names: list[str], *, top_k: int,
              embeddings: bool) -> LabelledBatch:
    # one forward pass over a batch's pixels (or errors); with embeddings, the rows of the images with predictions
    results, out, rows = classify(model, pixels, names, top_k=top_k)
    results = [str(r) if isinstance(r, Exception) else r for r in results]  # an error is its message
    vectors = None
    if embeddings:  # the pooler_output rows of the images that got predictions
        width = model.config.hidden_sizes[-1]
        vectors = (np.ascontiguousarray(out.pooler_output[rows], dtype=np.float32) if out is not None
                   else np.empty((0, width), np.float32))
    return LabelledBatch(list(images), results, vectors)


# --- the JSONL file ----------------------------------------------------------------------------------------------

def record_line(image: str, result: list[tuple[str, float]] | str, embedding: int | None = None) -> str:
    """One JSONL line (with its newline): the `predict --json` object, or {"image", "error"}; strict JSON."""
    if isinstance(result, str):
        record = {"image": image, "error": result}
    else:
        record = {"image": image, "predictions": [{"label": label, "probability": p} for label, p in result]}
        if embedding is not None:
            record["embedding"] = embedding
    return json.dumps(record, allow_nan=False) + "\n"


LINE_START = b'{"image": '  # how every line record_line writes begins


def _check_record(record, path: Path, number: int) -> dict:
    """`record` if it is one of our lines, else a ValueError naming the file and line."""
    ok = (isinstance(record, dict) and isinstance(record.get("image"), str)
          and (isinstance(record.get("predictions"), list) != isinstance(record.get("error"), str))
          and (isinstance(record.get("embedding", 0), int) and not isinstance(record.get("embedding"), bool)))
    if not ok:
        raise ValueError(f"{path}: line {number} is not a levit-np prediction record (expected "
                         f'{{"image": ..., "predictions": [...]}} or {{"image": ..., "error": ...}}); --resume '
                         f"continues a file written by `levit-np predict --jsonl`")
    return record


def read_records(path: str | os.PathLike, *, repair: bool = False) -> tuple[list[dict], int]:
    """The records of a JSONL file written by `JsonlOutput`, and how many bytes of a partial last line follow them
    (a job killed while writing). repair=True cuts those bytes off the file. A line that is not one of our
    records raises ValueError naming the file and line number."""
    path = Path(path)
    records, end, partial = [], 0, 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):  # the last line, cut short by a kill (or zeros, by a crash)
                if not (line.startswith(LINE_START) or LINE_START.startswith(line) or not line.strip(b"\0")):
                    _check_record(None, path, number)  # not the start of one of our lines: not our file
                partial = len(line)
                break
            end += len(line)
            try:
                record = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError):
                record = None
            records.append(_check_record(record, path, number))
    if partial and repair:
        os.truncate(path, end)
    return records, partial


class JsonlOutput:
    """The JSONL file a labelling job writes (and its embeddings file), a batch at a time.

    resume=False: the file must not exist yet, or be empty (a finished or half-done job is never overwritten by
    mistake). resume=True: an existing file is read (`done`, `failed`, a partial last line cut off) and appended
    to; a missing one is started. sync="batch" fsyncs after every batch (the command line), "close" once at the end
    (a cluster shard, renamed into place when complete). Raises OSError naming the file when it cannot be written,
    ValueError when a file to resume is not ours or does not match its embeddings.
    """

    def __init__(self, path: str | os.PathLike, *, resume: bool = False, embeddings: str | os.PathLike | None = None,
                 sync: str = "batch"):
        self.path = Path(path)
        self.sync = sync
        self.done: set[str] = set()  # images with a line in the file
        self.failed: list[tuple[str, str]] = []  # (image, message) of its error lines, earlier runs' included
        self.partial_bytes = 0  # the partial last line a resume cut off
        self.rows = 0  # embedding rows named by the file's lines
        if embeddings is not None and _same_file(self.path, Path(embeddings)):
            raise ValueError(f"the JSONL file and the embeddings file are one file ({self.path}): give the embeddings "
                             f"a file of their own, e.g. {self.path.with_suffix('.npy')}")
        existing = _size(self.path)
        if existing and not resume:
            raise FileExistsError(f"{self.path} already exists ({existing} bytes): pass --resume to continue it, or "
                                  f"remove it to start again")
        named_rows = []
        if existing:
            records, self.partial_bytes = read_records(self.path)
            for record in records:
                self.done.add(record["image"])
                if "error" in record:
                    self.failed.append((record["image"], record["error"]))
                elif "embedding" in record:
                    named_rows.append(record["embedding"])
            has_predictions = any("predictions" in r for r in records)
            if named_rows and embeddings is None:
                raise ValueError(f"{self.path} was written with --embeddings (its lines name embedding rows): "
                                 f"resume it with --embeddings and the same .npy file")
            if has_predictions and not named_rows and embeddings is not None:
                raise ValueError(f"{self.path} was written without --embeddings: resume it without --embeddings")
            if named_rows != list(range(len(named_rows))):
                raise ValueError(f"{self.path}: its embedding rows are not 0, 1, 2, ... in line order: not a file "
                                 f"written by levit-np")
            self.rows = len(named_rows)
        try:
            self._file = open(self.path, "ab")
        except OSError as e:
            raise OSError(f"cannot write {self.path}: {e.strerror}") from None
        try:
            self.embeddings = (EmbeddingsFile(embeddings, rows=self.rows if resume else None, sync=sync)
                               if embeddings is not None else None)
        except BaseException:
            self._file.close()
            raise
        if self.partial_bytes:  # cut the partial line off before appending
            self._file.truncate(existing - self.partial_bytes)

    def write(self, batch: LabelledBatch) -> None:
        """Append one batch: its embedding rows first (so every row a line names exists), then its lines."""
        lines = []
        for image, result in zip(batch.images, batch.results, strict=True):
            row = None
            if not isinstance(result, str) and self.embeddings is not None:
                row, self.rows = self.rows, self.rows + 1
            lines.append(record_line(image, result, row))
        if self.embeddings is not None and batch.embeddings is not None:
            self.embeddings.append(batch.embeddings)
        self._write("".join(lines))
        self.done.update(batch.images)
        self.failed.extend(batch.failures)

    def _write(self, text: str) -> None:
        self._file.write(text.encode("utf-8"))  # ASCII: json.dumps escapes the rest
        self._file.flush()
        if self.sync == "batch":
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if self.embeddings is not None:
            self.embeddings.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --- the embeddings file -----------------------------------------------------------------------------------------

HEADER_BYTES = 128  # the .npy header, fixed in size so that it can be rewritten in place with any row count
DTYPE = np.dtype("<f4")


def _header(rows: int, width: int) -> bytes:
    """The .npy (version 1.0) header of a (rows, width) float32 array, as numpy.lib.format writes it: padded to a
    multiple of 64 bytes, which is HEADER_BYTES for any row count and width a file can hold."""
    buffer = io.BytesIO()
    npy_format.write_array_header_1_0(buffer, {"descr": npy_format.dtype_to_descr(DTYPE), "fortran_order": False,
                                               "shape": (rows, width)})
    header = buffer.getvalue()
    if len(header) != HEADER_BYTES:  # a shape numpy's padding does not fit in HEADER_BYTES: never in practice
        raise ValueError(f"a ({rows}, {width}) embeddings header takes {len(header)} bytes, not {HEADER_BYTES}")
    return header


class EmbeddingsFile:
    """An appendable (rows, C) float32 .npy file (see the top). rows=None: a new file (it must not exist, or be
    empty); rows=n: an existing one that must hold at least n rows, cut to n (a job killed between writing rows and
    the lines naming them). sync as for JsonlOutput."""

    def __init__(self, path: str | os.PathLike, *, rows: int | None = None, sync: str = "batch"):
        self.path = Path(path)
        self.sync = sync
        self.width = 0  # set by the first rows appended
        self.rows = 0
        existing = _size(self.path)
        if rows is None and existing:
            raise FileExistsError(f"{self.path} already exists ({existing} bytes): pass --resume to continue it, or "
                                  f"remove it to start again")
        if rows and not existing:
            raise ValueError(f"{self.path} does not exist, but the JSONL file it belongs to names {rows} embedding "
                             f"rows: pass the .npy file that was written with it")
        try:
            self._file = open(self.path, "r+b" if existing else "w+b")
        except OSError as e:
            raise OSError(f"cannot write {self.path}: {e.strerror}") from None
        if existing:
            self._resume(rows)
        else:
            self._file.write(_header(0, 0))
            self._file.flush()

    def _resume(self, rows: int) -> None:
        shape = _read_header(self._file)
        if shape is None:
            self._file.close()
            raise ValueError(f"{self.path} is not an embeddings file written by levit-np (a float32 .npy with a "
                             f"{HEADER_BYTES}-byte header)")
        self.width = shape[1]
        available = (_size(self.path) - HEADER_BYTES) // (4 * self.width) if self.width else 0
        if available < rows:
            self._file.close()
            raise ValueError(f"{self.path} holds {available} embedding rows but its JSONL file names {rows}: not "
                             f"the embeddings written with that file")
        self.rows = rows
        self._file.truncate(HEADER_BYTES + rows * 4 * self.width)
        self._file.seek(0)
        self._file.write(_header(self.rows, self.width))
        self._file.flush()

    def append(self, vectors: np.ndarray) -> None:
        """Append (n, C) rows, then rewrite the header's row count; flushed (and fsynced with sync="batch")."""
        if vectors.ndim != 2:
            raise ValueError(f"embeddings must be (n, C), found shape {vectors.shape}")
        if not len(vectors):
            return
        if self.width and vectors.shape[1] != self.width:
            raise ValueError(f"{self.path} holds embeddings {self.width} wide, this model's are {vectors.shape[1]}: "
                             f"resume with the model that wrote it")
        self.width = vectors.shape[1]
        self._file.seek(0, os.SEEK_END)
        self._file.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        self.rows += len(vectors)
        self._file.seek(0)
        self._file.write(_header(self.rows, self.width))
        self._file.flush()
        if self.sync == "batch":
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


def _read_header(file) -> tuple[int, int] | None:
    """The (rows, width) of the .npy header at the start of `file` if it is ours (version 1.0, little-endian
    float32, C order, 2-D, HEADER_BYTES long), else None."""
    try:
        if npy_format.read_magic(file) != (1, 0):
            return None
        shape, fortran_order, dtype = npy_format.read_array_header_1_0(file)
    except ValueError:  # not a .npy file, or a header numpy cannot parse
        return None
    if file.tell() != HEADER_BYTES or fortran_order or dtype != DTYPE or len(shape) != 2:
        return None
    return shape


def read_embeddings(jsonl: str | os.PathLike, npy: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """(images, (n, C) float32 array, memory-mapped): the embeddings of a labelling job, row i that of images[i]."""
    records, _ = read_records(jsonl)
    rows = {r["embedding"]: r["image"] for r in records if "embedding" in r}
    array = np.load(npy, mmap_mode="r")
    if sorted(rows) != list(range(len(array))):
        raise ValueError(f"{jsonl} names embedding rows other than the {len(array)} of {npy}: not files of one job")
    return [rows[i] for i in range(len(array))], array


def _size(path: Path) -> int:
    """The size of the file at `path`; 0 when there is none. A directory, or anything else that is not a regular
    file (/dev/null, /dev/stdout, a FIFO: nothing a job can append to, fsync and resume), is an error naming it."""
    try:
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a directory, not a file")
        info = path.stat()
    except FileNotFoundError:
        return 0
    if not stat.S_ISREG(info.st_mode):
        raise OSError(f"{path} is not a regular file (a device, a pipe or a socket): labels and embeddings are "
                      f"written to files that can be appended to, synced and resumed; give a file path")
    return info.st_size


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same path once resolved, or (both existing) the same inode."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False

