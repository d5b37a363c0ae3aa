"""PNG plots of training curves and confusion matrices (matplotlib, headless, imported only when plotting).

matplotlib comes with the train extra and the plot extra, not with the serve extra.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

INSTALL_HINT = "pip install -e '.[plot]'"


class PlottingUnavailable(RuntimeError):
    """matplotlib is not installed; the message says how to add it."""


def require_matplotlib(what: str = "plotting") -> None:
    """Raise ``PlottingUnavailable`` with a one-line install hint when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        raise PlottingUnavailable(f"{what} needs matplotlib, which is not installed: {INSTALL_HINT}") from None


def _pyplot() -> Any:
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(history: Sequence[Mapping[str, float]], path: str | Path, title: str = "") -> Path:
    """Loss and accuracy per epoch, train against validation, side by side."""
    plt = _pyplot()
    epochs = [int(row["epoch"]) for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        if any(key in row for row in history):
            ax_loss.plot(epochs, [row.get(key, np.nan) for row in history], marker="o", label=label)
    for key, label in (("train_acc", "train"), ("val_acc", "validation")):
        if any(key in row for row in history):
            ax_acc.plot(epochs, [100 * row.get(key, np.nan) for row in history], marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_confusion_matrix(cm: np.ndarray, labels: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Confusion matrix as a heat map, counts in each cell, log colour scale so errors show."""
    from matplotlib.colors import LogNorm

    plt = _pyplot()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * n, 0.6 + 0.55 * n), constrained_layout=True)
    image = ax.imshow(np.maximum(cm, 0.5), cmap="Blues", norm=LogNorm(vmin=0.5, vmax=max(1, cm.max())))
    fig.colorbar(image, ax=ax, shrink=0.8, label="images")
    threshold = np.sqrt(max(1, cm.max()))
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                colour = "white" if cm[i, j] > threshold else "black"
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=colour, fontsize=8)
    ax.set_xticks(range(n), labels, rotation=45 if max(map(len, labels)) > 2 else 0, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set(xlabel="predicted", ylabel="true")
    accuracy = np.trace(cm) / max(1, cm.sum())
    ax.set_title(f"{title} · accuracy {accuracy:.2%}" if title else f"accuracy {accuracy:.2%}")
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
