"""The inputs of `digits score`, read as a stream of batches: image files, MNIST IDX files, Kaggle CSVs.

``plan_inputs`` turns the command line (files, folders, glob patterns) into sources;
``iter_batches`` reads them in order as ``Batch``es of at most ``batch_size`` items. Only
a few batches exist at a time whatever the input's size: IDX images are read a batch at a
time (raw or through a streaming gzip reader), Kaggle CSVs through
``core.kaggle.iter_kaggle_csv`` in chunks, and image files are decoded by worker
processes with a bounded number of tasks in flight.

Image files go through ``service.imaging.preprocess_image_bytes``, the service's own
preprocessing, so a file gets the same pixels here as in an upload. IDX and CSV images are
MNIST-style already and go to the model as they are.

Every item has a *position*: its 1-based number among all input items, failed ones
included (a Kaggle CSV's row on line L of the file has position L - 1). Kaggle submissions
use it as the ImageId, so ids stay aligned with the input rows when a row is skipped.
"""

from __future__ import annotations

import functools
import glob
import gzip
import os
import struct
import time
import types
import zlib
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

try:  # ISA-L's gzip: the same bytes, decompressed 2-3x faster than zlib (bench/bench_score.py)
    from isal import igzip
    from isal.isal_zlib import error as _isal_error

    _gzip: types.ModuleType = igzip
    # isal's stubs declare its error as an instance; at run time it is the exception class.
    _ISAL_ERRORS: tuple[type[BaseException], ...] = (cast("type[BaseException]", _isal_error),)
except ImportError:  # an install without the serve extra: the standard library's gzip
    _gzip = gzip
    _ISAL_ERRORS = ()

import numpy as np

from clients.batches import Batch, InputError, error_batch
from clients.pipeline import ordered_map
from core.contract import IMAGE_PIXELS, IMAGE_SIDE
from core.files import DataError
from core.idx import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, load_idx_labels
from core.kaggle import CsvFormatError, iter_kaggle_csv
from core.machine import usable_cores

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext

# Pillow and the service's preprocessing load only where image files are read: an IDX or CSV run starts
# without them (Pillow's registry of formats alone imports every plugin).
_PREPROCESS = "service.imaging"


@functools.cache
def image_suffixes() -> frozenset[str]:
    """File name endings taken as images inside folders: those Pillow maps to a supported format."""
    from PIL import Image

    from service.imaging import SUPPORTED_FORMATS

    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in SUPPORTED_FORMATS)


MNIST_PIXELS = IMAGE_PIXELS
def task_size(per_file_s: float, files: int, jobs: int) -> int:
    """Image files per worker task: about TASK_TARGET_S of decoding (at most MAX_TASK_FILES), and never so
    many that `jobs` workers cannot share `files` out evenly (at least TASKS_PER_JOB tasks each). With
    --jobs given, the per-file cost is not measured; taken as POOL_MIN_FILE_S, 400 photos made three
    tasks for two workers, and one of them did two thirds of the work."""
    size = max(1, min(MAX_TASK_FILES, round(TASK_TARGET_S / max(per_file_s, 1e-5))))
    return max(1, min(size, -(-files // (TASKS_PER_JOB * jobs))))


_IDX_HEADER = struct.Struct(">IIII")  # magic, count, rows, columns
_GZIP_MAGIC = b"\x1f\x8b"
_GLOB_CHARS = frozenset("*?[")
# Decoding image files: in the reading thread, or in worker processes where a file's decode cost pays for
# the processes and their traffic. With --jobs unset the first PROBE_FILES files are decoded here, one at a
# time, and timed; the rest go to one worker per core when the median file took POOL_MIN_FILE_S or more
# and they are POOL_MIN_WORK_S of work at least. bench/bench_score.py on two cores: a 28x28 PNG through
# service/imaging takes ~0.2 ms here (0.2-0.35 ms as the probe times it), and two workers gave 0.95-1.3x
# the reading thread from run to run, slower whenever anything else ran: not worth the risk, so such
# files stay here. A 640x480 photo takes 2-4 ms, and two workers give ~1.5-1.8x one. Below ~0.1 ms
# (reading bytes) the traffic always costs more.
PROBE_FILES = 16
POOL_MIN_FILE_S = 0.0004
POOL_MIN_WORK_S = 0.5
TASK_FILES = 32  # image files per task decoded in the reading thread
TASK_TARGET_S = 0.02  # seconds of decoding per worker task: its IPC (a path list out, float32 [k,28,28] back) is
MAX_TASK_FILES = 256  # then a few percent of it
TASKS_PER_JOB = 4  # tasks per worker at least, so that the last ones even out
_GZIP_ERRORS: tuple[type[BaseException], ...] = (EOFError, zlib.error, gzip.BadGzipFile, *_ISAL_ERRORS)
_READ_ERRORS: tuple[type[BaseException], ...] = (OSError, *_GZIP_ERRORS)


class UsageError(Exception):
    """The command line cannot work as given (not a bad input file): the message says what to change."""


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class ImageFiles:
    """Image files (PNG, JPEG, ...), in the order given; labels from folder names when asked."""

    paths: tuple[str, ...]
    folder_labels: bool = False

    @property
    def count(self) -> int:
        return len(self.paths)


@dataclass(frozen=True)
class IdxImages:
    """An MNIST IDX image file (raw or gzip), with the labels of its IDX label file when given."""

    path: Path
    count: int  # from the header
    labels: np.ndarray | None = field(default=None, repr=False)  # uint8 [count]


@dataclass(frozen=True)
class KaggleCsv:
    """A Kaggle digit-recognizer CSV: train.csv (labels in the first column) or test.csv."""

    path: Path
    count: None = None  # unknown until read


Source = ImageFiles | IdxImages | KaggleCsv


@dataclass
class Plan:
    sources: list[Source]
    errors: list[InputError]  # inputs that could not be used at all (missing, unreadable, unknown kind)

    @property
    def total(self) -> int | None:
        """Items to score, when every source knows its count (for the progress bar)."""
        counts = [source.count for source in self.sources]
        return None if any(c is None for c in counts) else sum(c for c in counts if c is not None)


class _Bad(Exception):
    """Internal: an input cannot be read; carries the reason for its InputError."""


# --------------------------------------------------------------------------- planning


def plan_inputs(
    inputs: Sequence[str], labels: Sequence[str | Path] = (), folder_labels: bool = False
) -> Plan:
    """Expand files, folders (recursively, sorted) and glob patterns into sources, in command-line order.

    Inside folders only files with an image suffix are taken. A file named on the command line
    is recognised by its content where its suffix does not say: IDX by the magic number (raw or
    gzip), Kaggle CSV by its header; anything else is taken as an image. ``labels`` are IDX
    label files, one per IDX image input, in order.
    """
    errors: list[InputError] = []
    files: list[tuple[str, bool]] = []  # (path, named on the command line)
    for arg in inputs:
        files.extend(_expand(arg, errors))
    sources: list[Source] = []
    idx_inputs = 0
    images: list[str] = []

    def flush_images() -> None:
        if images:
            sources.append(ImageFiles(tuple(images), folder_labels))
            images.clear()

    for path, explicit in files:
        kind = _kind(Path(path), explicit)
        if kind == "image":
            images.append(path)
            continue
        flush_images()
        try:
            if kind == "csv":
                sources.append(KaggleCsv(Path(path)))
            elif kind == "idx":
                idx_inputs += 1
                count = _idx_count(Path(path))
                label_file = labels[idx_inputs - 1] if idx_inputs <= len(labels) else None
                sources.append(IdxImages(Path(path), count, _idx_labels(label_file, count)))
            else:
                errors.append(InputError(path, kind))
        except _Bad as exc:
            errors.append(InputError(path, str(exc)))
    flush_images()
    if labels and len(labels) != idx_inputs:
        raise UsageError(
            f"{len(labels)} --labels file(s) for {idx_inputs} IDX image input(s); give one IDX label file "
            "per IDX image file, in the same order"
        )
    return Plan(sources, errors)


def _expand(arg: str, errors: list[InputError]) -> list[tuple[str, bool]]:
    """(path, named explicitly) pairs for one command-line input; folders are walked in sorted order."""
    if os.path.isdir(arg):
        return [(p, False) for p in _walk(arg, errors)]
    if os.path.lexists(arg) or not _GLOB_CHARS & set(arg):
        if not os.path.lexists(arg):
            errors.append(InputError(arg, "no such file or directory"))
            return []
        return [(arg, True)]
    matches = sorted(glob.glob(arg, recursive=True))
    if not matches:
        errors.append(InputError(arg, "no file matches this pattern"))
    out: list[tuple[str, bool]] = []
    for match in matches:
        if os.path.isdir(match):
            out.extend((p, False) for p in _walk(match, errors))
        else:
            out.append((match, True))
    return out


def _walk(root: str, errors: list[InputError]) -> list[str]:
    found: list[str] = []

    def report(exc: OSError) -> None:
        errors.append(InputError(exc.filename or root, f"cannot list the folder: {exc.strerror or exc}"))

    for folder, subdirs, names in os.walk(root, onerror=report):
        subdirs.sort()  # os.walk recurses in this order: the whole walk is sorted
        found.extend(
            os.path.join(folder, name)
            for name in sorted(names)
            if os.path.splitext(name)[1].lower() in image_suffixes()
        )
    return found


def _kind(path: Path, explicit: bool) -> str:
    """"image", "csv", "idx", or the reason the file cannot be used."""
    suffix = path.suffix.lower()
    if not explicit:
        return "image"
    if suffix == ".csv":
        return "csv"
    # IDX files' usual names end in "-ubyte", ".idx*" or ".gz", never an image suffix: they skip the lookup,
    # which imports Pillow (and its plugins), so that an IDX run starts without it
    idx_like = suffix in ("", ".gz") or "ubyte" in suffix or suffix.startswith(".idx")
    if not idx_like and suffix in image_suffixes():
        return "image"
    try:
        with _open_maybe_gzip(path) as f:
            head = f.read(8)
    except _READ_ERRORS as exc:
        return f"cannot read the file: {getattr(exc, 'strerror', None) or exc}"
    if head[:4] in (IDX_IMAGES_MAGIC.to_bytes(4, "big"), IDX_LABELS_MAGIC.to_bytes(4, "big")):
        return "idx"
    if head.startswith((b"pixel0", b"label,", b"\xef\xbb\xbfpixel0", b"\xef\xbb\xbflabel,")):
        return "csv"
    return "image"  # decoding decides, and names the format when it is not a supported image


def _open_maybe_gzip(path: Path) -> BinaryIO:
    """The file's content, decompressed on the fly when it starts with the gzip magic bytes."""
    raw = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    try:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
    except OSError:
        raw.close()
        raise
    return _gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw


def _idx_header(f: BinaryIO) -> int:
    head = f.read(_IDX_HEADER.size)
    if head[:4] == IDX_LABELS_MAGIC.to_bytes(4, "big"):
        raise _Bad("this is an IDX label file; pass it with --labels, next to its IDX image file")
    if len(head) < _IDX_HEADER.size or head[:4] != IDX_IMAGES_MAGIC.to_bytes(4, "big"):
        raise _Bad(
            f"not an IDX image file: expected the magic number {IDX_IMAGES_MAGIC} (0x{IDX_IMAGES_MAGIC:08x}) "
            "and three dimensions, e.g. MNIST's t10k-images-idx3-ubyte.gz"
        )
    _, count, rows, cols = _IDX_HEADER.unpack(head)
    if (rows, cols) != (IMAGE_SIDE, IMAGE_SIDE):
        raise _Bad(f"holds {rows}x{cols} images; the models take 28x28 MNIST-style images")
    return int(count)


def _idx_count(path: Path) -> int:
    try:
        with _open_maybe_gzip(path) as f:
            return _idx_header(f)
    except _READ_ERRORS as exc:
        raise _Bad(f"cannot read the file: {getattr(exc, 'strerror', None) or exc}") from None


def _idx_labels(path: str | Path | None, count: int) -> np.ndarray | None:
    if path is None:
        return None
    try:
        labels = load_idx_labels(path)
    except DataError as exc:
        raise _Bad(f"its --labels file cannot be used: {exc}") from None
    if len(labels) != count:
        raise _Bad(
            f"holds {count:,} images but its --labels file {path} holds {len(labels):,} labels; "
            "pass the label file of the same data set and split"
        )
    return labels


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ReadOptions:
    batch_size: int
    decode: bool = True  # image files -> pixels here (local mode); False: keep the encoded bytes (remote)
    jobs: int | None = None  # worker processes decoding image files; 0: the reading thread; None: measure
    strict: bool = False  # stop at the first bad input
    max_pixels: int | None = None  # larger images are refused; None: the service's preprocessing default
    notes: list[str] = field(default_factory=list, compare=False)  # choices made while reading (--verbose)


def iter_batches(sources: Sequence[Source], options: ReadOptions) -> Iterator[Batch]:
    """Every source's items in order, as batches of at most ``options.batch_size`` items."""
    if options.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {options.batch_size}")
    offset = 0
    for source in sources:
        offset += yield from read_source(source, offset, options)


def read_source(source: Source, offset: int, options: ReadOptions) -> Generator[Batch, None, int]:
    """One source's batches, its items numbered from ``offset + 1``; returns its item count (failed
    items included), the offset of the next source."""
    if isinstance(source, ImageFiles):
        return (yield from _read_images(source, offset, options))
    if isinstance(source, IdxImages):
        return (yield from _read_idx(source, offset, options))
    return (yield from _read_csv(source, offset, options))


def _read_idx(source: IdxImages, offset: int, options: ReadOptions) -> Generator[Batch, None, int]:
    """Read ``batch_size`` images at a time; a truncated or corrupt file is reported where it breaks."""
    path = str(source.path)
    size = options.batch_size
    done = 0
    try:
        with _open_maybe_gzip(source.path) as f:
            count = _idx_header(f)
            while done < count:
                want = min(size, count - done)
                data = f.read(want * MNIST_PIXELS)
                got = len(data) // MNIST_PIXELS
                if got:
                    positions = np.arange(offset + done + 1, offset + done + got + 1, dtype=np.int64)
                    labels = None
                    if source.labels is not None:
                        labels = source.labels[done : done + got].astype(np.int64)
                    yield Batch(
                        [f"{path}[{i}]" for i in range(done, done + got)],
                        positions,
                        labels,
                        pixels=np.frombuffer(data, np.uint8, got * MNIST_PIXELS).reshape(got, 28, 28),
                        seen=got,
                    )
                done += got
                if got < want:
                    raise _Bad(
                        f"truncated: the header declares {count:,} images but the data ends after {done:,}; "
                        "the file is incomplete: download it again"
                    )
            if f.read(1):
                raise _Bad(
                    f"unexpected bytes after the {count:,} images the header declares (they were scored); "
                    "the file is corrupt or its header is wrong"
                )
    except _Bad as exc:
        yield error_batch([InputError(path, str(exc))], seen=source.count - done)
    except _GZIP_ERRORS as exc:
        reason = f"the gzip stream is truncated or corrupt ({exc}) after {done:,} images; download it again"
        yield error_batch([InputError(path, reason)], seen=source.count - done)
    except OSError as exc:
        reason = f"cannot read the file after {done:,} images: {exc.strerror or exc}"
        yield error_batch([InputError(path, reason)], seen=source.count - done)
    return source.count


def _read_csv(source: KaggleCsv, offset: int, options: ReadOptions) -> Generator[Batch, None, int]:
    """Stream the CSV in chunks of ``batch_size`` good rows; bad rows come as errors at their line."""
    path = str(source.path)
    last_line = 1  # the header
    try:
        for chunk in iter_kaggle_csv(source.path, chunk_rows=options.batch_size, strict=options.strict):
            errors = [InputError(f"{path}:{e.line}", e.reason) for e in chunk.errors]
            lines = chunk.lines.tolist()
            end = max([last_line, *lines[-1:], *(e.line for e in chunk.errors)])
            seen, last_line = end - last_line, end
            yield Batch(
                [f"{path}:{line}" for line in lines],
                offset + chunk.lines - 1,
                None if chunk.labels is None else chunk.labels.astype(np.int64),
                pixels=chunk.images,
                errors=errors,
                seen=seen,
            )
    except CsvFormatError as exc:
        hint = f" ({exc.hint})" if any(e.line == 1 for e in exc.errors) else ""
        yield error_batch([InputError(f"{path}:{e.line}", e.reason + hint) for e in exc.errors])
    except DataError as exc:
        yield error_batch([InputError(path, str(exc).removeprefix(f"{path}: "))])
    except OSError as exc:
        yield error_batch([InputError(path, f"cannot read the file: {exc.strerror or exc}")])
    return last_line - 1


def folder_label(path: str) -> int:
    """The name of the nearest enclosing folder named 0-9 (digits/7/scans/a.png -> 7), else -1."""
    for name in reversed(Path(path).parent.parts):
        if len(name) == 1 and name.isdigit():
            return int(name)
    return -1


def _read_images(source: ImageFiles, offset: int, options: ReadOptions) -> Generator[Batch, None, int]:
    """Decode (or just read) the files in tasks, regrouped into batches of batch_size: in the reading
    thread, or by worker processes (``--jobs N``, or where the probe finds decoding costly: see PROBE_FILES)."""
    paths = source.paths
    work = decode_files if options.decode else read_files
    regroup = _Regroup(source, offset, options)
    jobs, done, per_file = options.jobs, 0, POOL_MIN_FILE_S
    if not options.decode:
        jobs = 0  # reading undecoded bytes costs too little to ship between processes
    elif jobs is None:
        probe = range(min(PROBE_FILES, len(paths)))
        seconds: list[float] = []
        for i in probe:  # one at a time, for the median: the first file also pays Pillow's start-up
            start = time.perf_counter()
            result = work([paths[i]], options.max_pixels)
            seconds.append(time.perf_counter() - start)
            yield from regroup.add(range(i, i + 1), result)
        done = len(probe)
        per_file = float(np.median(seconds)) if seconds else 0.0
        costly = per_file >= POOL_MIN_FILE_S and per_file * (len(paths) - done) >= POOL_MIN_WORK_S
        jobs = usable_cores() if costly and usable_cores() > 1 else 0
        where = f"{jobs} worker processes" if jobs else "the reading thread"
        options.notes.append(f"{len(paths):,} image files: the first {done} took {per_file * 1e3:.2f} ms each "
                             f"(median), so they are decoded in {where}")
    if jobs > 0:
        size = task_size(per_file, len(paths) - done, jobs)
        tasks = [range(start, min(start + size, len(paths))) for start in range(done, len(paths), size)]
        # imported here: with multiprocessing it is 30 ms of an IDX or CSV run's start-up
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=_worker_context())
        try:
            results = ordered_map(
                lambda task: pool.submit(work, [paths[i] for i in task], options.max_pixels),
                tasks,
                window=4 * jobs,  # enough to keep every worker busy, few enough to bound memory
            )
            for task, result in zip(tasks, results, strict=True):
                yield from regroup.add(task, result)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    else:
        for start in range(done, len(paths), TASK_FILES):
            task = range(start, min(start + TASK_FILES, len(paths)))
            yield from regroup.add(task, work([paths[i] for i in task], options.max_pixels))
    yield from regroup.flush()
    return len(paths)


# (pixels float32 [k, 28, 28] or encoded bytes, indices of the k good files, (index, reason) of the bad ones)
TaskResult = tuple[np.ndarray | list[bytes], list[int], list[tuple[int, str]]]


def decode_files(paths: list[str], max_pixels: int | None = None) -> TaskResult:
    """Read and preprocess image files (runs in a worker process): the service's preprocessing, per file."""
    blobs, read, bad = read_files(paths)
    pixels, decoded, undecodable = decode_blobs(blobs, max_pixels)
    bad += [(read[i], reason) for i, reason in undecodable]
    bad.sort()
    return pixels, [read[i] for i in decoded], bad


def decode_blobs(blobs: Sequence[bytes], max_pixels: int | None = None) -> TaskResult:
    """Preprocess encoded image files (``service.imaging``, as for an upload): float32 [k, 28, 28]
    for the k that decode, their indices, and (index, reason) for the others. Every engine decodes here."""
    from service.imaging import DEFAULT_MAX_PIXELS, ImagingError, preprocess_image_bytes

    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    out = np.empty((len(blobs), 28, 28), np.float32)
    good: list[int] = []
    bad: list[tuple[int, str]] = []
    for i, data in enumerate(blobs):
        try:
            out[len(good)] = preprocess_image_bytes(data, max_pixels=max_pixels)
        except ImagingError as exc:
            bad.append((i, str(exc)))
        else:
            good.append(i)
    return out[: len(good)], good, bad


def read_files(paths: list[str], max_pixels: int | None = None) -> tuple[list[bytes], list[int],
                                                                                list[tuple[int, str]]]:
    """Read image files undecoded (remote mode: the service decodes them, and applies its own limit)."""
    del max_pixels
    blobs: list[bytes] = []
    good: list[int] = []
    bad: list[tuple[int, str]] = []
    for i, path in enumerate(paths):
        try:
            with open(path, "rb") as f:
                blobs.append(f.read())
        except OSError as exc:
            bad.append((i, f"cannot read the file: {exc.strerror or exc}"))
        else:
            good.append(i)
    return blobs, good, bad


def _worker_context() -> BaseContext:
    """Worker processes for decoding: forkserver where available (a fork of this multi-threaded process
    is unsafe, and a fresh interpreter per worker is slow to start), spawn elsewhere. Either way a
    worker also imports the main script (as ``__mp_main__``): for `digits` that is the small cli.py."""
    import multiprocessing

    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__, _PREPROCESS])  # workers start with numpy, Pillow and these
        return context
    return multiprocessing.get_context("spawn")


class _Regroup:
    """Collects finished tasks, hands out batches of exactly ``batch_size`` items (the last may be short)."""

    def __init__(self, source: ImageFiles, offset: int, options: ReadOptions) -> None:
        self.source = source
        self.offset = offset
        self.size = options.batch_size
        self.strict = options.strict
        self.indices: list[int] = []  # of the good files waiting, in order
        self.arrays: list[np.ndarray] = []  # their pixels, float32 [k, 28, 28] per task (local mode)
        self.blobs: list[bytes] = []  # or their encoded bytes (remote mode)
        self.errors: list[InputError] = []
        self.seen = 0  # files handled since the last batch, good or bad

    def add(self, task: range, result: TaskResult) -> Iterator[Batch]:
        payload, good, bad = result
        self.indices.extend(task[i] for i in good)
        if isinstance(payload, np.ndarray):
            self.arrays.append(payload)
        else:
            self.blobs.extend(payload)
        self.errors.extend(InputError(self.source.paths[task[i]], reason) for i, reason in bad)
        self.seen += len(task)
        if bad and self.strict:  # report it now: the consumer stops at the first bad input
            yield self._take(0)
        while len(self.indices) >= self.size:
            yield self._take(self.size)

    def flush(self) -> Iterator[Batch]:
        if self.indices or self.errors:
            yield self._take(len(self.indices))

    def _take(self, n: int) -> Batch:
        indices, self.indices = self.indices[:n], self.indices[n:]
        pixels = blobs = None
        if self.arrays:
            waiting = np.concatenate(self.arrays) if len(self.arrays) > 1 else self.arrays[0]
            pixels, rest = waiting[:n], waiting[n:]
            self.arrays = [rest] if len(rest) else []
        else:
            blobs, self.blobs = self.blobs[:n], self.blobs[n:]
        paths = self.source.paths
        labels = None
        if self.source.folder_labels:
            labels = np.fromiter((folder_label(paths[i]) for i in indices), np.int64, len(indices))
        batch = Batch(
            [paths[i] for i in indices],
            np.asarray(indices, np.int64) + self.offset + 1,
            labels,
            pixels=pixels,
            blobs=blobs,
            errors=self.errors,
            seen=self.seen,
        )
        self.errors, self.seen = [], 0
        return batch
