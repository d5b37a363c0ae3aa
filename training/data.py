"""The training data: a data set's splits (or a Kaggle train.csv cut into splits) as tensors."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.contract import DIGIT_LABELS, IMAGE_SHAPE, MNIST_MEAN, MNIST_STD
from core.files import files_digest
from core.kaggle import read_kaggle_csv
from training import download


@dataclass
class Split:
    images: torch.Tensor  # (N, 1, 28, 28) float32, raw 0..255
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Data:
    train: Split
    val: Split | None
    test: Split
    class_names: tuple[str, ...]
    mean: float
    std: float
    digest: str  # checksum of the training data files
    test_source: str  # where the test split came from, for the record


def _split(images: np.ndarray, labels: np.ndarray) -> Split:
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).reshape(-1, *IMAGE_SHAPE)
    return Split(x, torch.from_numpy(labels.astype(np.int64)))


def load_data(args: argparse.Namespace) -> Data:
    """Read the chosen data set and cut the validation (and, for Kaggle, test) split."""
    if args.dataset == "kaggle":
        if args.csv is None:
            raise SystemExit("--dataset kaggle needs --csv PATH to the competition's train.csv")
        table = read_kaggle_csv(args.csv, strict=True)
        if table.labels is None:
            raise SystemExit(f"{args.csv} has no label column: training needs train.csv, not test.csv")
        images, labels = table.images, table.labels
        # train.csv is all there is with labels: hold out a stratified test split first.
        rest, test_idx = stratified_split(labels, args.test_fraction, args.seed + 1)
        test = (images[test_idx], labels[test_idx])
        images, labels = images[rest], labels[rest]
        class_names, mean, std = DIGIT_LABELS, MNIST_MEAN, MNIST_STD
        digest = files_digest([Path(args.csv)])
        test_source = f"{args.test_fraction:.0%} stratified hold-out of {Path(args.csv).name}"
    else:
        spec = download.DATASETS[args.dataset]
        mirrors, verify, progress = args.mirror or None, not args.no_verify, not args.quiet
        images, labels = download.load_split(
            args.dataset, "train", args.data_dir, mirrors=mirrors, verify=verify, progress=progress
        )
        test = download.load_split(
            args.dataset, "test", args.data_dir, mirrors=mirrors, verify=verify, progress=progress
        )
        # The same files again, now all present: their paths, for the data checksum.
        files = download.fetch(args.dataset, args.data_dir, verify=False, download_missing=False)
        class_names, mean, std = spec.class_names, spec.mean, spec.std
        digest = files_digest([files["train_images"], files["train_labels"]])
        test_source = f"{args.dataset} official test set"
    val = None
    if args.val_fraction > 0:
        train_idx, val_idx = stratified_split(labels, args.val_fraction, args.seed)
        val = _split(images[val_idx], labels[val_idx])
        images, labels = images[train_idx], labels[train_idx]
    return Data(_split(images, labels), val, _split(*test), tuple(class_names), mean, std, digest, test_source)


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
