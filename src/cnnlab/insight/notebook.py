"""Notebook use: figures a Jupyter cell shows inline, and a fastai-style interpretation of a trained classifier.

    ds = cnnlab.load_dataset("builtin:shapes")
    cnnlab.show_batch(ds)                          # labelled training images
    cnnlab.show_augmented(ds, augment="standard")  # as training augments them (`cnnlab show --augmented`)
    run = cnnlab.train("seed_cnn", ds, epochs=3)
    run                                            # summary table (TrainResult._repr_html_)
    run.plot_curves()
    interp = cnnlab.interpret(run, ds)             # one pass over the test split (else val)
    interp.plot_top_losses(9); interp.plot_confusion_matrix(); interp.most_confused()

Every plot returns a matplotlib Figure: Jupyter shows the value of a cell's last line, a script saves it with
`fig.savefig(...)`. The figures are made without pyplot (plotting.new_figure), so nothing opens a window, nothing
is left open, and they draw with Agg anywhere. They are the same figure functions `cnnlab evaluate --plots` and
report.html save (insight/figures.py, plotting.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnlab.data.dataset import Dataset
from cnnlab.engine.predictor import Classifier, dataset_for_model, load_classifier
from cnnlab.errors import ConfigError, DataError
from cnnlab.insight import figures
from cnnlab.insight import metrics as M
from cnnlab.insight.evaluation import ScoredSplit, evaluation_report, score_split
from cnnlab.plotting import Figure, grid_figure

__all__ = ["show_batch", "show_augmented", "augmented_samples", "interpret", "Interpretation"]

MIN_TRAIN_SIZE = 8  # px: the smallest crop `cnnlab train --train-size` accepts


def _count(n, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"{what} = {n!r} is invalid — expected a whole number >= 1")
    return int(n)


def _pick(ds: Dataset, split: str, n: int, seed: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Up to n random images of a split (without replacement) and their labels; streamed folders decode just these."""
    from cnnlab.data.loader import read_images

    if not isinstance(ds, Dataset):
        raise DataError(f"expected a dataset from cnnlab.load_dataset(...), not {type(ds).__name__}")
    s = ds.split(split)
    if not len(s):
        raise DataError(f"dataset {ds.spec!r}: the {split!r} split has no images")
    idx = np.random.default_rng(seed).choice(len(s), size=min(_count(n, "n"), len(s)), replace=False)
    return read_images(s, idx)


def show_batch(ds: Dataset, n: int = 16, split: str = "train", seed: int | None = None) -> Figure:
    """A grid of n random images of a split, titled with their class (`cnnlab show --grid N`); seed: the same images again."""
    x, y = _pick(ds, split, n, seed)
    return grid_figure(x, [ds.class_names[int(v)] for v in y], suptitle=f"{split} images")


def augmented_samples(ds: Dataset, augment: str = "auto", aug_args: dict | None = None, train_size: int | None = None,
                      n: int = 16, split: str = "train", seed: int | None = None) -> tuple[np.ndarray, list[str], str]:
    """(images, titles, preset): n random images of a split as training augments them — the preset (auto: what the
    default recipe trains from scratch with), per-op overrides (`--aug-arg OP=VALUE`) and `--train-size` crops.

    A mixup/cutmix image is titled with both classes and their shares. `seed` picks the images and, as in
    `cnnlab show --augmented --seed S`, the augmentation (0 when None).
    """
    from cnnlab.config import scratch_augment
    from cnnlab.data.augment import augment_uint8, resolve_ops, training_size

    if train_size is not None and (isinstance(train_size, bool) or not isinstance(train_size, (int, np.integer)) or train_size < MIN_TRAIN_SIZE):
        raise ConfigError(f"train_size = {train_size!r} is invalid — expected a size in pixels >= {MIN_TRAIN_SIZE}")
    x, y = _pick(ds, split, n, seed)
    h, w, c = ds.image_shape
    preset = scratch_augment(c, min(h, w)) if augment == "auto" else augment
    ops = resolve_ops(preset, dict(aug_args or {}))
    if ds.multi_label:  # the pixels as training sees them; a mixed image trains on a blend of two label sets
        imgs, notes = augment_uint8(x, np.zeros(len(x), dtype=np.int64), ops, seed or 0, training_size(train_size, x.shape[1:3]))
        return imgs, [ds.label_text(v) + (" (mixed)" if note else "") for v, note in zip(y, notes)], preset
    imgs, notes = augment_uint8(x, y, ops, seed or 0, training_size(train_size, x.shape[1:3]))
    titles = [partner_title(ds.class_names[int(v)] + note, ds.class_names) for v, note in zip(y, notes)]
    return imgs, titles, preset


def partner_title(title: str, names: list[str]) -> str:
    """'cat (70%) + 1 (30%)' -> 'cat (70%)\\n+ dog (30%)': a mixup/cutmix image's partner class by name."""
    head, sep, tail = title.partition(" + ")
    if not sep:
        return title
    idx, _, rest = tail.partition(" ")
    return f"{head}\n+ {names[int(idx)]} {rest}"


def show_augmented(ds: Dataset, augment: str = "auto", aug_args: dict | None = None, train_size: int | None = None,
                   n: int = 16, split: str = "train", seed: int | None = None) -> Figure:
    """n random images as training augments them (`cnnlab show --augmented [--aug P] [--aug-arg OP=V] [--train-size N]`)."""
    imgs, titles, preset = augmented_samples(ds, augment, aug_args, train_size, n, split, seed)
    return grid_figure(imgs, titles, suptitle=f"augmented ({preset})")


class Interpretation:
    """A classifier's predictions on one split, scored once (like fastai's ClassificationInterpretation).

    Attributes: `split`, `class_names`, `y` (true labels), `probs` (N, K), `preds`, `losses` (cross-entropy per
    image), `report` (the `cnnlab evaluate --json` report of these predictions), `images` (the images scored).
    """

    def __init__(self, clf: Classifier, scored: ScoredSplit):
        self.classifier = clf
        self.split = scored.split
        self.class_names = clf.class_names
        self.images = scored.images
        self.y = scored.y
        self.probs = scored.probs
        self.preds = scored.probs.argmax(1) if scored.n else np.zeros(0, dtype=np.int64)
        self.losses = M.per_sample_losses(scored.y, scored.probs) if scored.n else np.zeros(0)
        self.report = evaluation_report(scored, self.class_names)

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def accuracy(self) -> float | None:
        return self.report["accuracy"]

    def __repr__(self) -> str:
        acc = "-" if self.accuracy is None else f"{self.accuracy:.1%}"
        return f"Interpretation(split={self.split!r}, n={self.n}, accuracy={acc}, classes={self.class_names})"

    def confusion_matrix(self) -> np.ndarray:
        """Counts (K, K): row = true class, column = predicted class, in class_names order."""
        return np.array(self.report["confusion_matrix"]["counts"], dtype=np.int64).reshape(len(self.class_names), -1)

    def most_confused(self, min_val: int = 1) -> list[tuple[str, str, int]]:
        """(actual, predicted, count) for every mistaken pair seen at least min_val times, most frequent first."""
        rows = M.most_confused(self.confusion_matrix(), self.class_names, limit=None, min_count=min_val)
        return [(r["true"], r["predicted"], r["count"]) for r in rows]

    def top_losses(self, k: int = 9) -> list[dict]:
        """The k images with the highest loss: index (into `images`), loss, predicted, probability, true, path."""
        rows = M.top_losses(self.y, self.probs, self.class_names, limit=_count(k, "k")) if self.n else []
        paths = self.images.paths
        return [{**r, "path": str(paths[r["index"]])} if paths is not None else r for r in rows]

    def plot_top_losses(self, k: int = 9) -> Figure:
        """The k images the model got most wrong, titled prediction, its probability, truth and loss (wrong in red)."""
        return figures.top_losses_figure(self.images.x, self.top_losses(k))

    def plot_confusion_matrix(self) -> Figure:
        """Counts per (true, predicted) cell, coloured by the fraction of the true class."""
        return figures.confusion_matrix_figure(self.report)


def interpret(run, data: Dataset | str | Path | None = None, split: str | None = None, batch_size: int | None = None,
              tta: bool = False) -> Interpretation:
    """Score a trained classifier once on a split (default: test when the data has one, else val, else train).

    run: a TrainResult (what cnnlab.train returns), a run folder or a model file. data: a Dataset or SPEC, loaded
    the way the model saw its training data; default: the data the run trained on (its config).
    """
    clf = load_classifier(run)
    if data is None:
        data = (clf.meta.get("config") or {}).get("data")
        if not data:
            raise DataError(f"{clf.source}: the model file does not name its training data — pass the data: cnnlab.interpret(run, DATA)")
    ds = dataset_for_model(clf, data)
    return Interpretation(clf, score_split(clf, ds, split or ds.default_eval_split(), batch_size, tta=tta))
