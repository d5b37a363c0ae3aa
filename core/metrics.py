"""Classification metrics shared by training and the batch scorer (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = 10) -> np.ndarray:
    """Counts ``[true, predicted]`` as an int64 ``[num_classes, num_classes]`` array."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"labels and predictions differ in shape: {y_true.shape} vs {y_pred.shape}")
    flat = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


@dataclass(frozen=True)
class ClassReport:
    accuracy: float
    precision: np.ndarray  # [C], NaN where nothing was predicted as that class
    recall: np.ndarray  # [C], NaN where the class never occurs
    support: np.ndarray  # [C] true count per class
    total: int


def class_report(cm: np.ndarray) -> ClassReport:
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / cm.sum(axis=0)
        recall = tp / cm.sum(axis=1)
    total = int(cm.sum())
    accuracy = float(tp.sum() / total) if total else float("nan")
    return ClassReport(accuracy, precision, recall, cm.sum(axis=1).astype(np.int64), total)


def _ratio(value: float) -> str:
    """A precision or recall to four places; "-" where it is undefined (nothing to divide by)."""
    return "-" if np.isnan(value) else f"{value:.4f}"


def format_report(cm: np.ndarray, labels: Sequence[str]) -> str:
    """A plain-text report: accuracy, per-class precision/recall, and the confusion matrix."""
    report = class_report(cm)
    width = max(6, *(len(str(v)) for v in cm.ravel()), *(len(label) for label in labels)) + 1
    lines = [f"accuracy: {report.accuracy:.4%} ({int(np.trace(cm))}/{report.total})", ""]
    lines.append(f"{'class':>12} {'precision':>10} {'recall':>8} {'support':>8}")
    for i, label in enumerate(labels):
        lines.append(
            f"{label:>12} {_ratio(report.precision[i]):>10} {_ratio(report.recall[i]):>8} {report.support[i]:>8d}"
        )
    never = [label for i, label in enumerate(labels) if np.isnan(report.precision[i])]
    if never:
        lines.append(f"(-: no image was predicted as {', '.join(never)}, so there is no precision to report)")
    lines += ["", "confusion matrix (rows: true class, columns: predicted)"]
    lines.append(" " * width + "".join(f"{label[:width - 1]:>{width}}" for label in labels))
    for i, label in enumerate(labels):
        lines.append(f"{label[:width - 1]:>{width}}" + "".join(f"{v:>{width}d}" for v in cm[i]))
    return "\n".join(lines)
