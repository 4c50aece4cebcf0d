"""What an export is checked with before it is written, and the bars it must clear.

- fp32 formats (onnx, torchscript, openvino): logits and probabilities within FP32_MAX_ABS_DIFF of
  PyTorch on check images covering the pixel range, at batch sizes 1 and N (the batch axis must be dynamic).
- fp16 / int8: top-1 agreement with PyTorch on held-out images (never used for calibration), at least
  MIN_AGREEMENT[precision]; a multi-label model agrees on an image when the export predicts exactly the labels
  PyTorch predicts (each class's probability against its threshold). The floors come from measurements (BENCHMARKS.md, "Export formats": 400
  held-out cats/dogs photos): fp16 agreed on every one for seed_cnn, resnet9 and efficientnet_lite0,
  int8 (100 calibration images) on 99.5-99.75%. The floors leave room for smaller held-out sets (one
  flip in 60 images is 1.7%) and less sure models, and still stop a broken quantisation: int8
  calibrated on images unlike the data agreed on 33% (three classes, tests/test_export_formats.py).

Calibration images come from the data's train split, held-out images from its test split, else val,
else the train images not drawn for calibration; both are seeded random samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from cnnlab.data.dataset import Dataset
from cnnlab.engine.inference import predict_logits, probabilities
from cnnlab.engine.predictor import Classifier
from cnnlab.errors import ConfigError, ModelError
from cnnlab.export.errors import ExportError

FP32_MAX_ABS_DIFF = 1e-4
MIN_AGREEMENT = {"fp16": 0.99, "int8": 0.95}
DEFAULT_CALIBRATION = 100  # images; onnxruntime's MinMax ranges settle well before that on our models
DEFAULT_HOLDOUT = 500  # images for the agreement check (and the accuracies reported with it)
CHECK_BATCH = 32  # images per runtime call while checking (bounds memory for big inputs)

Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class ExportImages:
    """Images an export is calibrated and checked with (uint8 N, H, W, C), and where they came from."""

    calibration: np.ndarray | None = None
    holdout: np.ndarray | None = None
    holdout_labels: np.ndarray | None = None
    calibration_from: str = "given"
    holdout_from: str = "given"


def images_from_dataset(ds: Dataset, calibration: int, holdout: int, seed: int = 0) -> ExportImages:
    """`calibration` images from the train split and up to `holdout` held-out images (test, else val, else
    train images not drawn for calibration). Fewer train images than `calibration` is a ConfigError."""
    rng = np.random.default_rng(seed)
    train = ds.split("train") if "train" in ds.splits else None
    cal_idx = np.array([], dtype=np.int64)
    cal = None
    if calibration:
        have = len(train) if train is not None else 0
        if have < calibration:
            raise ConfigError(f"{ds.spec}: --calibration {calibration} asks for {calibration} calibration images but the train split "
                              f"has {have} — use --calibration {have} or fewer, or more data")
        cal_idx = np.sort(rng.choice(have, calibration, replace=False))
        cal = np.ascontiguousarray(train.x[cal_idx], dtype=np.uint8)
    split_name = next((s for s in ("test", "val") if s in ds.splits and len(ds.splits[s])), None)
    if split_name is not None:
        pool, pool_idx, source = ds.splits[split_name], np.arange(len(ds.splits[split_name])), f"{split_name} split"
    elif train is not None:
        pool, pool_idx, source = train, np.setdiff1d(np.arange(len(train)), cal_idx), "train images not used for calibration"
    else:
        pool, pool_idx, source = None, np.array([], dtype=np.int64), "none"
    if len(pool_idx) == 0:
        raise ConfigError(f"{ds.spec}: no held-out images to check the export with — use data with a test or val split")
    pick = np.sort(rng.choice(pool_idx, min(holdout, len(pool_idx)), replace=False))
    return ExportImages(cal, np.ascontiguousarray(pool.x[pick], dtype=np.uint8), np.asarray(pool.y[pick]),
                        "train split", source)


def torch_reference(clf: Classifier, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's fp32 logits and probabilities: the oracle every export is compared with."""
    logits = predict_logits(clf.model, x, clf.meta["normalization"], torch.device("cpu"), "fp32")
    return logits.numpy(), probabilities(logits, clf.multi_label).numpy()


def run_batched(run: Runner, x: np.ndarray, batch: int = CHECK_BATCH) -> tuple[np.ndarray, np.ndarray]:
    parts = [run(np.ascontiguousarray(x[i : i + batch])) for i in range(0, len(x), batch)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def check_fp32(clf: Classifier, run: Runner, x: np.ndarray, tolerance: float = FP32_MAX_ABS_DIFF,
               label: str = "model", what: str = "the export") -> tuple[float, list[int]]:
    """Max abs difference of logits and probabilities vs PyTorch on batch sizes 1 and len(x); ModelError above tolerance."""
    ref_logits, ref_probs = torch_reference(clf, x)
    max_diff, sizes = 0.0, []
    for n in sorted({1, len(x)}):  # two batch sizes: the batch axis must really be dynamic
        logits, probs = run(np.ascontiguousarray(x[:n]))
        max_diff = max(max_diff, float(np.max(np.abs(logits - ref_logits[:n]))), float(np.max(np.abs(probs - ref_probs[:n]))))
        sizes.append(n)
    if not np.isfinite(max_diff) or max_diff > tolerance:
        raise ModelError(f"{label}: {what} output differs from PyTorch by {max_diff:.3g} (> {tolerance:g}); nothing was written — report this model/format combination")
    return max_diff, sizes


def check_agreement(clf: Classifier, run: Runner, x: np.ndarray, labels: np.ndarray | None, floor: float,
                    label: str = "model", what: str = "the export") -> dict:
    """Top-1 agreement with PyTorch on held-out images (and both accuracies when labels are known);
    ExportError under `floor`, with the figure."""
    ref_logits, ref_probs = torch_reference(clf, x)
    _, probs = run_batched(run, x)
    if probs.shape != ref_probs.shape or not np.all(np.isfinite(probs)):
        raise ExportError(f"{label}: {what} answers {probs.shape} probabilities (or non-finite ones) where PyTorch answers {ref_probs.shape}; nothing was written")
    if clf.multi_label:  # label sets at the model's thresholds; right = exactly the true labels
        ours, theirs = probs >= clf.thresholds, ref_probs >= clf.thresholds
        same = lambda a, b: np.all(a == np.asarray(b).astype(bool), axis=1)  # noqa: E731
    else:
        ours, theirs = probs.argmax(1), ref_probs.argmax(1)
        same = np.equal
    agreement = float(np.mean(same(ours, theirs)))
    res = {"agreement": agreement, "agreement_floor": floor, "holdout_images": int(len(x)),
           "max_prob_diff": float(np.max(np.abs(probs - ref_probs))), **({"agreement_on": "label sets"} if clf.multi_label else {})}
    if labels is not None:
        res.update(accuracy=float(np.mean(same(ours, labels))), torch_accuracy=float(np.mean(same(theirs, labels))))
    if agreement < floor:
        raise ExportError(f"{label}: {what} agrees with PyTorch on the {'label sets' if clf.multi_label else 'top class'} of {agreement:.1%} of {len(x)} held-out images, "
                          f"under the floor of {floor:.0%}; nothing was written — calibrate with more or more typical images (--calibration N) or use a higher precision")
    return res
