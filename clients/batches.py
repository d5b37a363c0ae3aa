"""The data that flows through `digits score`: batches of inputs, bad inputs, scored batches.

Readers (``clients.sources``) make ``Batch``es; a scorer (local ONNX Runtime or a remote
service) turns each into a ``Scored``; the writer and the metrics consume those.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class InputError:
    """One bad input: a file (``where`` is its path) or a CSV row (``where`` is "path:line")."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class Batch:
    """Up to ``batch_size`` items in input order, with the bad inputs met since the previous batch."""

    names: list[str]  # what the output calls each item: a path, "file.idx[i]" or "file.csv:line"
    positions: np.ndarray  # int64 [n]: 1-based number among all input items, failed ones included
    labels: np.ndarray | None  # int64 [n], -1 where unknown; None when the source has no labels
    pixels: np.ndarray | None = None  # [n, 28, 28] MNIST-style 0..255: uint8 (IDX, CSV), float32 (images)
    blobs: list[bytes] | None = None  # encoded image files, when sent undecoded (remote mode)
    errors: list[InputError] = field(default_factory=list)
    seen: int = 0  # input items this batch accounts for, scored or failed (drives the progress bar)

    def __len__(self) -> int:
        return len(self.names)

    def select(self, keep: np.ndarray) -> Batch:
        """The items at the indices ``keep`` (int [k]); errors and progress count kept."""
        indices = keep.tolist()
        return Batch(
            [self.names[i] for i in indices],
            self.positions[keep],
            None if self.labels is None else self.labels[keep],
            pixels=None if self.pixels is None else self.pixels[keep],
            blobs=None if self.blobs is None else [self.blobs[i] for i in indices],
            errors=self.errors,
            seen=self.seen,
        )


def error_batch(errors: list[InputError], seen: int = 0) -> Batch:
    """A batch that only reports bad inputs."""
    return Batch([], np.empty(0, np.int64), None, errors=errors, seen=seen)


@dataclass
class Scored:
    """The scored items of a batch (refused ones removed) and their probabilities float32 [n, C]."""

    batch: Batch
    probabilities: np.ndarray
    errors: list[InputError]  # the batch's own errors and the items the scorer refused
