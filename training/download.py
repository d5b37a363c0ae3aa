"""Data sets for training: MNIST and Fashion-MNIST from public mirrors, checked and cached.

``fetch`` finds a data set's four IDX files: in the directory the user gave (read, never
written), else in the cache (``default_data_dir()``), else downloads them into the cache from
each mirror in turn, verified against the published checksums and written atomically.
Mirrors come from the ``mirrors`` argument (``digits train --mirror URL``), else
``$DIGITS_MNIST_MIRRORS`` (``$DIGITS_FASHION_MNIST_MIRRORS``), else the spec's public list.
"""

from __future__ import annotations

import http.client
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, Unpack

import numpy as np
from tqdm import tqdm

from core.contract import DIGIT_LABELS, MNIST_MEAN, MNIST_STD
from core.files import (
    IO_BLOCK,
    DataError,
    atomic_write,
    file_digest,
    new_hash,
    parse_checksum,
    verify_checksum,
)
from core.idx import IdxFormatError, load_idx_images, load_idx_labels

logger = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "FILE_KEYS",
    "ChecksumError",
    "DataError",
    "DatasetSpec",
    "DownloadError",
    "default_data_dir",
    "download",
    "fetch",
    "load_split",
    "mirrors_from_env",
]

# What to try when the data cannot be had; every message about missing data ends with it.
OFFLINE_HINT = (
    "Offline? Point digits train at IDX files you have with --data-dir DIR (or $DIGITS_DATA_DIR for the cache), "
    "at a reachable copy with --mirror URL (repeatable; or ${env}), and add --no-verify for IDX files that are "
    "not the official ones (e.g. --data-dir tests/data/mnist-sample)."
)


class ChecksumError(DataError):
    """A file's checksum differs from the published one."""


class DownloadError(DataError):
    """A file could not be downloaded from any mirror."""


FILE_KEYS: tuple[str, ...] = ("train_images", "train_labels", "test_images", "test_labels")


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
            parse_checksum(checksum, f"data set {self.name!r}, file {name}")


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
        class_names=DIGIT_LABELS,
        mean=MNIST_MEAN,
        std=MNIST_STD,
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


def mirrors_env_var(dataset: str) -> str:
    """The environment variable listing a data set's mirrors: DIGITS_MNIST_MIRRORS, DIGITS_FASHION_MNIST_MIRRORS."""
    return "DIGITS_" + dataset.upper().replace("-", "_") + "_MIRRORS"


def mirrors_from_env(dataset: str) -> tuple[str, ...] | None:
    """Base URLs from the data set's mirrors variable (separated by spaces or commas), or None when unset."""
    value = os.environ.get(mirrors_env_var(dataset), "").replace(",", " ").split()
    return tuple(value) or None


def _offline_hint(dataset: str) -> str:
    return OFFLINE_HINT.replace("${env}", f"${mirrors_env_var(dataset)}")



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
        algorithm, want = parse_checksum(expected)
        hasher = new_hash(algorithm)
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
                while block := response.read(IO_BLOCK):
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
    dataset: str,
    name: str,
    dest: Path,
    expected: str | None,
    bases: Sequence[str],
    *,
    timeout: float,
    progress: bool,
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
        f"{f' (it must match {expected})' if expected else ''} and run again.{stale}\n"
        f"{_offline_hint(dataset)}"
    )


def _describe_idx(path: Path) -> str | None:
    """"a valid IDX file of 10,000 images" when ``path`` reads as MNIST-style IDX, else None."""
    try:
        array = load_idx_images(path) if "images" in path.name else load_idx_labels(path)
    except IdxFormatError:
        return None
    return f"a valid IDX file of {len(array):,} {'images' if array.ndim == 3 else 'labels'}"


def _check(spec: DatasetSpec, path: Path) -> str | None:
    """None when ``path`` matches the published checksum (or none is published), else what it is instead."""
    expected = spec.checksums.get(path.name)
    if expected is None:
        logger.debug("%s: no published checksum, accepting the file as it is", path)
        return None
    if verify_checksum(path, expected):
        return None
    algorithm, _ = parse_checksum(expected)
    return f"checksum {algorithm}:{file_digest(path, algorithm)} does not match the published {expected}"


class FetchOptions(TypedDict, total=False):
    """The keyword arguments of ``fetch`` that ``load_split`` passes on."""

    cache_dir: str | Path | None
    mirrors: Sequence[str] | None
    verify: bool
    download_missing: bool
    progress: bool
    timeout: float


def fetch(
    dataset: str = "mnist",
    data_dir: str | Path | None = None,
    *,
    keys: Sequence[str] = FILE_KEYS,
    cache_dir: str | Path | None = None,
    mirrors: Sequence[str] | None = None,
    verify: bool = True,
    download_missing: bool = True,
    progress: bool = True,
    timeout: float = 30.0,
) -> dict[str, Path]:
    """Find the data set's files (``keys``, by default all four); return {FILE_KEYS key: path}.

    ``data_dir`` is a directory the user gave: files there are used (with ``verify`` they must
    match the published checksum) and nothing is ever written into it. Files it lacks, and all
    files when it is None, come from ``cache_dir`` (default ``default_data_dir() / dataset``),
    where missing or corrupt files are downloaded from each mirror in turn, always verified.
    ``mirrors`` overrides ``$DIGITS_<DATASET>_MIRRORS``, which overrides the spec's list.
    ``verify=False`` accepts present files unchecked (custom data, the test sample).
    """
    spec = _spec(dataset)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_data_dir() / spec.name
    given = Path(data_dir).expanduser() if data_dir is not None else None
    paths: dict[str, Path] = {}
    wanted: list[str] = []  # keys to take from the cache, downloading what is missing or corrupt there
    for key in keys:
        name = spec.files[key]
        if given is None:
            wanted.append(key)
            continue
        path = given / name
        if not path.is_file():
            wanted.append(key)
            continue
        problem = _check(spec, path) if verify else None
        if problem is None:
            paths[key] = path
            continue
        described = _describe_idx(path)
        if described is not None:
            raise ChecksumError(
                f"{path}: {described}, but not the official {spec.name} file ({problem}). "
                "To train on it as it is, add --no-verify."
            )
        logger.warning("%s is corrupt (%s); using the official file from the cache %s instead", path, problem, cache)
        wanted.append(key)
    if given is not None and wanted:
        names = ", ".join(spec.files[key] for key in wanted)
        logger.info("%s: %s not there; looking in the cache %s", given, names, cache)

    missing = [key for key in wanted if not (cache / spec.files[key]).is_file()]
    corrupt: list[str] = []
    for key in wanted:
        path = cache / spec.files[key]
        paths[key] = path
        if key in missing or not verify:
            continue
        problem = _check(spec, path)
        if problem is None:
            continue
        if not download_missing:
            raise ChecksumError(
                f"{path}: {problem}; the file is corrupt or a different version: delete it so it is downloaded "
                "again, or pass --no-verify (verify=False) if it is deliberately custom data"
            )
        logger.warning("%s: %s; downloading it again", path, problem)
        corrupt.append(key)
    if missing and not download_missing:
        names = ", ".join(spec.files[key] for key in missing)
        where = f"{given} nor in {cache}" if given is not None else str(cache)
        raise DataError(
            f"{spec.name}: {names} not found in {where}; allow downloading (download_missing=True) "
            f"or copy the files there by hand. {_offline_hint(spec.name)}"
        )
    bases = tuple(mirrors) if mirrors is not None else mirrors_from_env(spec.name) or spec.mirrors
    for key in keys:
        if key in missing or key in corrupt:
            name = spec.files[key]
            _download_from_mirrors(
                spec.name, name, paths[key], spec.checksums.get(name), bases, timeout=timeout, progress=progress
            )
    return paths



def load_split(
    dataset: str, split: str, data_dir: str | Path | None = None, **options: Unpack[FetchOptions]
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels uint8 [N]) of the "train" or "test" split.

    Only the split's two files are fetched (see ``fetch`` for the directories and options).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    spec = _spec(dataset)
    keys = (f"{split}_images", f"{split}_labels")
    paths = fetch(dataset, data_dir, keys=keys, **options)
    images = load_idx_images(paths[keys[0]])
    labels = load_idx_labels(paths[keys[1]], num_classes=len(spec.class_names))
    if len(images) != len(labels):
        raise DataError(
            f"{paths[keys[0]]} holds {len(images):,} images but {paths[keys[1]]} holds "
            f"{len(labels):,} labels; the two files must come from the same release: replace both"
        )
    return images, labels
