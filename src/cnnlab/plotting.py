"""Plotting's one home: the Agg backend, atomic PNG saving, and the figures every layer draws (labelled images,
sample grids, prediction grids, training curves).

Bottom layer (docs/architecture.md): the engine (samples, predictions, curves of a run), insight, tune and lr-find
all draw through it. A figure function takes arrays and a path and returns the path it saved.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cnnlab.io import atomic_path  # noqa: E402

OK_COLOUR, WRONG_COLOUR = "#1a7f37", "#cf222e"


def show_image(ax, img: np.ndarray) -> None:
    """An image without ticks; one-channel images in grey."""
    if img.ndim == 3 and img.shape[2] == 1:
        ax.imshow(img[:, :, 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(img)
    ax.set_xticks([])
    ax.set_yticks([])


def save_figure(fig, path: str | Path) -> Path:
    """Write `fig` as a PNG atomically (creating the folder) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def save_image(img: np.ndarray, title: str, path: str | Path, colour: str = "black") -> Path:
    """One image with a title, like the tutorial's plt.imshow + plt.title."""
    fig, ax = plt.subplots(figsize=(4, 4.3))
    show_image(ax, img)
    ax.set_title(title, color=colour, fontsize=12)
    return save_figure(fig, path)


def save_grid(images: np.ndarray, titles: list[str], path: str | Path, colours: list[str] | None = None, suptitle: str = "") -> Path:
    """A near-square grid of labelled images."""
    n = len(images)
    cols = min(n, max(1, math.ceil(math.sqrt(n))))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < n:
            show_image(ax, images[i])
            ax.set_title(titles[i], fontsize=9, color=(colours[i] if colours else "black"))
        else:
            ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return save_figure(fig, path)


def save_curves(history: list[dict], path: str | Path) -> Path:
    """Loss and accuracy per epoch, train vs validation; the learning rate too when the history has it."""
    epochs = [r["epoch"] for r in history]
    lrs = [r.get("lr") for r in history]
    has_lr = any(v is not None and v == v for v in lrs)
    fig, axes = plt.subplots(1, 3 if has_lr else 2, figsize=(15 if has_lr else 10, 4))
    ax1, ax2 = axes[0], axes[1]
    if has_lr:
        axes[2].plot(epochs, lrs, "o-", color="#8250df")
        axes[2].set_xlabel("epoch")
        axes[2].set_ylabel("learning rate")
        axes[2].grid(alpha=0.3)
    for ax, key, label in ((ax1, "loss", "loss"), (ax2, "accuracy", "accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], "o-", label="train")
        val = [r.get(f"val_{key}") for r in history]
        if any(v is not None and v == v for v in val):
            ax.plot(epochs, val, "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    ax2.set_ylim(0, 1.02)
    fig.tight_layout()
    return save_figure(fig, path)


def prediction_titles(pred: np.ndarray, prob: np.ndarray, truth: np.ndarray, names: list[str]) -> tuple[list[str], list[str]]:
    titles = [f"{names[p]} {q:.0%}\n(true: {names[t]})" for p, q, t in zip(pred, prob, truth)]
    colours = [OK_COLOUR if p == t else WRONG_COLOUR for p, t in zip(pred, truth)]
    return titles, colours
