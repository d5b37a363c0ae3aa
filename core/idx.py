"""IDX files, the format of MNIST and Fashion-MNIST: read (gzip or raw) and write, with messages that name the file."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from core.contract import IMAGE_SIDE
from core.files import DataError, atomic_write


class IdxFormatError(DataError):
    """An IDX file (or its gzip wrapper) is malformed or truncated."""


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
    raw = _read_file(path, "check the path (digits train downloads MNIST when no --data-dir is given)")
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
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
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
