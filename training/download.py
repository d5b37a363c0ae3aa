"""Data sets for digit recognition: IDX files, Kaggle CSVs, mirror downloads with checksums.

Only numpy, the standard library and tqdm are used: the scoring CLI and the service reuse
this module and must never import torch.

Layout of the module:
- errors (``DataError`` and its subclasses, ``RowError``);
- IDX reading and writing (the original MNIST / Fashion-MNIST format);
- data set specs, checksums, downloads and the local cache (``fetch``, ``load_split``);
- the Kaggle "digit-recognizer" CSV format (a fast streaming reader, writers);
- ``stratified_split`` for a seeded train/validation split.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import hashlib
import http.client
import logging
import math
import operator
import os
import re
import secrets
import struct
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

logger = logging.getLogger(__name__)

_IO_BLOCK = 1 << 20  # 1 MiB: hashing and download block size


# --------------------------------------------------------------------------- errors


class DataError(Exception):
    """A data file is missing, malformed or corrupt. The message names the file and what to do."""


class IdxFormatError(DataError):
    """An IDX file (or its gzip wrapper) is malformed or truncated."""


class ChecksumError(DataError):
    """A file's checksum differs from the published one."""


class DownloadError(DataError):
    """A file could not be downloaded from any mirror."""


@dataclass(frozen=True)
class RowError:
    """One bad line of a CSV file. ``line`` is the 1-based physical line number (the header is line 1)."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


_MAX_LISTED_ERRORS = 20
_CSV_HINT = (
    "Fix or delete these rows, or read with strict=False to skip them "
    "(the skipped rows are listed in each chunk's errors)."
)


class CsvFormatError(DataError):
    """A Kaggle CSV has a bad header or bad rows; ``errors`` lists every problem found."""

    def __init__(self, path: str | Path, errors: Sequence[RowError], hint: str = _CSV_HINT) -> None:
        self.path = Path(path)
        self.errors: list[RowError] = list(errors)
        self.hint = hint
        super().__init__(self._message())

    def _message(self) -> str:
        if len(self.errors) == 1:
            return f"{self.path}: {self.errors[0]}\n{self.hint}"
        shown = "\n".join(f"  {error}" for error in self.errors[:_MAX_LISTED_ERRORS])
        more = len(self.errors) - _MAX_LISTED_ERRORS
        tail = f"\n  ... and {more} more" if more > 0 else ""
        return f"{self.path}: {len(self.errors)} bad rows:\n{shown}{tail}\n{self.hint}"

    def __reduce__(self) -> tuple[type[CsvFormatError], tuple[Path, list[RowError], str]]:
        # Exceptions are pickled as cls(*args); ours takes other arguments than its message.
        return (type(self), (self.path, self.errors, self.hint))


# --------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` only once the block finishes without error.

    The data goes to a hidden temporary file in the same directory (so ``os.replace`` is an
    atomic rename); on any failure the temporary file is removed and ``path`` is untouched.
    The parent directory is created if needed. (clients/outputs.py uses this too.)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
    # os.open with 0o666 lets the umask decide the final permissions, like a plain open() would.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    done = False
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        done = True
    finally:
        if not done:
            tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- IDX files

IDX_IMAGES_MAGIC = 0x00000803  # 2051: uint8, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # 2049: uint8, 1 dimension
_GZIP_MAGIC = b"\x1f\x8b"

# IDX type code -> element type as stored (big-endian).
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_file(path: Path, what_to_do: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; {what_to_do}") from None


def load_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw (told apart by the gzip magic bytes, not the name).

    Returns a new, writable array in native byte order with the shape the header declares.
    Raises ``IdxFormatError`` naming the file for a bad magic number, a truncated or corrupt
    gzip stream, a payload shorter than the header declares, or bytes after the payload.
    """
    path = Path(path)
    raw = _read_file(path, "check the path, or call fetch() to download the data set")
    compressed = raw[:2] == _GZIP_MAGIC
    if compressed:
        try:
            data = gzip.decompress(raw)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise IdxFormatError(
                f"{path}: the gzip stream is truncated or corrupt ({exc}); "
                "delete the file and download it again"
            ) from exc
    else:
        data = raw
    return _parse_idx(data, path, compressed)


def _parse_idx(data: bytes, path: Path, compressed: bool) -> np.ndarray:
    where = "after decompression" if compressed else "in the file"
    redo = "delete the file and download it again"
    if len(data) < 4:
        raise IdxFormatError(
            f"{path}: only {len(data)} bytes {where}, too short for an IDX header; the file is "
            f"truncated or not an IDX file; {redo}"
        )
    magic = int.from_bytes(data[:4], "big")
    type_code, ndim = data[2], data[3]
    if data[:2] != b"\0\0" or type_code not in _IDX_DTYPES or ndim == 0:
        note = ""
        if not compressed and path.suffix == ".gz":
            note = " (the name ends in .gz but the content is not gzip-compressed)"
        raise IdxFormatError(
            f"{path}: magic number 0x{magic:08x} is not an IDX header{note}; expected two zero bytes, "
            f"a type code and the number of dimensions, e.g. 0x{IDX_IMAGES_MAGIC:08x} ({IDX_IMAGES_MAGIC}) "
            f"for images or 0x{IDX_LABELS_MAGIC:08x} ({IDX_LABELS_MAGIC}) for labels; "
            "check that this is an MNIST-style IDX file"
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise IdxFormatError(
            f"{path}: truncated header: it declares {ndim} dimensions ({header_len} header bytes) but "
            f"there are only {len(data)} bytes {where}; {redo}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = _IDX_DTYPES[type_code]
    expected = math.prod(dims) * dtype.itemsize
    actual = len(data) - header_len
    if actual < expected:
        raise IdxFormatError(
            f"{path}: truncated: the header declares shape {dims}, i.e. {expected:,} bytes of data, "
            f"but only {actual:,} bytes follow {where}; {redo}"
        )
    if actual > expected:
        raise IdxFormatError(
            f"{path}: {actual - expected:,} unexpected bytes after the data: the header declares shape "
            f"{dims}, i.e. {expected:,} bytes, but {actual:,} bytes follow {where}; the file is corrupt "
            f"or its header is wrong; {redo}"
        )
    native = dtype.newbyteorder("=")
    if expected == 0:
        return np.zeros(dims, dtype=native)
    array = np.frombuffer(data, dtype=dtype, count=math.prod(dims), offset=header_len)
    # A copy: the result is writable (torch.from_numpy warns on read-only arrays) and native-endian.
    return array.astype(native, copy=True).reshape(dims)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzip-compressed when ``path`` ends in ".gz"; atomic.

    uint8 is the MNIST type; int8, int16, int32, float32 and float64 use the other IDX type codes.
    """
    path = Path(path)
    array = np.asarray(array)
    code = next(
        (
            c
            for c, dt in _IDX_DTYPES.items()
            if dt.kind == array.dtype.kind and dt.itemsize == array.dtype.itemsize
        ),
        None,
    )
    if code is None:
        raise ValueError(
            f"cannot write {path}: IDX has no type for {array.dtype}; convert the array first, "
            "e.g. array.astype(np.uint8) for images and labels"
        )
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"cannot write {path}: IDX needs 1 to 255 dimensions, the array has {array.ndim}")
    if any(d >= 2**32 for d in array.shape):
        raise ValueError(f"cannot write {path}: dimension sizes must be below 2**32, got {array.shape}")
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    with atomic_write(path) as out:
        if path.name.endswith(".gz"):
            # mtime=0 and the final name (not the temporary one) make the output reproducible.
            with gzip.GzipFile(filename=path.name[:-3], mode="wb", fileobj=out, mtime=0) as gz:
                gz.write(header)
                gz.write(payload)
        else:
            out.write(header)
            out.write(payload)


def load_idx_images(path: str | Path) -> np.ndarray:
    """Read an IDX image file: uint8 [N, 28, 28]."""
    images = load_idx(path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise IdxFormatError(
            f"{path}: holds a {images.dtype} array of shape {images.shape}; expected uint8 images of "
            f"shape (N, 28, 28) (IDX magic {IDX_IMAGES_MAGIC}); is this a labels file or another data set?"
        )
    return images


def load_idx_labels(path: str | Path, num_classes: int = 10) -> np.ndarray:
    """Read an IDX label file: uint8 [N], every label below ``num_classes``."""
    labels = load_idx(path)
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise IdxFormatError(
            f"{path}: holds a {labels.dtype} array of shape {labels.shape}; expected uint8 labels of "
            f"shape (N,) (IDX magic {IDX_LABELS_MAGIC}); is this an images file?"
        )
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        raise IdxFormatError(
            f"{path}: {bad.size} labels are outside 0-{num_classes - 1}, the first is {labels[bad[0]]} "
            f"at index {bad[0]}; the file is corrupt or belongs to a data set with more classes"
        )
    return labels


# --------------------------------------------------------------------------- data sets and the cache

FILE_KEYS: tuple[str, ...] = ("train_images", "train_labels", "test_images", "test_labels")
_HASH_HEX_LENGTHS = {"sha256": 64, "md5": 32}
_HEX = re.compile(r"[0-9a-f]+")


def _parse_checksum(expected: str, context: str = "checksum") -> tuple[str, str]:
    algorithm, sep, digest = expected.partition(":")
    algorithm, digest = algorithm.lower(), digest.lower()
    if not sep or len(digest) != _HASH_HEX_LENGTHS.get(algorithm, -1) or not _HEX.fullmatch(digest):
        raise ValueError(f"{context}: {expected!r} is not 'sha256:<64 hex digits>' or 'md5:<32 hex digits>'")
    return algorithm, digest


@dataclass(frozen=True)
class DatasetSpec:
    """Where a data set's four IDX files come from and how to check them."""

    name: str
    files: dict[str, str]  # FILE_KEYS -> file name, e.g. "train-images-idx3-ubyte.gz"
    checksums: dict[str, str]  # file name -> "sha256:<hex>" or "md5:<hex>"
    mirrors: tuple[str, ...]  # base URLs, tried in order
    class_names: tuple[str, ...]
    mean: float  # training-set pixel mean on the 0..1 scale
    std: float  # training-set pixel standard deviation on the 0..1 scale

    def __post_init__(self) -> None:
        if set(self.files) != set(FILE_KEYS):
            raise ValueError(
                f"data set {self.name!r}: files must have the keys {FILE_KEYS}, got {tuple(self.files)}"
            )
        for name, checksum in self.checksums.items():
            _parse_checksum(checksum, f"data set {self.name!r}, file {name}")


_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

# The SHA-256 sums of the original files (the same files whose MD5s torchvision checks).
_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}

DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        files=dict(_MNIST_FILES),
        checksums={name: f"sha256:{digest}" for name, digest in _MNIST_SHA256.items()},
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        class_names=tuple(str(digit) for digit in range(10)),
        mean=0.1307,
        std=0.3081,
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        files=dict(_MNIST_FILES),
        # The MD5s torchvision checks (torchvision/datasets/mnist.py, class FashionMNIST).
        checksums={
            "train-images-idx3-ubyte.gz": "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "md5:25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "md5:bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "md5:bb300cfdad3c16e7a12a480ee83cd310",
        },
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
        ),
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        mean=0.2860,
        std=0.3530,
    ),
}


def _spec(dataset: str) -> DatasetSpec:
    try:
        return DATASETS[dataset]
    except KeyError:
        raise ValueError(f"unknown data set {dataset!r}; choose one of: {', '.join(DATASETS)}") from None


def default_data_dir() -> Path:
    """Root of the download cache: $DIGITS_DATA_DIR, else $XDG_CACHE_HOME/digits, else ~/.cache/digits.

    ``fetch`` keeps each data set in a subdirectory named after it (the file names are shared).
    """
    explicit = os.environ.get("DIGITS_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "digits"


def _new_hash(algorithm: str) -> hashlib._Hash:
    if algorithm not in _HASH_HEX_LENGTHS:
        raise ValueError(f"unsupported hash algorithm {algorithm!r}; use 'sha256' or 'md5'")
    # usedforsecurity=False: MD5 here is an integrity check, and FIPS builds refuse it otherwise.
    return hashlib.new(algorithm, usedforsecurity=False)


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    digest = _new_hash(algorithm)
    with open(path, "rb") as source:
        while block := source.read(_IO_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path: str | Path, expected: str) -> bool:
    """True when the file matches ``expected`` ("sha256:<hex>" or "md5:<hex>")."""
    algorithm, digest = _parse_checksum(expected)
    return file_digest(path, algorithm) == digest


def dataset_digest(paths: Iterable[Path]) -> str:
    """The SHA-256 of the given files' bytes, in order, as "sha256:<hex>" (recorded in model metadata)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as source:
            while block := source.read(_IO_BLOCK):
                digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def download(
    url: str,
    dest: Path,
    expected: str | None,
    *,
    timeout: float = 30.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest``, checking ``expected`` ("sha256:..."/"md5:...") when given.

    The data streams into a temporary file next to ``dest``, which replaces ``dest`` only after
    the checksum matched; on any failure the temporary file is removed and ``dest`` is untouched.
    ``timeout`` bounds the connection and each read. Raises ``DownloadError`` (network, HTTP,
    short read) or ``ChecksumError``, both starting with the URL.
    """
    dest = Path(dest)
    hasher, want = None, ""
    if expected is not None:
        algorithm, want = _parse_checksum(expected)
        hasher = _new_hash(algorithm)
    request = urllib.request.Request(url, headers={"User-Agent": "digits-data/0.1"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, atomic_write(dest) as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            received = 0
            # disable=None: tqdm shows the bar only on a terminal.
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                disable=None if progress else True,
                leave=False,
            ) as bar:
                while block := response.read(_IO_BLOCK):
                    out.write(block)
                    if hasher is not None:
                        hasher.update(block)
                    received += len(block)
                    bar.update(len(block))
            if total is not None and received != total:
                raise DownloadError(f"{url}: the connection closed after {received:,} of {total:,} bytes")
            if hasher is not None and hasher.hexdigest() != want:
                raise ChecksumError(
                    f"{url}: checksum mismatch: got {hasher.name}:{hasher.hexdigest()}, expected {expected}; "
                    "the mirror served a different or corrupted file"
                )
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        reason = f"timed out after {timeout:g} s" if isinstance(exc.reason, TimeoutError) else str(exc.reason)
        raise DownloadError(f"{url}: {reason}") from exc
    except TimeoutError as exc:
        raise DownloadError(f"{url}: timed out after {timeout:g} s") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadError(f"{url}: {type(exc).__name__}: {exc}") from exc
    return dest


def _mirror_url(base: str, name: str) -> str:
    return (base if base.endswith("/") else base + "/") + urllib.parse.quote(name)


def _download_from_mirrors(
    name: str, dest: Path, expected: str | None, bases: Sequence[str], *, timeout: float, progress: bool
) -> None:
    failures: list[str] = []
    for base in bases:
        url = _mirror_url(base, name)
        logger.info("downloading %s", url)
        try:
            download(url, dest, expected, timeout=timeout, progress=progress)
        except (DownloadError, ChecksumError) as exc:
            logger.warning("download failed, trying the next mirror: %s", exc)
            failures.append(str(exc))
        else:
            logger.info("saved %s", dest)
            return
    listed = "\n".join(f"  - {failure}" for failure in failures) or "  (no mirrors were given)"
    stale = f" The corrupt copy at {dest} was left in place." if dest.exists() else ""
    raise DownloadError(
        f"could not download {name}; every mirror failed:\n{listed}\n"
        f"If you have the file, place it in {dest.parent} by hand"
        f"{f' (it must match {expected})' if expected else ''} and run again, "
        f"or pass mirrors=[...] pointing at a copy you can reach.{stale}"
    )


def _fetch_files(
    spec: DatasetSpec,
    keys: Sequence[str],
    data_dir: str | Path | None,
    *,
    mirrors: Sequence[str] | None,
    verify: bool,
    download_missing: bool,
    progress: bool,
    timeout: float,
) -> dict[str, Path]:
    directory = Path(data_dir).expanduser() if data_dir is not None else default_data_dir() / spec.name
    paths = {key: directory / spec.files[key] for key in keys}
    missing = [key for key in keys if not paths[key].is_file()]
    corrupt: list[str] = []
    for key in keys:
        name = spec.files[key]
        if key in missing or not verify:
            continue
        expected = spec.checksums.get(name)
        if expected is None:
            logger.debug("%s: no published checksum, accepting the file as it is", paths[key])
        elif not verify_checksum(paths[key], expected):
            corrupt.append(key)
    if not download_missing and missing:
        names = ", ".join(spec.files[key] for key in missing)
        raise DataError(
            f"{spec.name}: {names} not found in {directory}; allow downloading (download_missing=True) "
            "or copy the files there by hand"
        )
    for key in corrupt:
        path, expected = paths[key], spec.checksums[spec.files[key]]
        algorithm, _ = _parse_checksum(expected)
        found = f"{algorithm}:{file_digest(path, algorithm)}"
        if not download_missing:
            raise ChecksumError(
                f"{path}: checksum {found} does not match the published {expected}; the file is corrupt or "
                "a different version: delete it so it is downloaded again, or pass verify=False if it is "
                "deliberately custom data"
            )
        logger.warning("%s: checksum %s, expected %s; downloading it again", path, found, expected)
    bases = tuple(mirrors) if mirrors is not None else spec.mirrors
    for key in keys:
        if key in missing or key in corrupt:
            name = spec.files[key]
            _download_from_mirrors(
                name, paths[key], spec.checksums.get(name), bases, timeout=timeout, progress=progress
            )
    return paths


def fetch(
    dataset: str = "mnist",
    data_dir: str | Path | None = None,
    *,
    mirrors: Sequence[str] | None = None,
    verify: bool = True,
    download_missing: bool = True,
    progress: bool = True,
    timeout: float = 30.0,
) -> dict[str, Path]:
    """Make sure the data set's four files are in ``data_dir``; return {FILE_KEYS key: path}.

    ``data_dir`` holds the files directly; when None it is ``default_data_dir() / dataset``.
    Present files are used as they are (with ``verify`` they must match the published checksum;
    a mismatch is logged and the file downloaded again). Missing files are downloaded from each
    mirror in turn (``mirrors`` overrides the spec's), always with checksum verification.
    ``verify=False`` accepts present files unchecked (custom data, the test sample).
    """
    spec = _spec(dataset)
    return _fetch_files(
        spec,
        FILE_KEYS,
        data_dir,
        mirrors=mirrors,
        verify=verify,
        download_missing=download_missing,
        progress=progress,
        timeout=timeout,
    )


def load_split(
    dataset: str,
    split: str,
    data_dir: str | Path | None = None,
    *,
    verify: bool = True,
    download_missing: bool = True,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels uint8 [N]) of the "train" or "test" split.

    Only the split's two files are fetched (see ``fetch`` for ``data_dir`` and the flags).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    spec = _spec(dataset)
    keys = (f"{split}_images", f"{split}_labels")
    paths = _fetch_files(
        spec,
        keys,
        data_dir,
        mirrors=None,
        verify=verify,
        download_missing=download_missing,
        progress=progress,
        timeout=30.0,
    )
    images = load_idx_images(paths[keys[0]])
    labels = load_idx_labels(paths[keys[1]], num_classes=len(spec.class_names))
    if len(images) != len(labels):
        raise DataError(
            f"{paths[keys[0]]} holds {len(images):,} images but {paths[keys[1]]} holds "
            f"{len(labels):,} labels; the two files must come from the same release: replace both"
        )
    return images, labels


# --------------------------------------------------------------------------- Kaggle CSV

KAGGLE_PIXELS = 784
_TEST_HEADER = ",".join(f"pixel{i}" for i in range(KAGGLE_PIXELS))
_TRAIN_HEADER = "label," + _TEST_HEADER
_HEADER_HINT = (
    "Use the digit-recognizer competition's train.csv (header 'label,pixel0,...,pixel783') or "
    "test.csv (header 'pixel0,...,pixel783') with its header row unchanged."
)
_STRICT_HINT = (
    "Fix the row, or read with strict=False to skip bad rows (they are listed in each chunk's errors)."
)
_BLOCK_BYTES = 512 << 10  # bytes read per step; small enough that the parsing stays in cache
_MAX_LINE_BYTES = 1 << 20  # a valid row is at most ~3 KiB; longer lines are skipped, not buffered
_FAST_CHARS = b"0123456789,\n"
_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass
class KaggleChunk:
    """Rows of a Kaggle CSV.

    ``errors`` lists the bad rows skipped after the previous chunk's rows and before the next
    chunk's rows; over all chunks of a file they come in line order.
    """

    images: np.ndarray  # uint8 [n, 28, 28]
    labels: np.ndarray | None  # uint8 [n]; None for test.csv (no label column)
    lines: np.ndarray  # int64 [n], 1-based line numbers of the rows
    errors: list[RowError] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def _column_name(index: int, has_label: bool) -> str:
    if has_label:
        return "label" if index == 0 else f"pixel{index - 1}"
    return f"pixel{index}"


def _read_header(source: BinaryIO, path: Path) -> bool:
    """Check line 1 and return whether it is the train.csv form (with a label column)."""
    raw = source.readline(_MAX_LINE_BYTES)
    if not raw:
        raise CsvFormatError(path, [RowError(1, "the file is empty, expected a header line")], _HEADER_HINT)
    if not raw.endswith(b"\n") and len(raw) >= _MAX_LINE_BYTES:
        reason = f"no line break in the first {_MAX_LINE_BYTES:,} bytes; this is not a CSV file"
        raise CsvFormatError(path, [RowError(1, reason)], _HEADER_HINT)
    raw = raw.removeprefix(codecs.BOM_UTF8).removesuffix(b"\n").removesuffix(b"\r")
    text = raw.decode("utf-8", errors="replace")
    if text == _TRAIN_HEADER:
        return True
    if text == _TEST_HEADER:
        return False
    found = text.split(",")
    expected = (_TRAIN_HEADER if found[0].strip().lower() == "label" else _TEST_HEADER).split(",")
    mismatch = next((i for i, (a, b) in enumerate(zip(found, expected, strict=False)) if a != b), None)
    if mismatch is not None:
        detail = f"column {mismatch + 1} is {found[mismatch][:30]!r}, expected {expected[mismatch]!r}"
    else:
        detail = f"found {len(found)} columns, expected {len(expected)}"
    if _INTEGER.fullmatch(found[0].strip()):
        detail += " (the file seems to have no header row)"
    shown = text if len(text) <= 60 else text[:57] + "..."
    reason = f"not a Kaggle digit-recognizer header: {detail}; the line starts {shown!r}"
    raise CsvFormatError(path, [RowError(1, reason)], _HEADER_HINT)


@dataclass
class _Rows:
    """Good rows of a file, in line order."""

    images: np.ndarray  # uint8 [n, 784]
    labels: np.ndarray | None  # uint8 [n]; None without a label column
    lines: np.ndarray  # int64 [n]

    @staticmethod
    def from_values(values: np.ndarray, lines: np.ndarray, has_label: bool) -> _Rows:
        """values: [n, ncols] integers already checked to be in range."""
        if has_label:
            return _Rows(values[:, 1:].astype(np.uint8), values[:, 0].astype(np.uint8), lines)
        return _Rows(values.astype(np.uint8), None, lines)

    @staticmethod
    def concatenate(parts: Sequence[_Rows]) -> _Rows:
        labels = [part.labels for part in parts]
        return _Rows(
            np.concatenate([part.images for part in parts]),
            None if labels[0] is None else np.concatenate(labels),  # type: ignore[arg-type]
            np.concatenate([part.lines for part in parts]),
        )

    def __getitem__(self, rows: slice | np.ndarray) -> _Rows:
        labels = None if self.labels is None else self.labels[rows]
        return _Rows(self.images[rows], labels, self.lines[rows])


@dataclass
class _Block:
    """What one block of complete lines parsed into."""

    rows: _Rows
    count: int  # physical lines in the block
    errors: list[RowError]
    blank: list[int]  # line numbers of blank lines (an error only if a non-blank line follows)
    last_nonblank: int  # line number of the last non-blank line, 0 when there is none


@dataclass(frozen=True)
class _LongLine:
    """A line too long to hold in memory, skipped while reading."""

    length: int
    commas: int


def _parse_row_slow(row: bytes, ncols: int, has_label: bool) -> np.ndarray | str | None:
    """The exact reading of one line: its values, the reason it is bad, or None when blank."""
    text = row.decode("utf-8", errors="replace").removesuffix("\r")
    if not text.strip():
        return None
    fields = text.split(",")
    if len(fields) != ncols:
        return f"expected {ncols} columns, found {len(fields)}"
    values = np.empty(ncols, dtype=np.uint8)
    for index, raw in enumerate(fields):
        name = _column_name(index, has_label)
        value = raw.strip()
        if not _INTEGER.fullmatch(value):
            shown = raw if len(raw) <= 20 else raw[:17] + "..."
            return f"column {name}: {shown!r} is not an integer"
        number = int(value)
        high = 9 if has_label and index == 0 else 255
        if not 0 <= number <= high:
            kind = "label" if high == 9 else "pixel"
            return f"column {name}: {kind} {number} is outside 0-{high}"
        values[index] = number
    return values


def _parse_rows_fast(
    text: bytes, ends: np.ndarray, ncols: int, has_label: bool
) -> tuple[np.ndarray, np.ndarray] | None:
    """Parse lines of digits and commas, vectorised: (table uint16 [n, ncols], ok [n]).

    ``text`` holds only digits, commas and newlines (the caller checked) and ``ends`` are the
    positions of its newlines, the last one ending the text. Returns None when a line has the
    wrong number of fields or an empty field. Each value is read from the last three digits of
    its field. ``ok`` marks the lines whose values are in range and that are exactly as long
    as their values printed back in decimal: no field is shorter than its value printed, so
    that equality means every field is its value written canonically, with at most three
    digits, read exactly. The other lines are left to the exact line-by-line reader.
    """
    n = ends.size
    if n == 0:
        return np.empty((0, ncols), dtype=np.uint16), np.empty(0, dtype=bool)
    if text[:1] in (b",", b"\n"):
        return None
    # Three zero digits in front let every field look back three bytes; they add nothing.
    padded = np.frombuffer(b"000" + text, dtype=np.uint8)
    digit = padded - np.uint8(48)  # commas and newlines wrap around to values >= 10
    is_digit = digit < 10
    seps = np.flatnonzero(~is_digit[3:])  # positions of the commas and newlines in text
    # Index among the separators of each line's newline: every line must have ncols fields.
    if (np.diff(np.searchsorted(seps, ends), prepend=-1) != ncols).any():
        return None
    # text[p - k] is padded[p + 3 - k]. The byte before a separator must be a digit.
    ones = digit[2:].take(seps)
    if (ones >= 10).any():
        return None
    digit *= is_digit  # 0 at separators
    tens = digit[1:].take(seps)
    digit[:-1] *= is_digit[1:]  # a hundreds digit counts only if the tens byte is a digit too
    value = digit.take(seps).astype(np.uint16)
    value *= 10
    value += tens
    value *= 10
    value += ones
    table = value.reshape(n, ncols)
    lengths = np.diff(ends, prepend=-1) - 1
    # A line prints as (ncols - 1) commas plus one character per value, one more per value
    # >= 10 and one more per value >= 100. No line prints longer than it is, so equal totals
    # mean every line matches, and the per-line work is only needed when something is off.
    extra = np.count_nonzero(value >= 10) + np.count_nonzero(value >= 100)
    labels_ok = not has_label or table[:, 0].max() <= 9
    if n * (2 * ncols - 1) + extra == lengths.sum() and value.max() <= 255 and labels_ok:
        return table, np.ones(n, dtype=bool)
    printed = (2 * ncols - 1) + np.count_nonzero(table >= 10, axis=1) + np.count_nonzero(table >= 100, axis=1)
    ok = (printed == lengths) & (table.max(axis=1) <= 255)
    if has_label:
        ok &= table[:, 0] <= 9
    return table, ok


def _looks_regular(row: bytes, ncols: int) -> bool:
    """The line-by-line form of the fast path's checks: digits only, ncols fields, none empty."""
    return (
        row.count(b",") == ncols - 1
        and not row.translate(None, _FAST_CHARS)
        and not (row.startswith(b",") or row.endswith(b",") or b",," in row)
    )


def _parse_block(block: bytes, first_line: int, ncols: int, has_label: bool) -> _Block:
    """Parse complete lines (``block`` ends with a newline); line ``first_line`` starts it.

    A regular block (only digits, commas and newlines, ncols fields on every line, no empty
    field) is parsed by ``_parse_rows_fast`` at once, with no Python work per line. Otherwise
    the block is split into lines and those that look regular are parsed together. Every line
    the fast path refuses (a bad row, or an unusual but valid one such as " 12" or "007") goes
    through ``_parse_row_slow``, which decides and gives the exact reason, so the outcome
    never depends on the path a line took nor on where blocks and chunks start.
    """
    if b"\r" in block:
        block = block.replace(b"\r\n", b"\n")
    ends = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)  # newline positions
    starts = np.concatenate([[0], ends[:-1] + 1])
    n = ends.size
    rows: list[bytes] | None = None
    candidates = np.arange(n)
    result = None if block.translate(None, _FAST_CHARS) else _parse_rows_fast(block, ends, ncols, has_label)
    if result is None:
        rows = block.split(b"\n")
        rows.pop()  # the empty piece after the final newline
        candidates = np.flatnonzero(np.fromiter((_looks_regular(row, ncols) for row in rows), bool, n))
        text = b"\n".join([rows[i] for i in candidates]) + b"\n" if candidates.size else b""
        result = _parse_rows_fast(text, np.cumsum((ends - starts)[candidates] + 1) - 1, ncols, has_label)
        if result is None:  # not expected after _looks_regular; the slow path is always right
            candidates = candidates[:0]
            result = np.empty((0, ncols), dtype=np.uint16), np.empty(0, dtype=bool)
    table, ok = result
    if not ok.all():
        table, candidates = table[ok], candidates[ok]
    good = _Rows.from_values(table, first_line + candidates, has_label)
    slow = np.ones(n, dtype=bool)
    slow[candidates] = False
    errors: list[RowError] = []
    blank: list[int] = []
    slow_values: list[np.ndarray] = []
    slow_lines: list[int] = []
    for i in np.flatnonzero(slow).tolist():
        row = rows[i] if rows is not None else block[starts[i] : ends[i]]
        parsed = _parse_row_slow(row, ncols, has_label)
        if parsed is None:
            blank.append(first_line + i)
        elif isinstance(parsed, str):
            errors.append(RowError(first_line + i, parsed))
        else:
            slow_values.append(parsed)
            slow_lines.append(first_line + i)
    if slow_values:  # valid rows the fast path refused: merge them in line order
        extra = _Rows.from_values(np.stack(slow_values), np.asarray(slow_lines, dtype=np.int64), has_label)
        merged = _Rows.concatenate([good, extra])
        good = merged[np.argsort(merged.lines, kind="stable")]
    skipped = set(blank)
    last = next((first_line + i for i in range(n - 1, -1, -1) if first_line + i not in skipped), 0)
    return _Block(good, n, errors, blank, last)


def _iter_blocks(source: BinaryIO) -> Iterator[bytes | _LongLine]:
    """Yield blocks of complete lines (each ending with a newline), or a skipped over-long line."""
    rest = b""
    while data := source.read(_BLOCK_BYTES):
        buffer = rest + data if rest else data
        cut = buffer.rfind(b"\n") + 1
        if cut:
            yield buffer[:cut]
            rest = buffer[cut:]
        elif len(buffer) > _MAX_LINE_BYTES:
            # Skip the rest of this line without holding it, counting its fields for the message.
            length, commas = len(buffer), buffer.count(b",")
            while (data := source.read(_BLOCK_BYTES)) and (end := data.find(b"\n")) < 0:
                length, commas = length + len(data), commas + data.count(b",")
            rest = b""
            if data:
                length, commas = length + end, commas + data.count(b",", 0, end)
                rest = data[end + 1 :]
            yield _LongLine(length, commas)
        else:
            rest = buffer
    if rest:
        yield rest + b"\n"


class _ChunkBuffer:
    """Collects parsed rows and hands them out in chunks of exactly ``chunk_rows`` (the last may be short)."""

    def __init__(self, has_label: bool, chunk_rows: int) -> None:
        self.has_label = has_label
        self.chunk_rows = chunk_rows
        self.parts: list[_Rows] = []
        self.count = 0
        self.errors: list[RowError] = []  # in line order
        self.emitted = False

    def add(self, rows: _Rows, errors: list[RowError]) -> None:
        if len(rows.lines):
            self.parts.append(rows)
            self.count += len(rows.lines)
        self.errors.extend(errors)

    def _chunk(self, rows: _Rows, errors: list[RowError]) -> KaggleChunk:
        self.emitted = True
        return KaggleChunk(rows.images.reshape(-1, 28, 28), rows.labels, rows.lines, errors)

    def full_chunks(self) -> Iterator[KaggleChunk]:
        # Strictly more than chunk_rows: the final chunk is never empty unless the file has no rows.
        if self.count <= self.chunk_rows:
            return
        rows = _Rows.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]
        start = 0
        while self.count - start > self.chunk_rows:
            stop = start + self.chunk_rows
            before = [error for error in self.errors if error.line < rows.lines[stop]]
            self.errors = self.errors[len(before) :]
            yield self._chunk(rows[start:stop], before)
            start = stop
        self.parts, self.count = [rows[start:]], self.count - start

    def last_chunk(self) -> Iterator[KaggleChunk]:
        if self.count or self.errors or not self.emitted:
            if self.parts:
                rows = _Rows.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]
            else:
                rows = _Rows.from_values(
                    np.empty((0, KAGGLE_PIXELS + self.has_label), np.uint8),
                    np.empty(0, np.int64),
                    self.has_label,
                )
            yield self._chunk(rows, self.errors)


def iter_kaggle_csv(
    path: str | Path, *, chunk_rows: int = 8192, strict: bool = False
) -> Iterator[KaggleChunk]:
    """Stream a Kaggle digit-recognizer CSV (train.csv or test.csv form) in chunks of ``chunk_rows`` rows.

    Memory stays bounded (a 1 MiB read block plus one chunk) whatever the file size. The
    header must match exactly (a UTF-8 BOM and CRLF line endings are fine). Bad rows (wrong
    column count, a value that is not an integer, a pixel outside 0-255, a label outside 0-9,
    a blank line before more data) are skipped and listed in the chunks' ``errors`` with
    their line numbers; ``strict=True`` raises ``CsvFormatError`` at the first one instead.
    Blank lines at the end of the file are ignored. A file without rows gives one empty chunk.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    path = Path(path)
    try:
        source = open(path, "rb")  # noqa: SIM115 - closed by the with block below, across yields
    except FileNotFoundError:
        raise DataError(
            f"{path}: file not found; download train.csv / test.csv from the Kaggle digit-recognizer "
            "competition, or check the path"
        ) from None
    with source:
        has_label = _read_header(source, path)
        ncols = KAGGLE_PIXELS + has_label
        buffer = _ChunkBuffer(has_label, chunk_rows)
        pending_blank: list[int] = []  # blank lines not yet followed by data
        line = 2  # the header is line 1
        for item in _iter_blocks(source):
            if isinstance(item, _LongLine):
                found = item.commas + 1
                reason = (
                    f"expected {ncols} columns, found {found}"
                    if found != ncols
                    else f"line is {item.length:,} bytes long, far too long for {ncols} integers"
                )
                no_rows = _Rows.from_values(np.empty((0, ncols), np.uint8), np.empty(0, np.int64), has_label)
                block = _Block(no_rows, 1, [RowError(line, reason)], [], line)
            else:
                block = _parse_block(item, line, ncols, has_label)
            line += block.count
            errors = block.errors
            pending_blank += block.blank
            if block.last_nonblank:
                stray = [blank for blank in pending_blank if blank < block.last_nonblank]
                pending_blank = [blank for blank in pending_blank if blank > block.last_nonblank]
                if stray:
                    errors = errors + [
                        RowError(blank, f"expected {ncols} columns, found an empty line") for blank in stray
                    ]
                    errors.sort(key=lambda error: error.line)
            if strict and errors:
                raise CsvFormatError(path, errors[:1], _STRICT_HINT)
            buffer.add(block.rows, errors)
            yield from buffer.full_chunks()
        if pending_blank:
            logger.debug("%s: ignoring %d blank lines at the end", path, len(pending_blank))
        yield from buffer.last_chunk()


def read_kaggle_csv(path: str | Path, *, strict: bool = True) -> KaggleChunk:
    """Read a whole Kaggle CSV. ``strict=True`` raises ``CsvFormatError`` listing every bad row."""
    chunks = list(iter_kaggle_csv(path, chunk_rows=1 << 20, strict=False))
    errors = [error for chunk in chunks for error in chunk.errors]
    if strict and errors:
        raise CsvFormatError(path, errors)
    if len(chunks) == 1:
        return chunks[0]
    labels = [chunk.labels for chunk in chunks]
    return KaggleChunk(
        images=np.concatenate([chunk.images for chunk in chunks]),
        labels=None if labels[0] is None else np.concatenate(labels),  # type: ignore[arg-type]
        lines=np.concatenate([chunk.lines for chunk in chunks]),
        errors=errors,
    )


def _kaggle_cells() -> tuple[np.ndarray, np.ndarray]:
    # For each value 0..255: its digits and a comma, zero-padded to 4 bytes, viewed as one uint32;
    # and the number of digits (where the row's last comma becomes a newline).
    cells = np.zeros((256, 4), dtype=np.uint8)
    digits = np.zeros(256, dtype=np.intp)
    for value in range(256):
        text = f"{value},".encode()
        cells[value, : len(text)] = np.frombuffer(text, dtype=np.uint8)
        digits[value] = len(text) - 1
    return cells.view(np.uint32).ravel(), digits


_CELLS, _DIGITS = _kaggle_cells()
_WRITE_ROWS = 4096  # rows formatted per step (bounds the writer's memory)


def _format_rows(values: np.ndarray) -> bytes:
    """uint8 [n, c] -> CSV text, "\\n" after each row, built without a Python loop over values."""
    n, c = values.shape
    cells = _CELLS[values].view(np.uint8).reshape(n, c, 4)  # [n, c, 4]: digits, ",", zero padding
    cells[np.arange(n), -1, _DIGITS[values[:, -1]]] = ord("\n")
    flat = cells.reshape(-1)
    return flat[flat != 0].tobytes()


def _checked_uint8(array: np.ndarray, what: str, high: int) -> np.ndarray:
    if array.dtype == np.uint8 and high == 255:
        return array
    if array.dtype.kind not in "iub":
        raise ValueError(f"{what} must be integers 0-{high}, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > high):
        raise ValueError(f"{what} must be in 0-{high}, found values from {array.min()} to {array.max()}")
    return array.astype(np.uint8)


def write_kaggle_csv(path: str | Path, images: np.ndarray, labels: np.ndarray | None = None) -> None:
    """Write images (uint8 [N, 28, 28] or [N, 784]) as a Kaggle CSV: train.csv form when labels are given."""
    path = Path(path)
    images = np.asarray(images)
    if not (images.ndim == 3 and images.shape[1:] == (28, 28)) and not (
        images.ndim == 2 and images.shape[1] == KAGGLE_PIXELS
    ):
        raise ValueError(f"images must have shape (N, 28, 28) or (N, 784), got {images.shape}")
    pixels = _checked_uint8(images.reshape(len(images), KAGGLE_PIXELS), "pixel values", 255)
    label_column = None
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(images),):
            raise ValueError(
                f"labels must have shape ({len(images)},) to match the images, got {labels.shape}"
            )
        label_column = _checked_uint8(labels, "labels", 9)
    with atomic_write(path) as out:
        out.write(((_TRAIN_HEADER if label_column is not None else _TEST_HEADER) + "\n").encode("ascii"))
        for start in range(0, len(pixels), _WRITE_ROWS):
            rows = pixels[start : start + _WRITE_ROWS]
            if label_column is not None:
                rows = np.concatenate([label_column[start : start + _WRITE_ROWS, None], rows], axis=1)
            out.write(_format_rows(rows))


def write_kaggle_submission(path: str | Path, predictions: Iterable[int], start_id: int = 1) -> None:
    """Write a Kaggle submission: "ImageId,Label" then one "id,label" line per prediction; atomic."""
    lines = ["ImageId,Label\n"]
    for offset, prediction in enumerate(predictions):
        try:
            label = operator.index(prediction)
        except TypeError:
            raise TypeError(
                f"prediction {offset} is {prediction!r}; expected an integer class index "
                "(take argmax of the scores first)"
            ) from None
        lines.append(f"{start_id + offset},{label}\n")
    with atomic_write(Path(path)) as out:
        out.write("".join(lines).encode("ascii"))


# --------------------------------------------------------------------------- splits


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split stratified by class: sorted int64 (train_idx, val_idx).

    Each class gives round(val_fraction * its count) of its indices, chosen at random, to validation.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    rng = np.random.default_rng(seed)
    picked = [np.empty(0, dtype=np.int64)]
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        picked.append(rng.permutation(members)[: round(val_fraction * len(members))])
    val_idx = np.sort(np.concatenate(picked)).astype(np.int64)
    in_train = np.ones(len(labels), dtype=bool)
    in_train[val_idx] = False
    return np.flatnonzero(in_train).astype(np.int64), val_idx
