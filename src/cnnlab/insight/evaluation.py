"""`cnnlab evaluate`: the full metrics report of a classifier on one dataset split (+ optional figures).

`score_split` runs the model over a split once; `evaluation_report` turns those scores into the documented
report. `cnnlab evaluate`, report.html and the notebook's `cnnlab.interpret` (insight/notebook.py) all go through
these two, so they agree on every number.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnlab.data.dataset import Split
from cnnlab.engine.inference import evaluate_on_split, probabilities
from cnnlab.insight import metrics as M


@dataclass
class ScoredSplit:
    """One pass of a classifier over a split: `images` are the images scored (a streamed file that fails to decode
    is left out), `y` their labels and `probs` (N, K) the predicted class probabilities, row for row."""

    split: str
    images: Split
    y: np.ndarray
    probs: np.ndarray
    loss: float | None
    accuracy: float | None
    thresholds: np.ndarray | None = None  # a multi-label model's per-class decision thresholds (probs: one sigmoid each)

    @property
    def n(self) -> int:
        return len(self.y)


def score_split(clf, ds, split: str, batch_size: int | None = None, tta: bool = False) -> ScoredSplit:
    """Evaluate `clf` on `ds`'s split once (fp32; tta: mirror images and scales averaged)."""
    s = ds.split(split)
    ev = evaluate_on_split(clf.model, s, clf.meta["normalization"], clf.device, "fp32", batch_size, tta=tta)
    if len(ev["index"]) < len(s):  # streamed files that failed to decode are not scored: keep the rest aligned
        s = s.subset(ev["index"])
    names = clf.class_names
    y = np.asarray(s.y, dtype=np.int64)
    logits = ev["logits"] if len(y) else torch.empty(0, 1 if len(names) == 2 else len(names))
    probs = probabilities(logits, clf.multi_label).numpy().astype(np.float64) if len(y) else np.zeros((0, len(names)))
    return ScoredSplit(split, s, y, probs, M._num(ev["loss"]) if ev["n"] else None, M._num(ev["accuracy"]) if ev["n"] else None,
                       clf.thresholds)


def evaluation_report(scored: ScoredSplit, names: list[str]) -> dict:
    """Loss, accuracy, n, split plus classification_report and top_losses (the `evaluate --json` schema)."""
    y, probs = scored.y, scored.probs
    if scored.thresholds is not None:  # multi-label: accuracy per label at the model's thresholds (report's), not at 0.5
        report = M.multi_label_classification_report(y, probs, names, scored.thresholds)
        result = {"split": scored.split, "n": scored.n, "loss": scored.loss, **report,
                  "top_losses": M.top_losses(y, probs, names, thresholds=scored.thresholds) if len(y) else []}
    else:
        report = M.classification_report(y, probs, names)
        result = {"split": scored.split, "n": scored.n, "loss": scored.loss, **report, "accuracy": scored.accuracy,
                  "top_losses": M.top_losses(y, probs, names) if len(y) else []}
    if scored.images.paths is not None and len(y):
        for r in result["top_losses"]:
            r["path"] = str(scored.images.paths[r["index"]])
    return result


def evaluate_split(clf, ds, split: str, batch_size: int | None = None, plots: str | Path | None = None, tta: bool = False) -> dict:
    """Loss, accuracy, n, split plus classification_report, top_losses and (with `plots`) figure paths."""
    return evaluate_split_with_images(clf, ds, split, batch_size, plots, tta)[0]


def evaluate_split_with_images(clf, ds, split: str, batch_size: int | None = None, plots: str | Path | None = None, tta: bool = False):
    """(evaluate_split's result, the split of the images it scored): "index" in top_losses points into that split."""
    scored = score_split(clf, ds, split, batch_size, tta)
    result = evaluation_report(scored, clf.class_names)
    if plots is not None:
        from cnnlab.insight.figures import write_evaluation_plots

        result["plots"] = write_evaluation_plots(plots, scored.images.x, scored.y, scored.probs, result, clf.class_names)
    return result, scored.images
