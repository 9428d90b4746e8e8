"""PNG reports: training curves, the test confusion matrix, and feature-map grids (matplotlib, Agg)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_curves(history: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """Loss and accuracy per epoch, train vs validation, side by side."""
    ep = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    a1.plot(ep, [h["train_loss"] for h in history], label="train")
    a1.plot(ep, [h["val_loss"] for h in history], label="validation")
    a1.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    a1.set_yscale("log")
    a2.plot(ep, [100 * h["train_accuracy"] for h in history], label="train")
    a2.plot(ep, [100 * h["val_accuracy"] for h in history], label="validation")
    a2.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_confusion(cm, labels: Sequence[str], path: str | os.PathLike, title: str = "") -> None:
    """Confusion matrix (rows: true class, columns: predicted), counts written in the cells."""
    cm = np.asarray(cm)
    n = len(labels)
    size = max(5.0, 0.55 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix (test)")
    hi = cm.max() if cm.size else 0
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if cm[i, j] > hi / 2 else "black",
                )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_feature_maps(
    image: np.ndarray,
    stages: list[tuple[str, np.ndarray]],
    path: str | os.PathLike,
    title: str = "",
    max_channels: int = 16,
) -> None:
    """One row per stage: the first ``max_channels`` feature maps (each min-max scaled), after the input.

    image: (H, W) or (H, W, 3) in [0, 1]; stages: (name, maps (C, h, w)).
    """
    cols = max_channels
    rows = len(stages) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 1.05 + 0.4), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes[0, 0].imshow(image, cmap=None if image.ndim == 3 else "gray", vmin=0, vmax=1)
    axes[0, 0].set_title("input", fontsize=7)
    for r, (name, maps) in enumerate(stages, start=1):
        c_total = maps.shape[0]
        for c in range(min(cols, c_total)):
            m = maps[c]
            lo, hi = float(m.min()), float(m.max())
            axes[r, c].imshow((m - lo) / (hi - lo) if hi > lo else np.zeros_like(m), cmap="viridis", vmin=0, vmax=1)
        axes[r, 0].set_title(f"{name} {c_total}x{maps.shape[1]}x{maps.shape[2]}", fontsize=7, loc="left")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
