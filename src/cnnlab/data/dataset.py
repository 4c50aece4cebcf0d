"""The in-memory dataset: every split is one uint8 (N, H, W, C) array plus its labels.

Labels are int64 class ids (N,) — one class per image — or, for multi-label data (a labels table with several
labels per image, or one 0/1 column per class), a multi-hot uint8 (N, C) array: y[i, c] = 1 when image i has
class c, a row of zeros when it has none. `Dataset.multi_label` tells them apart.

Images stay uint8 (4x smaller than float32) and are normalised per batch on the fly. Image folders too
large for memory use `cnnlab.data.stream.StreamSplit` instead, whose `x` decodes files on access.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Split:
    x: np.ndarray  # uint8 (N, H, W, C)
    y: np.ndarray  # int64 (N,) class ids; multi-label: multi-hot (N, C)
    paths: list[str] | None = None  # source file per image, when the data came from files

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> "Split":
        paths = [self.paths[i] for i in idx] if self.paths is not None else None
        return Split(self.x[idx], self.y[idx], paths)


@dataclass
class Dataset:
    spec: str
    class_names: list[str]
    splits: dict[str, Split]
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    source_format: str = ""
    load_options: dict = field(default_factory=dict)  # how it was loaded (recorded in config.yaml)
    ignored_files: list[str] = field(default_factory=list)  # files in class folders that are not images (by extension)
    notes: list[str] = field(default_factory=list)  # what loading decided for the user to know (training prints them)
    # A labels table (cnnlab.data.labels_table): rows whose file is missing, as (where it was looked for, "TABLE line N"),
    # and images in the data folder that no row names. Left out of the splits, listed in `notes`, never dropped in silence.
    missing_files: list[tuple[str, str]] = field(default_factory=list)
    unlabelled_files: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def multi_label(self) -> bool:
        """Each image has any number of the classes (labels are multi-hot rows), not exactly one."""
        return any(np.ndim(s.y) == 2 for s in self.splits.values())

    def label_text(self, y_row) -> str:
        """One image's label as words: its class name; multi-label: its classes joined by spaces, or "(no label)"."""
        return label_text(y_row, self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        return tuple(next(iter(self.splits.values())).x.shape[1:])  # type: ignore[return-value]

    @property
    def train(self) -> Split:
        return self.splits["train"]

    def split(self, name: str) -> Split:
        from cnnlab.errors import DataError

        if name not in self.splits:
            raise DataError(f"dataset {self.spec!r} has no {name!r} split — available: {', '.join(self.splits)}")
        return self.splits[name]

    def default_eval_split(self) -> str:
        for name in ("test", "val", "train"):
            if name in self.splits:
                return name
        raise AssertionError("dataset without splits")

    def class_counts(self, split: str = "train") -> dict[str, int]:
        """Images per class (multi-label: images that have the class; an image counts once for each of its classes)."""
        y = self.splits[split].y
        counts = np.asarray(y).sum(0) if np.ndim(y) == 2 else np.bincount(y, minlength=self.num_classes)
        return {c: int(n) for c, n in zip(self.class_names, counts)}

    def summary(self) -> dict:
        h, w, c = self.image_shape
        return {
            "spec": self.spec,
            "format": self.source_format,
            "classes": self.class_names,
            "image_shape": [h, w, c],
            "splits": {k: len(v) for k, v in self.splits.items()},
            "class_counts": {k: self.class_counts(k) for k in self.splits},
            "bad_files": len(self.bad_files),
            "stream": self.streamed,
            **({"task": "multi_label"} if self.multi_label else {}),
        }

    @property
    def streamed(self) -> bool:
        """True when the splits keep file paths and decode from disk (cnnlab.data.stream) instead of holding pixels."""
        from cnnlab.data.stream import StreamSplit  # noqa: PLC0415  (stream.py builds on this module)

        return any(isinstance(s, StreamSplit) for s in self.splits.values())


def label_text(y_row, class_names: list[str]) -> str:
    """A class id as its name; a multi-hot row as the names of its classes ("cat dog"), or "(no label)"."""
    if np.ndim(y_row) == 1:
        names = [c for c, v in zip(class_names, y_row) if v]
        return " ".join(names) if names else "(no label)"
    return class_names[int(y_row)]
