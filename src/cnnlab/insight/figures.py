"""Evaluation figures: confusion matrix, reliability diagram, per-class bars, top losses, most-confused pairs,
prediction grid. Inputs are the report from insight.metrics plus the images.

Each `*_figure` returns a matplotlib Figure (the notebook API shows it: insight/notebook.py); its `save_*` twin
writes that same figure as a PNG (`cnnlab evaluate --plots`, report.html).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnlab.insight import metrics as M
from cnnlab.plotting import OK_COLOUR, WRONG_COLOUR, Figure, confusion_figure, grid_figure, new_figure, prediction_titles, save_figure


def confusion_matrix_figure(report: dict) -> Figure:
    """Counts in each cell, colour = row-normalised fraction (recall per true class)."""
    cm = report["confusion_matrix"]
    title = f"confusion matrix (accuracy {report['accuracy']:.1%})" if report.get("accuracy") is not None else "confusion matrix"
    return confusion_figure(cm["labels"], np.array(cm["counts"]), title)


def reliability_figure(report: dict) -> Figure:
    """Accuracy vs confidence per bin; the diagonal is perfect calibration."""
    cal = report["calibration"]
    fig, (ax, ax2) = new_figure(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    centres = [(b["lower"] + b["upper"]) / 2 for b in cal["bins"]]
    width = cal["bins"][0]["upper"] - cal["bins"][0]["lower"]
    acc = [b["accuracy"] or 0.0 for b in cal["bins"]]
    ax.bar(centres, acc, width=width * 0.95, color="#4c72b0", edgecolor="black", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ece = cal["ece"]
    ax.set_title(f"reliability diagram (ECE {ece:.3f})" if ece is not None else "reliability diagram")
    ax.legend(loc="upper left")
    ax2.bar(centres, [b["count"] for b in cal["bins"]], width=width * 0.95, color="#999999")
    ax2.set_xlabel("confidence (top probability)")
    ax2.set_ylabel("images")
    ax2.set_xlim(0, 1)
    fig.tight_layout()
    return fig


def per_class_figure(report: dict) -> Figure:
    """Precision, recall and F1 for each class side by side."""
    rows = report["per_class"]
    k = len(rows)
    fig, ax = new_figure(figsize=(max(5, 1.0 * k + 2), 4))
    xs = np.arange(k)
    for j, key in enumerate(("precision", "recall", "f1")):
        ax.bar(xs + (j - 1) * 0.27, [r[key] for r in rows], width=0.27, label=key)
    ax.set_xticks(xs, [f"{r['class']}\n(n={r['support']})" for r in rows], rotation=0 if k <= 6 else 45)
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower right")
    ax.set_title("per-class precision / recall / F1")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def most_confused_figure(report: dict) -> Figure:
    """Horizontal bars: 'true -> predicted' pairs, most frequent first."""
    pairs = report["most_confused"]
    fig, ax = new_figure(figsize=(6, max(2.0, 0.4 * len(pairs) + 1)))
    if pairs:
        labels = [f"{p['true']} → {p['predicted']}" for p in pairs][::-1]
        ax.barh(labels, [p["count"] for p in pairs][::-1], color=WRONG_COLOUR)
        ax.set_xlabel("images")
    else:
        ax.text(0.5, 0.5, "no mistakes", ha="center", va="center")
        ax.axis("off")
    ax.set_title("most confused (true → predicted)")
    fig.tight_layout()
    return fig


def top_losses_figure(x: np.ndarray, losses: list[dict]) -> Figure:
    """The images the model got most wrong (metrics.top_losses rows, "index" into x), titled prediction /
    probability / truth / loss."""
    imgs = x[[r["index"] for r in losses]] if losses else np.zeros((0, 1, 1, 3), dtype=np.uint8)
    titles = [f"pred {r['predicted']} {r['probability']:.0%}\ntrue {r['true']} · loss {_loss_text(r['loss'])}" for r in losses]
    colours = [OK_COLOUR if r["predicted"] == r["true"] else WRONG_COLOUR for r in losses]
    return grid_figure(imgs, titles, colours, suptitle="top losses")


def _loss_text(loss: float | None) -> str:
    return "inf" if loss is None else f"{loss:.2f}"  # metrics._num turns an infinite loss into None


def prediction_grid_figure(x: np.ndarray, y: np.ndarray, probs: np.ndarray, names: list[str], n: int = 16, seed: int = 0) -> Figure:
    """Random images with predicted vs true class; wrong ones in red."""
    idx = np.random.default_rng(seed).choice(len(x), size=min(n, len(x)), replace=False)
    titles, colours = prediction_titles(probs[idx].argmax(1), probs[idx].max(1), y[idx], names)
    return grid_figure(x[idx], titles, colours, suptitle="predictions (red: wrong)")


def save_confusion_matrix(report: dict, path: str | Path) -> Path:
    return save_figure(confusion_matrix_figure(report), path)


def save_reliability_diagram(report: dict, path: str | Path) -> Path:
    return save_figure(reliability_figure(report), path)


def save_per_class_bars(report: dict, path: str | Path) -> Path:
    return save_figure(per_class_figure(report), path)


def save_most_confused(report: dict, path: str | Path) -> Path:
    return save_figure(most_confused_figure(report), path)


def save_top_losses(x: np.ndarray, losses: list[dict], path: str | Path) -> Path:
    return save_figure(top_losses_figure(x, losses), path)


def save_prediction_grid(x: np.ndarray, y: np.ndarray, probs: np.ndarray, names: list[str], path: str | Path, n: int = 16, seed: int = 0) -> Path:
    return save_figure(prediction_grid_figure(x, y, probs, names, n, seed), path)


def multi_label_grid_figure(x: np.ndarray, y: np.ndarray, probs: np.ndarray, names: list[str], thresholds, n: int = 16,
                            seed: int = 0) -> Figure:
    """Random images with their predicted and true label sets; red where the sets differ."""
    from cnnlab.engine.multilabel import grid_titles

    idx = np.random.default_rng(seed).choice(len(x), size=min(n, len(x)), replace=False)
    titles, exact = grid_titles(probs[idx], y[idx], names, thresholds)
    return grid_figure(x[idx], titles, [OK_COLOUR if ok else WRONG_COLOUR for ok in exact], suptitle="predictions (red: not exactly the true labels)")


def write_evaluation_plots(out_dir: str | Path, x: np.ndarray, y: np.ndarray, probs: np.ndarray, report: dict, names: list[str]) -> dict[str, str]:
    """All evaluation figures into out_dir; returns {figure name: path}. Multi-label: per-class bars, top losses and
    the prediction grid (a confusion matrix and a top-class calibration do not apply)."""
    out = Path(out_dir)
    if report.get("task") == "multi_label":
        thresholds = [report["thresholds"][c] for c in names]
        files = {"per_class": save_per_class_bars(report, out / "per_class.png")}
        if len(x):
            files["top_losses"] = save_top_losses(x, M.top_losses(y, probs, names, thresholds=thresholds), out / "top_losses.png")
            files["predictions"] = save_figure(multi_label_grid_figure(x, y, probs, names, thresholds), out / "prediction_grid.png")
        return {k: str(v) for k, v in files.items()}
    files = {
        "confusion_matrix": save_confusion_matrix(report, out / "confusion_matrix.png"),
        "calibration": save_reliability_diagram(report, out / "calibration.png"),
        "per_class": save_per_class_bars(report, out / "per_class.png"),
        "most_confused": save_most_confused(report, out / "most_confused.png"),
    }
    if len(x):
        files["top_losses"] = save_top_losses(x, M.top_losses(y, probs, names), out / "top_losses.png")
        files["predictions"] = save_prediction_grid(x, y, probs, names, out / "prediction_grid.png")
    return {k: str(v) for k, v in files.items()}
