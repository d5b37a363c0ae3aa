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
import orjson

from core.files import atomic_write

FORMATS = ("csv", "jsonl", "kaggle")
CSV_COLUMNS = ("input", "digit", "label", "confidence", "expected")
KAGGLE_HEADER = "ImageId,Label"  # the digit-recognizer competition's submission header
_DECIMALS = 6
_NEEDS_QUOTES = re.compile(r'[,"\r\n]')  # what makes a CSV field need quoting


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
        digits = probabilities.argmax(axis=1).tolist()
        if self.fmt == "kaggle":
            return "".join(f"{p},{d}\n" for p, d in zip(positions.tolist(), digits, strict=True))
        truths: list[int] = [-1] * len(digits) if expected is None else expected.tolist()
        if self.fmt == "csv":
            return self._csv(names, digits, probabilities.max(axis=1).tolist(), truths)
        return self._jsonl(names, digits, probabilities, truths)

    def _csv(self, names: Sequence[str], digits: list[int], confidences: list[float], truths: list[int]) -> str:
        labels = [self.labels[d] for d in digits]
        truth_text = ["" if t < 0 else str(t) for t in truths]
        if any(_NEEDS_QUOTES.search(text) for text in (*names, *self.labels)):
            text = io.StringIO()
            confidence_text = (f"{c:.{_DECIMALS}f}" for c in confidences)
            csv.writer(text, lineterminator="\n").writerows(
                zip(names, digits, labels, confidence_text, truth_text, strict=True)
            )
            return text.getvalue()
        # no field needs quoting (the usual case): plain formatting, about twice as fast as the csv module
        return "".join(
            f"{name},{d},{label},{c:.{_DECIMALS}f},{t}\n"
            for name, d, label, c, t in zip(names, digits, labels, confidences, truth_text, strict=True)
        )

    def _jsonl(self, names: Sequence[str], digits: list[int], probabilities: np.ndarray, truths: list[int]) -> str:
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
