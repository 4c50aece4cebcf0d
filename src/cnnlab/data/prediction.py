"""Predictions as users see them, for any backend (PyTorch's Classifier, an exported ONNX model): the top-k
description of one image's probabilities, and image files in, one result per file out (torch-free).

A multi-label model (one sigmoid probability per class, a decision threshold per class) is described by every
label whose probability is at or above its threshold — none, one or several — plus all the probabilities."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from cnnlab.errors import DataError


def describe(probs: np.ndarray, class_names: list[str], top_k: int = 5, thresholds=None) -> dict:
    """{"class", "probability", "top_k": [{"class", "probability"}, ...]} of one image's class probabilities.

    Multi-label (`thresholds`: one per class): {"labels": [{"class", "probability", "threshold"}, ...] (every label at
    or above its threshold, most probable first), "class": those labels joined by spaces ("" for none),
    "probabilities": {class: probability} (all of them), "top_k"}."""
    order = np.argsort(-probs, kind="stable")[: max(1, min(top_k, len(probs)))]
    if thresholds is not None:
        ranked = np.argsort(-probs, kind="stable")
        above = [int(i) for i in ranked if probs[i] >= thresholds[i]]
        return {
            "labels": [{"class": class_names[i], "probability": float(probs[i]), "threshold": float(thresholds[i])} for i in above],
            "class": " ".join(class_names[i] for i in above),
            "probabilities": {c: float(p) for c, p in zip(class_names, probs)},
            "top_k": [{"class": class_names[i], "probability": float(probs[i])} for i in order],
        }
    return {
        "class": class_names[order[0]],
        "probability": float(probs[order[0]]),
        "top_k": [{"class": class_names[i], "probability": float(probs[i])} for i in order],
    }


def predict_files(paths: list[str | Path], load_image: Callable[[str | Path], np.ndarray],
                  predict_proba: Callable[[np.ndarray], np.ndarray], class_names: list[str], top_k: int = 5,
                  thresholds=None) -> list[dict]:
    """One result per path: the prediction (multi-label with `thresholds`: see describe), or {"path", "error"} for a
    file that cannot be read."""
    results: list[dict | None] = [None] * len(paths)
    ok_idx, arrays = [], []
    for i, p in enumerate(paths):
        try:
            arrays.append(load_image(p))
            ok_idx.append(i)
        except DataError as e:
            results[i] = {"path": str(p), "error": str(e)}
    if arrays:
        probs = predict_proba(np.stack(arrays))
        for i, pr in zip(ok_idx, probs):
            results[i] = {"path": str(paths[i]), **describe(pr, class_names, top_k, thresholds)}
    return results  # type: ignore[return-value]
