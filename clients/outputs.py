"""What `digits score` writes: one row per scored input as CSV, JSON lines or a Kaggle submission.

Rows are formatted a batch at a time and streamed out, so the output never waits in memory.
A file is written atomically (``core.files``' writer: a temporary file beside it,
renamed over it only when scoring finished); a run that stops half-way leaves no partial file.
Without ``--out`` the rows go to standard output as they come.

Confidences and probabilities are written with 6 decimals: local and remote scoring then
write the same text, although a service may batch images differently and so differ from
a local run in the last bit of a float32.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from core.files import atomic_write

FORMATS = ("csv", "jsonl", "kaggle")
CSV_COLUMNS = ("input", "digit", "label", "confidence", "expected")
KAGGLE_HEADER = "ImageId,Label"  # the digit-recognizer competition's submission header
_DECIMALS = 6
_NEEDS_QUOTES = re.compile(r'[,"\r\n]')  # what makes a CSV field need quoting


_WHOLE = np.array(["0.", "1."], dtype=object)
_THREE_DIGITS = np.array([f"{i:03d}" for i in range(1000)], dtype=object)


def fixed_point(values: np.ndarray, decimals: int = _DECIMALS) -> np.ndarray | None:
    """``round(v * 10**decimals)`` of each float32 ``v`` in [0, 1] as int64, rounded exactly as Python's
    ``f"{v:.6f}"`` rounds (the exact binary value, ties to even); None when a value is outside [0, 1] or not
    float32 (the caller then formats each value itself).

    A float32 is m * 2**-s with an integer m < 2**24, so v * 10**6 = m * 10**6 / 2**s is a ratio of integers
    that int64 holds (m * 10**6 < 2**44): integer arithmetic rounds it without any error.
    """
    if values.dtype != np.float32 or decimals > 6 or not bool(np.all((values >= 0) & (values <= 1))):
        return None
    mantissa, exponent = np.frexp(values)  # v = mantissa * 2**exponent, mantissa in [0.5, 1) (0 for 0)
    m = (mantissa.astype(np.float64) * (1 << 24)).astype(np.int64)  # exact: 24 significant bits
    scaled = m * 10**decimals
    shift = np.minimum(24 - exponent.astype(np.int64), 45)  # from 2**45 on every value rounds to 0
    quotient = scaled >> shift
    remainder = scaled - (quotient << shift)
    half = np.int64(1) << (shift - 1)
    return quotient + ((remainder > half) | ((remainder == half) & (quotient % 2 == 1)))


def default_format(out: Path | None) -> str:
    """jsonl for a file named *.jsonl or *.ndjson, csv otherwise."""
    return "jsonl" if out is not None and out.suffix.lower() in (".jsonl", ".ndjson") else "csv"


class RowFormatter:
    """Turns a batch of predictions into the text of one output format."""

    def __init__(self, fmt: str, labels: Sequence[str]) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        self.fmt = fmt
        self.labels = list(labels)
        self._labels_need_quotes = any(_NEEDS_QUOTES.search(label) for label in self.labels)
        # The pieces of a CSV row around its input name, looked up by index (object arrays: numpy's take)
        self._digit_fields = np.array([f",{d},{label}," for d, label in enumerate(self.labels)], dtype=object)
        self._expected_fields = np.array([f",{t}\n" for t in range(len(self.labels))] + [",\n"], dtype=object)

    def header(self) -> str:
        if self.fmt == "csv":
            return ",".join(CSV_COLUMNS) + "\n"
        if self.fmt == "kaggle":
            return KAGGLE_HEADER + "\n"
        return ""

    def rows(
        self,
        names: Sequence[str],
        positions: np.ndarray,
        expected: np.ndarray | None,
        probabilities: np.ndarray,
    ) -> str:
        """Text for n items: names [n], positions int64 [n], expected int64 [n] (-1 unknown) or None,
        probabilities float32 [n, C]."""
        if self.fmt == "kaggle":
            digits = probabilities.argmax(axis=1).tolist()
            return "".join(f"{p},{d}\n" for p, d in zip(positions.tolist(), digits, strict=True))
        if self.fmt == "csv":
            return self._csv(names, probabilities, expected)
        digits = probabilities.argmax(axis=1).tolist()
        truths: list[int] = [-1] * len(digits) if expected is None else expected.tolist()
        return self._jsonl(names, digits, probabilities, truths)

    def _csv(self, names: Sequence[str], probabilities: np.ndarray, expected: np.ndarray | None) -> str:
        n = len(names)
        digits = probabilities.argmax(axis=1)
        confidences = probabilities[np.arange(n), digits]
        truths = np.full(n, -1, np.int64) if expected is None else expected
        millionths = fixed_point(confidences, _DECIMALS)
        unknown_label = n > 0 and int(truths.max()) >= len(self.labels)
        if millionths is None or unknown_label or self._labels_need_quotes or _NEEDS_QUOTES.search("".join(names)):
            # the reference formatting: the csv module quotes what needs it
            labels = [self.labels[d] for d in digits.tolist()]
            truth_text = ["" if t < 0 else str(t) for t in truths.tolist()]
            confidence_text = (f"{c:.{_DECIMALS}f}" for c in confidences.tolist())
            text = io.StringIO()
            csv.writer(text, lineterminator="\n").writerows(
                zip(names, digits.tolist(), labels, confidence_text, truth_text, strict=True)
            )
            return text.getvalue()
        # No field needs quoting (the usual case): the same bytes put together from looked-up pieces,
        # "name" ",d,label," "0." "123" "456" ",t\n" (an unknown label, -1, takes the last piece: ",\n");
        # 10,000 rows take about a third of the time of formatting each row with the quoting check.
        whole, fraction = np.divmod(millionths, 10**_DECIMALS)
        high, low = np.divmod(fraction, 1000)
        pieces = zip(names, self._digit_fields[digits].tolist(), _WHOLE[whole].tolist(), _THREE_DIGITS[high].tolist(),
                     _THREE_DIGITS[low].tolist(), self._expected_fields[truths].tolist(), strict=True)
        return "".join([f"{a}{b}{c}{d}{e}{f}" for a, b, c, d, e, f in pieces])

    def _jsonl(self, names: Sequence[str], digits: list[int], probabilities: np.ndarray, truths: list[int]) -> str:
        import orjson  # here: a CSV run starts without it

        rounded = np.round(probabilities.astype(np.float64), _DECIMALS).tolist()
        lines = []
        for name, d, t, p in zip(names, digits, truths, rounded, strict=True):
            row: dict[str, object] = {"input": name, "digit": d, "label": self.labels[d], "confidence": p[d],
                                      "probabilities": p}
            if t >= 0:
                row["expected"] = t
            lines.append(orjson.dumps(row))
        return (b"\n".join(lines) + b"\n").decode() if lines else ""


@contextlib.contextmanager
def open_output(path: Path | None) -> Iterator[Callable[[str], object]]:
    """A ``write(text)`` function: to standard output, or to ``path`` atomically (replaced on success)."""
    if path is None:
        yield sys.stdout.write
        sys.stdout.flush()
        return
    with atomic_write(path) as out:
        yield lambda text: out.write(text.encode("utf-8"))
