"""`cnnlab evaluate`: the full metrics report of a classifier on one dataset split (+ optional figures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cnnlab.engine.inference import evaluate_on_split, probabilities
from cnnlab.insight import metrics as M


def evaluate_split(clf, ds, split: str, batch_size: int | None = None, plots: str | Path | None = None, tta: bool = False) -> dict:
    """Loss, accuracy, n, split plus classification_report, top_losses and (with `plots`) figure paths."""
    return evaluate_split_with_images(clf, ds, split, batch_size, plots, tta)[0]


def evaluate_split_with_images(clf, ds, split: str, batch_size: int | None = None, plots: str | Path | None = None, tta: bool = False):
    """(evaluate_split's result, the split of the images it scored): "index" in top_losses points into that split."""
    s = ds.split(split)
    ev = evaluate_on_split(clf.model, s, clf.meta["normalization"], clf.device, "fp32", batch_size, tta=tta)
    if len(ev["index"]) < len(s):  # streamed files that failed to decode are not scored: keep the rest aligned
        s = s.subset(ev["index"])
    names = clf.class_names
    y = np.asarray(s.y, dtype=np.int64)
    logits = ev["logits"] if len(y) else torch.empty(0, 1 if len(names) == 2 else len(names))
    probs = probabilities(logits).numpy().astype(np.float64) if len(y) else np.zeros((0, len(names)))
    report = M.classification_report(y, probs, names)
    result = {"split": split, "n": ev["n"], "loss": M._num(ev["loss"]) if ev["n"] else None,
              **report, "accuracy": M._num(ev["accuracy"]) if ev["n"] else None,
              "top_losses": M.top_losses(y, probs, names) if len(y) else []}
    if s.paths is not None and len(y):
        for r in result["top_losses"]:
            r["path"] = str(s.paths[r["index"]])
    if plots is not None:
        from cnnlab.insight.figures import write_evaluation_plots

        result["plots"] = write_evaluation_plots(plots, s.x, y, probs, report, names)
    return result, s
