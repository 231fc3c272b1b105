"""Figures of a run: accuracy/loss curves (the paper's Figures 3-4) and a confusion matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def curves(history: list[dict[str, Any]], path: Path) -> Path:
    epochs = [m["epoch"] for m in history]
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(11, 4))
    acc.plot(epochs, [100 * m["train_acc"] for m in history], "o-", label="train")
    acc.plot(epochs, [100 * m["val_acc"] for m in history], "o-", label="validation")
    acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    loss.plot(epochs, [m["train_loss"] for m in history], "o-", label="train")
    loss.plot(epochs, [m["val_loss"] for m in history], "o-", label="validation")
    loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    for ax in (acc, loss):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, classes: int) -> torch.Tensor:
    return torch.bincount(y_true * classes + y_pred, minlength=classes * classes).view(
        classes, classes
    )


def confusion(matrix: torch.Tensor, names: tuple[str, ...], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(matrix.numpy(), cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    top = int(matrix.max()) if matrix.numel() else 0
    for i in range(len(names)):
        for j in range(len(names)):
            value = int(matrix[i, j])
            ax.text(
                j,
                i,
                str(value),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if value > top / 2 else "black",
            )
    fig.colorbar(image)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
