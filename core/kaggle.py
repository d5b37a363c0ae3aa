"""The Kaggle digit-recognizer CSV: a streaming reader with line-numbered errors, and writers.

train.csv is "label,pixel0,...,pixel783" then one row per image; test.csv has no label column.
Rows are parsed by numpy's C reader (``np.loadtxt``) a block of lines at a time; a block it
refuses is halved until the bad lines are alone, and those go through the line-by-line reader
(``_parse_row_slow``), which names the line and what is wrong with it.
"""

from __future__ import annotations

import codecs
import logging
import operator
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from core.contract import IMAGE_PIXELS, IMAGE_SIDE
from core.files import DataError, atomic_write

logger = logging.getLogger(__name__)


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


# --------------------------------------------------------------------------- reading

KAGGLE_PIXELS = IMAGE_PIXELS  # 784 pixel columns
_TEST_HEADER = ",".join(f"pixel{i}" for i in range(KAGGLE_PIXELS))
_TRAIN_HEADER = "label," + _TEST_HEADER
_HEADER_HINT = (
    "Use the digit-recognizer competition's train.csv (header 'label,pixel0,...,pixel783') or "
    "test.csv (header 'pixel0,...,pixel783') with its header row unchanged."
)
_STRICT_HINT = (
    "Fix the row, or read with strict=False to skip bad rows (they are listed in each chunk's errors)."
)
_BLOCK_BYTES = 1 << 20  # lines handed to numpy at once, and the read size when skipping an over-long line
_MAX_LINE_BYTES = 1 << 20  # a valid row is at most ~3 KiB; longer lines are skipped, not buffered
# Bytes numpy may be handed; anything else ("1.5", "0x1F", a carriage return inside a line) goes line by line.
_FAST_BYTES = b"0123456789,+- \t\n"
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


def _parse_rows_fast(lines: Sequence[bytes], ncols: int, has_label: bool) -> np.ndarray | None:
    """All ``lines`` (each ending in a newline) as uint8 [n, ncols], or None if any line is not a valid row.

    numpy's C reader does the work; None for a blank line, a wrong column count, anything
    that is not an integer, or a value out of range, and the caller then narrows it down.
    """
    text = b"".join(lines)
    if text.translate(None, _FAST_BYTES) or b"\n\n" in text or text.startswith(b"\n"):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. numpy's deprecated reading of "1.0" as an integer
            values = np.loadtxt(
                text.decode("ascii").splitlines(), dtype=np.int32, delimiter=",", comments=None, ndmin=2
            )
    except (ValueError, Warning):
        return None
    if values.shape != (len(lines), ncols) or (values.size and (values.min() < 0 or values.max() > 255)):
        return None
    if has_label and values.size and values[:, 0].max() > 9:
        return None
    return values.astype(np.uint8)


@dataclass
class _Parsed:
    """What a run of lines parsed into."""

    rows: _Rows
    errors: list[RowError]
    blank: list[int]  # line numbers of blank lines (an error only if a non-blank line follows)


def _parse_lines(lines: Sequence[bytes], first_line: int, ncols: int, has_label: bool) -> _Parsed:
    """Parse ``lines`` (line ``first_line`` first): numpy for the run, halving it around bad lines."""
    values = _parse_rows_fast(lines, ncols, has_label)
    if values is not None:
        lines_array = np.arange(first_line, first_line + len(lines), dtype=np.int64)
        return _Parsed(_Rows.from_values(values, lines_array, has_label), [], [])
    if len(lines) > 1:
        half = len(lines) // 2
        head = _parse_lines(lines[:half], first_line, ncols, has_label)
        tail = _parse_lines(lines[half:], first_line + half, ncols, has_label)
        return _Parsed(_Rows.concatenate([head.rows, tail.rows]), head.errors + tail.errors, head.blank + tail.blank)
    parsed = _parse_row_slow(lines[0].removesuffix(b"\n"), ncols, has_label)
    empty = _Rows.from_values(np.empty((0, ncols), np.uint8), np.empty(0, np.int64), has_label)
    if parsed is None:
        return _Parsed(empty, [], [first_line])
    if isinstance(parsed, str):
        return _Parsed(empty, [RowError(first_line, parsed)], [])
    return _Parsed(_Rows.from_values(parsed[None], np.array([first_line], np.int64), has_label), [], [])


@dataclass(frozen=True)
class _LongLine:
    """A line too long to hold in memory, skipped while reading."""

    length: int
    commas: int


def _iter_lines(source: BinaryIO) -> Iterator[bytes | _LongLine]:
    """Yield each line ending in "\\n" (CRLF made LF), or a skipped over-long line."""
    while raw := source.readline(_MAX_LINE_BYTES):
        if raw.endswith(b"\n"):
            yield raw[:-2] + b"\n" if raw.endswith(b"\r\n") else raw
        elif len(raw) < _MAX_LINE_BYTES:  # the last line, without a final newline
            yield raw.removesuffix(b"\r") + b"\n"
        else:  # skip the rest of this line without holding it, counting its fields for the message
            length, commas = len(raw), raw.count(b",")
            while (data := source.read(_BLOCK_BYTES)) and (end := data.find(b"\n")) < 0:
                length, commas = length + len(data), commas + data.count(b",")
            if data:
                length, commas = length + end, commas + data.count(b",", 0, end)
                source.seek(end + 1 - len(data), 1)
            yield _LongLine(length, commas)


def _iter_runs(source: BinaryIO) -> Iterator[list[bytes] | _LongLine]:
    """Runs of about ``_BLOCK_BYTES`` of lines, or a skipped over-long line."""
    run: list[bytes] = []
    size = 0
    for line in _iter_lines(source):
        if isinstance(line, _LongLine):
            if run:
                yield run
                run, size = [], 0
            yield line
            continue
        run.append(line)
        size += len(line)
        if size >= _BLOCK_BYTES:
            yield run
            run, size = [], 0
    if run:
        yield run


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
        return KaggleChunk(rows.images.reshape(-1, IMAGE_SIDE, IMAGE_SIDE), rows.labels, rows.lines, errors)

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

    Memory stays bounded (about a 1 MiB run of lines plus one chunk) whatever the file size. The
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
        for item in _iter_runs(source):
            if isinstance(item, _LongLine):
                found = item.commas + 1
                reason = (
                    f"expected {ncols} columns, found {found}"
                    if found != ncols
                    else f"line is {item.length:,} bytes long, far too long for {ncols} integers"
                )
                no_rows = _Rows.from_values(np.empty((0, ncols), np.uint8), np.empty(0, np.int64), has_label)
                parsed, count = _Parsed(no_rows, [RowError(line, reason)], []), 1
            else:
                parsed, count = _parse_lines(item, line, ncols, has_label), len(item)
            skipped = set(parsed.blank)
            last_nonblank = next((n for n in range(line + count - 1, line - 1, -1) if n not in skipped), 0)
            line += count
            errors = parsed.errors
            pending_blank += parsed.blank
            if last_nonblank:
                stray = [blank for blank in pending_blank if blank < last_nonblank]
                pending_blank = [blank for blank in pending_blank if blank > last_nonblank]
                if stray:
                    errors = errors + [
                        RowError(blank, f"expected {ncols} columns, found an empty line") for blank in stray
                    ]
                    errors.sort(key=lambda error: error.line)
            if strict and errors:
                raise CsvFormatError(path, errors[:1], _STRICT_HINT)
            buffer.add(parsed.rows, errors)
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


# --------------------------------------------------------------------------- writing


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
    if not (images.ndim == 3 and images.shape[1:] == (IMAGE_SIDE, IMAGE_SIDE)) and not (
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


