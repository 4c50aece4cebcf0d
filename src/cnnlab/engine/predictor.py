"""A trained classifier loaded from a model file: the one object predict, evaluate, explain, report and serve use."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.data import images, prediction
from cnnlab.data.dataset import Dataset, Split
from cnnlab.data.images import expand_image_paths  # noqa: F401  (re-exported: engine.predictor.expand_image_paths)
from cnnlab.data.sources import load_dataset
from cnnlab.engine.device import resolve_device
from cnnlab.engine.inference import predict_logits, probabilities
from cnnlab.engine import multilabel
from cnnlab.engine.model_file import load_model_file, resize_mode
from cnnlab.errors import DataError


class Classifier:
    def __init__(self, model: torch.nn.Module, meta: dict, device: torch.device, source: Path | None = None):
        self.model, self.meta, self.device, self.source = model, meta, device, source

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "Classifier":
        dev = resolve_device(device)
        model, meta = load_model_file(path, dev)
        return cls(model, meta, dev, Path(path))

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) the model was trained on."""
        c, h, w = self.meta["input_shape"]
        return c, h, w

    @property
    def multi_label(self) -> bool:
        """One sigmoid output per class and a decision threshold each (any number of labels per image)."""
        return multilabel.is_multi_label(self.meta)

    @property
    def thresholds(self) -> np.ndarray | None:
        """A multi-label model's per-class decision thresholds (None for a single-label model)."""
        return multilabel.thresholds_of(self.meta) if self.multi_label else None

    @property
    def resize(self) -> str:
        """How a photo of another aspect ratio is fitted to the input size: as in training (squash, crop or pad;
        model files from before --resize: squash). data/images.fit_image does it."""
        return resize_mode(self.meta)

    def predict_proba(self, x: np.ndarray, batch_size: int | None = None, tta: bool = False) -> np.ndarray:
        """Class probabilities (N, K) for uint8 images (N, H, W, C) of the model's input shape (tta: averaged over mirror images and inference.tta_scales).
        Multi-label: each class's own sigmoid probability (rows do not sum to 1)."""
        logits = predict_logits(self.model, x, self.meta["normalization"], self.device, "fp32", batch_size, tta=tta)
        return probabilities(logits, self.multi_label).numpy()

    def load_image(self, path: str | Path) -> np.ndarray:
        """One image file decoded as the training images were: the input size and channels, fitted as `resize` says."""
        c, h, w = self.input_shape
        return images.load_image(path, (h, w), channels=c, resize=self.resize)

    def describe(self, probs: np.ndarray, top_k: int = 5) -> dict:
        """The prediction as users see it (data/prediction.describe): multi-label, every label at or above its threshold."""
        return prediction.describe(probs, self.class_names, top_k, multilabel.thresholds_of(self.meta) if multilabel.is_multi_label(self.meta) else None)

    def predict_files(self, paths: list[str | Path], top_k: int = 5, tta: bool = False) -> list[dict]:
        """One result per path: the prediction, or {"path", "error"} for a file that cannot be read."""
        return prediction.predict_files(paths, self.load_image, lambda x: self.predict_proba(x, tta=tta), self.class_names, top_k,
                                        self.thresholds)


def load_classifier(run_or_model, device: str = "cpu") -> Classifier:
    """A Classifier from a run folder, a model file, a finished training (engine.trainer.TrainResult) or a Classifier."""
    if isinstance(run_or_model, Classifier):
        return run_or_model
    if isinstance(run_or_model, (str, os.PathLike)):
        return Classifier.load(run_or_model, device)
    from cnnlab.engine.trainer import TrainResult  # here: loading a model file never needs the training loop

    if isinstance(run_or_model, TrainResult):
        model = run_or_model.model
        return Classifier(model, run_or_model.meta, next(model.parameters()).device, run_or_model.run_dir)
    raise TypeError(f"expected a run folder, model file, TrainResult or Classifier, not {type(run_or_model).__name__}")


def dataset_for_model(clf: Classifier, data: Dataset | str, **overrides: Any) -> Dataset:
    """Load `data` the way the model saw its training data (size, aspect-ratio fitting, channels, classes, split seed), and
    check that it fits the model. `overrides` are load_dataset options that win over the ones taken from the model (e.g.
    CLI flags).
    """
    c, h, w = clf.input_shape
    if isinstance(data, Dataset):
        ds = data
    else:
        cfg = dict(clf.meta.get("config") or {})
        opts = {k: cfg[k] for k in ("image_shape", "val_split", "seed", "max_bad_fraction") if cfg.get(k) is not None}
        opts.update(classes=cfg.get("classes"), image_size=h if h == w else None, channels=c, resize=clf.resize)
        if clf.multi_label and opts["classes"] is None:  # labels mapped onto the model's classes, also when some are absent
            opts["classes"] = clf.class_names
        if overrides.get("labels") is not None or str(data).lower().endswith((".csv", ".tsv")):  # a labels table:
            opts.update({k: cfg[k] for k in ("file_col", "label_col", "label_delim") if cfg.get(k) is not None})  # read as trained
        ds = load_dataset(data, **{**opts, **overrides})
    if tuple(ds.image_shape) != (h, w, c):
        raise DataError(f"{ds.spec}: images are {ds.image_shape[0]}x{ds.image_shape[1]}x{ds.image_shape[2]} but the model expects {h}x{w}x{c}")
    if list(ds.class_names) != clf.class_names:
        raise DataError(f"{ds.spec}: classes {ds.class_names} differ from the model's {clf.class_names} — evaluate on data with the same classes")
    if ds.multi_label and not clf.multi_label:
        raise DataError(f"{ds.spec}: has several labels per image (multi-label) but the model predicts one class per image"
                        " — evaluate a model trained on multi-label data, or read the table without --label-delim")
    if clf.multi_label and not ds.multi_label:  # one label per image is a multi-label case too: one-hot rows
        ds = dataclasses.replace(ds, splits={k: _with_labels(v, np.eye(len(clf.class_names), dtype=np.uint8)[np.asarray(v.y)])
                                             for k, v in ds.splits.items()})
    return ds


def _with_labels(split: Split, y: np.ndarray) -> Split:
    """The same images (in memory or streamed) with other labels."""
    from cnnlab.data.stream import StreamSplit

    if isinstance(split, StreamSplit):
        return StreamSplit(split.x, y, split.bad, split.workers)
    return Split(split.x, y, split.paths)
