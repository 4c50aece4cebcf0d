"""Multi-label classification: each image has any number of the classes (one sigmoid output per class).

The pieces the engine and the tools share, so training, evaluate, predict, export and serve agree:

- metrics from multi-hot labels y (N, C) and probabilities (N, C), in numpy: per-class precision, recall, F1 and
  average precision, micro/macro F1, mAP. They follow scikit-learn's definitions (tests/test_multilabel.py checks
  them against it): a zero denominator counts 0, average precision is sum_n (R_n - R_{n-1}) P_n over the distinct
  scores, and mAP averages it over the classes that have at least one positive image (AP is undefined without one).
- decision thresholds: 0.5 for every class, or, with --tune-thresholds, each class's threshold chosen on the
  validation split to maximise that class's F1. A label is predicted when its probability is at or above its
  threshold. The model file stores them (`task: multi_label`, `thresholds`); model files without `task` are
  single-label.
- what training refuses for multi-label data, in one line each (`check_config`).
"""

from __future__ import annotations

import numpy as np

from cnnlab.errors import ConfigError, ModelError

TASK = "multi_label"
DEFAULT_THRESHOLD = 0.5


# ---------------------------------------------------------------- the model file's description


def is_multi_label(meta: dict | None) -> bool:
    """A model file's metadata (or an export's description) says the model is multi-label."""
    return isinstance(meta, dict) and meta.get("task") == TASK


def thresholds_of(meta: dict) -> np.ndarray:
    """The per-class decision thresholds a multi-label model file stores (0.5 each when it stores none)."""
    k = len(meta["class_names"])
    values = meta.get("thresholds")
    return np.asarray(values if values is not None else [DEFAULT_THRESHOLD] * k, dtype=np.float64)


def metadata_problem(meta: dict) -> str | None:
    """What is wrong with the multi-label fields of a model file's metadata (None: nothing, or a single-label file)."""
    task = meta.get("task", "single_label")
    if task not in ("single_label", TASK):
        return f"task {task!r} is not single_label or multi_label"
    values = meta.get("thresholds")
    if values is None:
        return None
    k = len(meta["class_names"])
    ok = isinstance(values, list) and len(values) == k and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in values)
    return None if ok else f"thresholds is not a list of {k} numbers in [0, 1] (one per class)"


def predicted_labels(probs: np.ndarray, thresholds) -> np.ndarray:
    """Multi-hot predictions (N, C): probability at or above the class's threshold."""
    return np.asarray(probs) >= np.asarray(thresholds, dtype=np.float64)


# ---------------------------------------------------------------- metrics (scikit-learn's definitions, in numpy)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def average_precision(y: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under one class's precision-recall curve as a step sum (scikit-learn's average_precision_score);
    None when the class has no positive image."""
    y = np.asarray(y).astype(bool)
    n_pos = int(y.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    s, t = np.asarray(scores, dtype=np.float64)[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # tied scores are one threshold: its last position
    tp = np.cumsum(t)[last]
    fp = np.cumsum(~t)[last]
    precision, recall = tp / (tp + fp), tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def multi_label_report(y: np.ndarray, probs: np.ndarray, class_names: list[str], thresholds) -> dict:
    """Per-class precision/recall/F1/AP/support/threshold, micro and macro averages, mAP, per-label accuracy
    (fastai's accuracy_multi) and exact-match ratio, at the given thresholds (the `evaluate --json` schema)."""
    y = np.asarray(y).astype(bool)
    probs = np.asarray(probs, dtype=np.float64)
    thr = np.asarray(thresholds, dtype=np.float64)
    pred = predicted_labels(probs, thr)
    tp, fp, fn = (pred & y).sum(0), (pred & ~y).sum(0), (~pred & y).sum(0)
    precision, recall, f1 = _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(2 * tp, 2 * tp + fp + fn)
    ap = [average_precision(y[:, c], probs[:, c]) for c in range(len(class_names))]
    scored_ap = [a for a in ap if a is not None]
    TP, FP, FN = int(tp.sum()), int(fp.sum()), int(fn.sum())
    n = len(y)
    return {
        "task": "multi_label",
        "accuracy": float((pred == y).mean()) if n else None,
        "exact_match": float((pred == y).all(1).mean()) if n else None,
        "map": float(np.mean(scored_ap)) if scored_ap else None,
        "micro_avg": {"precision": float(_ratio(TP, TP + FP)), "recall": float(_ratio(TP, TP + FN)),
                      "f1": float(_ratio(2 * TP, 2 * TP + FP + FN))},
        "macro_avg": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())},
        "per_class": [{"class": c, "precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                       "average_precision": ap[i], "support": int(y[:, i].sum()), "predicted": int(pred[:, i].sum()),
                       "threshold": float(thr[i])} for i, c in enumerate(class_names)],
        "thresholds": {c: float(thr[i]) for i, c in enumerate(class_names)},
        "labels_per_image": {"true": float(y.sum(1).mean()) if n else None, "predicted": float(pred.sum(1).mean()) if n else None},
    }


def mean_average_precision(y: np.ndarray, probs: np.ndarray) -> float | None:
    """mAP over the classes with at least one positive image (None when no class has one)."""
    y = np.asarray(y)
    aps = [a for a in (average_precision(y[:, c], probs[:, c]) for c in range(y.shape[1])) if a is not None]
    return float(np.mean(aps)) if aps else None


# ---------------------------------------------------------------- thresholds


def best_f1_threshold(y: np.ndarray, scores: np.ndarray) -> tuple[float, float] | None:
    """(threshold, its F1) that maximises one class's F1 with `score >= threshold`; None without a positive image.

    The threshold sits halfway between the lowest score predicted positive and the next lower score (0 below the
    lowest), so it does not hang on one validation image's exact score; of equal F1s the highest threshold wins."""
    y = np.asarray(y).astype(bool)
    n_pos = int(y.sum())
    if n_pos == 0:
        return None
    s_all = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s_all, kind="stable")
    s, t = s_all[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(t)[last]
    fp = np.cumsum(~t)[last]
    f1 = 2 * tp / (2 * tp + fp + (n_pos - tp))
    best = int(np.argmax(f1))
    k = last[best]
    lower = s[k + 1] if k + 1 < len(s) else 0.0
    return float((s[k] + lower) / 2), float(f1[best])


def tune_thresholds(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, list[bool]]:
    """Per-class thresholds maximising each class's F1 on (y, probs), and which classes were tuned (a class without
    a positive image keeps 0.5)."""
    thr, tuned = [], []
    for c in range(probs.shape[1]):
        best = best_f1_threshold(y[:, c], probs[:, c])
        thr.append(DEFAULT_THRESHOLD if best is None else best[0])
        tuned.append(best is not None)
    return np.asarray(thr, dtype=np.float64), tuned


def thresholds_note(y: np.ndarray, probs: np.ndarray, class_names: list[str], thr: np.ndarray, tuned: list[bool], split: str) -> str:
    """One line a run prints: each class's threshold and its F1 there against its F1 at 0.5."""
    at_half = multi_label_report(y, probs, class_names, [DEFAULT_THRESHOLD] * len(class_names))["per_class"]
    at_thr = multi_label_report(y, probs, class_names, thr)["per_class"]
    parts = [f"{c} {thr[i]:.3f} (F1 {at_thr[i]['f1']:.3f}, at 0.5 {at_half[i]['f1']:.3f})" if tuned[i] else f"{c} 0.5 (no positive image)"
             for i, c in enumerate(class_names)]
    return f"thresholds tuned on the {split} split ({len(y)} images) for each class's F1: " + ", ".join(parts)


# ---------------------------------------------------------------- what training refuses


def check_config(cfg, dataset, model) -> None:
    """One line for each option that does not apply to multi-label data (before a run folder is made); a ConfigError
    for --tune-thresholds on single-label data."""
    if not dataset.multi_label:
        if cfg.tune_thresholds:
            raise ConfigError("tune_thresholds: decision thresholds are for multi-label data (a labels table with --label-delim,"
                              " or one 0/1 column per class) — drop --tune-thresholds")
        return
    if cfg.balance != "none" or cfg.class_weights:
        what = f"--balance {cfg.balance}" if cfg.balance != "none" else "--class-weights"
        raise ConfigError(f"{what}: class balancing is defined for one label per image — with multi-label data drop {what}"
                          " (rare labels: lower their thresholds with --tune-thresholds)")
    if cfg.tune_thresholds and not len(dataset.splits.get("val", ())):
        raise ConfigError("tune_thresholds: needs a validation split to choose the thresholds on — set --val-split (e.g. 0.2)"
                          " or give the table a split column")
    outputs = head_outputs(model)
    if outputs is not None and outputs != dataset.num_classes:
        raise ModelError(f"model has {outputs} outputs but the multi-label dataset has {dataset.num_classes} classes (one sigmoid"
                         " output each) — build it with create_model(name, dataset)")
    model.cnnlab_task = TASK


def head_outputs(model) -> int | None:
    """The number of outputs of the model's classifier (models.layers.classifier_layer), None when it has none."""
    from cnnlab.models.layers import classifier_layer

    found = classifier_layer(model)
    return found[1].out_features if found is not None else None


# ---------------------------------------------------------------- the end of a training run (engine/run_outputs.py)


def run_thresholds(model, dataset, cfg, norm: dict, say) -> dict:
    """The model file's multi-label fields for `model`: 0.5 for every class, or with cfg.tune_thresholds each class's
    best-F1 threshold on the val split (printed through `say`). The val split is scored in fp32, as evaluate, predict
    and serve score images (training's bf16 could put a probability on the other side of a threshold)."""
    import torch

    from cnnlab.engine.inference import evaluate_on_split

    k = dataset.num_classes
    if not cfg.tune_thresholds:
        return {"task": TASK, "thresholds": [DEFAULT_THRESHOLD] * k}
    val = dataset.splits["val"]
    ev = evaluate_on_split(model, val, norm, next(model.parameters()).device, "fp32")
    y = np.asarray(val.y)[ev["index"]]
    probs = torch.sigmoid(ev["logits"].float()).numpy().astype(np.float64)
    thr, tuned = tune_thresholds(y, probs)
    say(thresholds_note(y, probs, dataset.class_names, thr, tuned, "val"))
    return {"task": TASK, "thresholds": [round(float(t), 6) for t in thr],
            "threshold_tuning": {"split": "val", "images": int(len(y)), "objective": "f1 per class"}}


def split_scores(ev: dict, y: np.ndarray, class_names: list[str], thresholds) -> dict:
    """The multi-label figures a run records for a scored split (run.json's "test"): accuracy per label and exact
    match at the thresholds, mAP, micro and macro F1."""
    import torch

    probs = torch.sigmoid(ev["logits"].float()).numpy().astype(np.float64)
    rep = multi_label_report(y, probs, class_names, thresholds)
    return {"accuracy": rep["accuracy"], "exact_match": rep["exact_match"], "map": rep["map"],
            "micro_f1": rep["micro_avg"]["f1"], "macro_f1": rep["macro_avg"]["f1"]}


def grid_titles(probs: np.ndarray, y: np.ndarray, class_names: list[str], thresholds) -> tuple[list[str], list[bool]]:
    """Prediction-grid titles ("cat dog" over "(true: cat)") and whether each image's predicted label set is exact."""
    pred = predicted_labels(probs, thresholds)
    y = np.asarray(y).astype(bool)

    def words(row) -> str:
        names = [c for c, v in zip(class_names, row) if v]
        return " ".join(names) if names else "(none)"

    return [f"{words(p)}\n(true: {words(t)})" for p, t in zip(pred, y)], [bool((p == t).all()) for p, t in zip(pred, y)]
