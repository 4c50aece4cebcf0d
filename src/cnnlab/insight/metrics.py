"""Classification metrics for `cnnlab evaluate`, computed with scikit-learn (the oracle) where it has them.

`classification_report(y_true, probs, class_names)` returns the stable JSON schema documented in
docs/insight.md. Probabilities are (N, K) (the binary one-logit head already expanded to [1-p, p]).
Values that are undefined (e.g. ROC-AUC when a class is missing from the split) are None (JSON null).

Multi-label models (y multi-hot (N, K), probs one sigmoid per class, a threshold per class):
`multi_label_classification_report` — per-class precision/recall/F1/AP, micro and macro averages, mAP — computed
in numpy by engine/multilabel.py (training picks its best epoch by the same mAP) and checked against
scikit-learn in tests/test_multilabel.py.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from cnnlab.engine.multilabel import multi_label_report, predicted_labels

CALIBRATION_BINS = 10


def _num(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def top_k_accuracy(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Top-k accuracy for k = 2, 3, 5 below the class count (empty for 2 classes)."""
    from sklearn.metrics import top_k_accuracy_score

    k_classes = probs.shape[1]
    labels = np.arange(k_classes)
    return {str(k): float(top_k_accuracy_score(y_true, probs, k=k, labels=labels)) for k in (2, 3, 5) if k < k_classes}


def roc_auc(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """Binary ROC-AUC on p(class 1); one-vs-rest macro average for K classes; None if a class is absent."""
    from sklearn.metrics import roc_auc_score

    k = probs.shape[1]
    if len(np.unique(y_true)) < k:
        return None
    if k == 2:
        return float(roc_auc_score(y_true, probs[:, 1]))
    p = probs / np.clip(probs.sum(1, keepdims=True), 1e-12, None)  # sklearn wants rows summing to 1
    return float(roc_auc_score(y_true, p, multi_class="ovr", average="macro", labels=np.arange(k)))


def calibration(y_true: np.ndarray, probs: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """Expected calibration error over `bins` equal-width confidence bins, and the bins themselves.

    ECE = sum over bins of (bin count / N) * |accuracy in bin - mean confidence in bin|.
    """
    conf = probs.max(1)
    correct = (probs.argmax(1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)  # (lo, hi], first bin [0, hi]
    rows, ece = [], 0.0
    for b in range(bins):
        m = idx == b
        n = int(m.sum())
        acc = float(correct[m].mean()) if n else None
        mean_conf = float(conf[m].mean()) if n else None
        if n:
            ece += n / len(y_true) * abs(acc - mean_conf)
        rows.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": n, "confidence": mean_conf, "accuracy": acc})
    return {"ece": float(ece) if len(y_true) else None, "bins": rows}


def most_confused(counts: np.ndarray, class_names: list[str], limit: int | None = 10, min_count: int = 1) -> list[dict]:
    """Off-diagonal confusion-matrix cells with at least `min_count` images, largest first (ties: true class, then
    predicted class, in label order): which true class is mistaken for which. `limit=None` keeps them all."""
    counts = np.asarray(counts)
    floor = max(1, int(min_count))
    pairs = [(int(counts[t, p]), t, p) for t in range(len(counts)) for p in range(len(counts)) if t != p and counts[t, p] >= floor]
    pairs.sort(key=lambda v: (-v[0], v[1], v[2]))
    return [{"true": class_names[t], "predicted": class_names[p], "count": c} for c, t, p in pairs[:limit]]


def classification_report(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict:
    """Everything `evaluate --json` reports besides loss/n/split (see docs/insight.md for the schema)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(class_names)
    labels = np.arange(k)
    pred = probs.argmax(1)
    with warnings.catch_warnings():  # classes never predicted: sklearn warns and uses 0, as we document
        warnings.simplefilter("ignore")
        p, r, f, s = precision_recall_fscore_support(y_true, pred, labels=labels, zero_division=0)
        averages = {}
        for avg in ("macro", "weighted"):
            ap, ar, af, _ = precision_recall_fscore_support(y_true, pred, labels=labels, average=avg, zero_division=0)
            averages[avg] = {"precision": float(ap), "recall": float(ar), "f1": float(af)}
    counts = confusion_matrix(y_true, pred, labels=labels)
    row_sums = counts.sum(1, keepdims=True)
    normalised = np.divide(counts, row_sums, out=np.zeros(counts.shape, dtype=np.float64), where=row_sums > 0)
    return {
        "accuracy": float(accuracy_score(y_true, pred)) if len(y_true) else None,
        "top_k_accuracy": top_k_accuracy(y_true, probs) if len(y_true) else {},
        "per_class": [{"class": class_names[i], "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i in range(k)],
        "macro_avg": averages["macro"],
        "weighted_avg": averages["weighted"],
        "roc_auc": roc_auc(y_true, probs) if len(y_true) else None,
        "confusion_matrix": {"labels": list(class_names), "counts": counts.tolist(), "normalized": normalised.round(6).tolist()},
        "calibration": calibration(y_true, probs),
        "most_confused": most_confused(counts, class_names),
    }


def multi_label_classification_report(y_true: np.ndarray, probs: np.ndarray, class_names: list[str], thresholds) -> dict:
    """What `evaluate --json` reports for a multi-label model besides loss/n/split (docs/insight.md)."""
    return multi_label_report(np.asarray(y_true), np.asarray(probs, dtype=np.float64), class_names, thresholds)


def per_sample_losses(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Cross-entropy of each sample's true class (the 'top losses' ranking), eps-guarded; multi-hot labels: binary
    cross-entropy averaged over the classes."""
    if np.ndim(y_true) == 2:
        p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1 - 1e-12)
        y = np.asarray(y_true, dtype=np.float64)
        return -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(1)
    p = probs[np.arange(len(y_true)), np.asarray(y_true, dtype=np.int64)]
    return -np.log(np.clip(p, 1e-12, 1.0))


def top_losses(y_true: np.ndarray, probs: np.ndarray, class_names: list[str], limit: int = 16, thresholds=None) -> list[dict]:
    """The samples the model got most wrong: index, loss, prediction, its probability, truth. Multi-label (`thresholds`):
    prediction and truth are label sets as words ("cat dog", "(none)"), probability the highest of the image's."""
    losses = per_sample_losses(y_true, probs)
    order = np.argsort(-losses, kind="stable")[:limit]
    if thresholds is not None:
        pred = predicted_labels(probs, thresholds)

        def words(row) -> str:
            return " ".join(c for c, v in zip(class_names, row) if v) or "(none)"

        return [{"index": int(i), "loss": _num(losses[i]), "predicted": words(pred[i]), "probability": float(np.max(probs[i])),
                 "true": words(np.asarray(y_true[i]).astype(bool))} for i in order]
    return [{"index": int(i), "loss": _num(losses[i]), "predicted": class_names[int(probs[i].argmax())],
             "probability": float(probs[i].max()), "true": class_names[int(y_true[i])],
             "true_probability": float(probs[i, int(y_true[i])])} for i in order]
