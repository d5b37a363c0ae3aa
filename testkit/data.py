"""The real MNIST data the tests and benchmarks use: the sample in tests/data and the full files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.idx import load_idx_images, load_idx_labels

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "tests" / "data" / "mnist-sample"  # the first 2,000 training and 1,000 test images
_PREFIX = {"train": "train", "test": "t10k"}


def load_mnist(directory: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels uint8 [N]) of the "train" or "test" IDX files in ``directory``."""
    if split not in _PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    directory = Path(directory)
    images = load_idx_images(directory / f"{_PREFIX[split]}-images-idx3-ubyte.gz")
    labels = load_idx_labels(directory / f"{_PREFIX[split]}-labels-idx1-ubyte.gz")
    if len(images) != len(labels):
        raise ValueError(f"{directory}: {len(images)} {split} images but {len(labels)} labels")
    return images, labels


def load_sample(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The repository's real MNIST sample (train: 2,000 images, test: 1,000)."""
    return load_mnist(SAMPLE_DIR, split)
