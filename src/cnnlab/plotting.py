"""Plotting's one home: the Agg backend, atomic PNG saving, and the figures every layer draws (labelled images,
sample grids, prediction grids, training curves).

Bottom layer (docs/architecture.md): the engine (samples, predictions, curves of a run), insight, tune and lr-find
all draw through it. A `*_figure` function takes arrays and returns a matplotlib Figure (what the notebook API
returns: insight/notebook.py); its `save_*` twin saves that figure as a PNG and returns the path.
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
import warnings
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # files only; in Jupyter the kernel's inline backend stays (switching closes the user's figures)
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from cnnlab.io import atomic_path  # noqa: E402

PNG_DPI = 100


class InlineFigure(Figure):
    """A Figure outside pyplot: nothing to close, drawn with Agg wherever it is saved, and shown inline by Jupyter.

    Jupyter's matplotlib formatter is registered only once pyplot has loaded the inline backend, so the figure
    also renders itself (`_repr_png_`); with the formatter present IPython uses that one — one image either way.
    Text in scripts the default font lacks (class names in Chinese, say) is drawn with an installed font that has
    them (`drawable_text`), and quietly as boxes where none has.
    """

    def _repr_png_(self) -> bytes:
        return figure_png(self)

    def tight_layout(self, *args, **kwargs):
        with drawable_text(self):
            return super().tight_layout(*args, **kwargs)

    def draw(self, renderer):
        with drawable_text(self):
            return super().draw(renderer)


_codepoints_of: dict[str, frozenset[int]] = {}  # font file -> the characters it has
_families_for: dict[frozenset[int], list[str] | None] = {}


def _codepoints(path: str) -> frozenset[int]:
    if path not in _codepoints_of:
        from matplotlib.ft2font import FT2Font

        try:
            _codepoints_of[path] = frozenset(FT2Font(path).get_charmap())
        except (OSError, RuntimeError, ValueError):  # an unreadable font file is no candidate
            _codepoints_of[path] = frozenset()
    return _codepoints_of[path]


def font_families(text: str) -> list[str] | None:
    """The font.family list that draws every character of `text` some installed font has: the configured families,
    then (matplotlib falls back along the list per glyph) installed fonts that have what those lack — CJK, Thai ...
    None when the configured font has every character. Looked up once per set of characters."""
    from matplotlib import font_manager

    chars = frozenset(ord(c) for c in text if ord(c) > 127 and not c.isspace())
    if not chars:
        return None
    if chars not in _families_for:
        families = list(matplotlib.rcParams["font.family"])
        missing = chars - _codepoints(font_manager.findfont(font_manager.FontProperties(family=families)))
        extra: list[str] = []
        # "Last Resort" (bundled with matplotlib) draws a placeholder for every character: no better than a box
        for entry in sorted(font_manager.fontManager.ttflist, key=lambda f: (f.name, f.fname)):
            if not missing:
                break
            if entry.name in extra or entry.name in families or entry.name.startswith("Last Resort"):
                continue
            found = missing & _codepoints(entry.fname)
            if found:
                extra.append(entry.name)
                missing -= found
        _families_for[chars] = families + extra if extra else None
    return _families_for[chars]


@contextlib.contextmanager
def drawable_text(fig):
    """Give the figure's texts with characters the default font lacks a font list that has them, and keep
    matplotlib's "Glyph … missing" warnings for characters no installed font has off the console."""
    from matplotlib.text import Text

    texts = [t for t in fig.findobj(Text) if any(ord(c) > 127 for c in t.get_text())]
    families = font_families("".join(t.get_text() for t in texts)) if texts else None
    if families:
        for t in texts:
            t.set_fontfamily(families)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from")
        yield


def new_figure(rows: int = 1, cols: int = 1, figsize: tuple[float, float] = (6.4, 4.8), **subplot_kw):
    """(figure, axes) like plt.subplots, without pyplot: library code never opens windows or leaves figures open."""
    fig = InlineFigure(figsize=figsize)
    return fig, fig.subplots(rows, cols, **subplot_kw)


def figure_png(fig) -> bytes:
    """The figure as PNG bytes (what save_figure writes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PNG_DPI, bbox_inches="tight")
    return buf.getvalue()

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
    with atomic_path(path) as tmp, drawable_text(fig):  # (pyplot figures too: InlineFigure does this itself)
        fig.savefig(tmp, format="png", dpi=PNG_DPI, bbox_inches="tight")
    plt.close(fig)  # a pyplot figure (other modules draw with plt.subplots); an InlineFigure has nothing to close
    return path


def image_figure(img: np.ndarray, title: str, colour: str = "black") -> Figure:
    """One image with a title, like the tutorial's plt.imshow + plt.title."""
    fig, ax = new_figure(figsize=(4, 4.3))
    show_image(ax, img)
    ax.set_title(title, color=colour, fontsize=12)
    return fig


def save_image(img: np.ndarray, title: str, path: str | Path, colour: str = "black") -> Path:
    return save_figure(image_figure(img, title, colour), path)


def grid_figure(images: np.ndarray, titles: list[str], colours: list[str] | None = None, suptitle: str = "") -> Figure:
    """A near-square grid of labelled images."""
    n = len(images)
    cols = max(1, min(n, math.ceil(math.sqrt(n))))
    rows = max(1, math.ceil(n / cols))
    fig, axes = new_figure(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < n:
            show_image(ax, images[i])
            ax.set_title(titles[i], fontsize=9, color=(colours[i] if colours else "black"))
        else:
            ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def save_grid(images: np.ndarray, titles: list[str], path: str | Path, colours: list[str] | None = None, suptitle: str = "") -> Path:
    return save_figure(grid_figure(images, titles, colours, suptitle), path)


def curves_figure(history: list[dict]) -> Figure:
    """Loss and accuracy per epoch, train vs validation; the learning rate too when the history has it."""
    epochs = [r["epoch"] for r in history]
    lrs = [r.get("lr") for r in history]
    has_lr = any(v is not None and v == v for v in lrs)
    fig, axes = new_figure(1, 3 if has_lr else 2, figsize=(15 if has_lr else 10, 4))
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
    return fig


def save_curves(history: list[dict], path: str | Path) -> Path:
    return save_figure(curves_figure(history), path)


def prediction_titles(pred: np.ndarray, prob: np.ndarray, truth: np.ndarray, names: list[str]) -> tuple[list[str], list[str]]:
    titles = [f"{names[p]} {q:.0%}\n(true: {names[t]})" for p, q, t in zip(pred, prob, truth)]
    colours = [OK_COLOUR if p == t else WRONG_COLOUR for p, t in zip(pred, truth)]
    return titles, colours


def confusion_figure(names: list[str], counts, title: str = "confusion matrix") -> Figure:
    """A confusion matrix: counts in each cell (with the fraction when there are few classes), colour = the fraction
    of the true class (recall per class); rows true, columns predicted."""
    counts = np.asarray(counts)
    norm = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    k = len(names)
    size = max(4.0, 0.6 * k + 2)
    fig, ax = new_figure(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for t in range(k):
            for p in range(k):
                ax.text(p, t, f"{counts[t, p]}\n{norm[t, p]:.0%}", ha="center", va="center", fontsize=8,
                        color="white" if norm[t, p] > 0.5 else "black")
    ax.set_title(title)
    fig.tight_layout()
    return fig
