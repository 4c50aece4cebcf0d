"""`cnnlab data check SPEC`: walk a dataset the way training will and list every file it would skip.

Training skips unreadable images (up to --max-bad-fraction) and records them in RUN/bad_files.txt;
this check names each one with its reason *before* hours are spent. Image folders are checked file by
file (every entry under each class folder, including symlinks, which training would otherwise follow
or silently miss); other formats (seed CSV, .npz, builtin) are loaded whole, so a problem there is the
loader's own one-line error (file, line, column). A labels table (`labels=`, or a .csv as SPEC) is loaded the way
training loads it, every named image decoded; rows whose file is missing count as bad, images no row names as ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cnnlab.data import images, labels_table
from cnnlab.data.sources import (class_from_file_name, find_split_folders, load_dataset, no_classes_error, scan_image_folder,
                                 walk_files)
from cnnlab.errors import DataError

CHECK_SIZE = 32  # decode every image fully (truncation shows only then), resized small to save memory


@dataclass
class CheckReport:
    spec: str
    format: str
    images: int = 0  # image files examined (ignored files not counted)
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): training would skip these
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (path, why): never looked at as images
    classes: list[str] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)  # readable images per split
    notes: list[str] = field(default_factory=list)  # what loading decided (the lines training prints)

    @property
    def ok(self) -> bool:
        return not self.bad

    def to_dict(self) -> dict:
        return {"spec": self.spec, "format": self.format, "images": self.images, "ok": self.ok,
                "classes": self.classes, "splits": self.splits, "notes": self.notes,
                "bad": [{"path": p, "reason": r} for p, r in self.bad],
                "ignored": [{"path": p, "reason": r} for p, r in self.ignored]}


def _ignore_reason(p: Path) -> str | None:
    """Why a file under a class folder is not an image candidate (None: it is one)."""
    if images.is_os_file(p.name):
        return "operating-system file, ignored"
    if p.suffix.lower() not in images.IMAGE_EXTENSIONS:
        return f"extension {p.suffix or '(none)'} is not an image type, ignored"
    return None


def check_image_folder(root: Path, channels: int = 3) -> CheckReport:
    try:
        scan_image_folder(root)  # the layout rules training applies (classes, empty class folders)
        refused = None
    except DataError as e:
        refused = e  # what training would say: raised below unless the report's own list of bad files says more
    rep = CheckReport(str(root), "image-folder")
    split_roots, beside = find_split_folders(root)
    split_roots = split_roots or {"train": root}
    for entry in beside:
        rep.ignored.append((str(entry), "beside the split folders, not read (only train/, val/ or valid/, validation/, eval/, and test/ are)"))
    candidates: list[tuple[str, Path]] = []
    classes: set[str] = set()
    unnamed: list[tuple[str, str]] = []
    for split, sroot in split_roots.items():
        entries = sorted(sroot.iterdir())
        by_name = not any(e.is_dir() and not e.name.startswith(".") for e in entries)  # cat.0.jpg, dog.0.jpg
        for entry in entries:
            if by_name and entry.is_file():
                why = _ignore_reason(entry)
                if why is not None:
                    rep.ignored.append((str(entry), why))
                elif (name := class_from_file_name(entry.name)) is None:
                    unnamed.append((str(entry), "no class subfolders, and the file name does not start with its class (cat.0.jpg)"))
                else:
                    classes.add(name)
                    candidates.append((split, entry))
                continue
            if not entry.is_dir() or entry.name.startswith("."):
                if entry.is_file() and split_roots == {"train": root}:
                    rep.ignored.append((str(entry), "file outside any class folder, ignored"))
                continue
            classes.add(entry.name)
            for p in walk_files(entry):
                why = _ignore_reason(p)
                if why is not None:
                    rep.ignored.append((str(p), why))
                elif p.is_symlink() and os.path.isdir(p):  # isdir is False for a looping or broken link
                    rep.ignored.append((str(p), "symlink to a folder, not followed"))
                else:
                    candidates.append((split, p))
    rep.classes = sorted(classes)
    if not rep.classes:
        raise no_classes_error(split_roots["train"], f"{root}: no class subfolders — put images in one folder per class, e.g. cats/ and dogs/")
    if unnamed and (table := labels_table.find_naming_table(split_roots["train"])) is not None:
        rep.notes.append(f"{table} names these images — to take their labels from it, pass --labels {table}")
    _, ok, bad = images.load_images([p for _, p in candidates], (CHECK_SIZE, CHECK_SIZE), channels=channels)
    rep.images = len(candidates) + len(unnamed)
    rep.bad = sorted(bad + unnamed)
    for i in ok:
        rep.splits[candidates[i][0]] = rep.splits.get(candidates[i][0], 0) + 1
    if refused is not None and not rep.bad:
        raise refused
    return rep


def check_dataset(spec: str | os.PathLike, **load_options) -> CheckReport:
    """Check a dataset SPEC. Image folders: every file. Other formats: the loader's own validation."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if load_options.get("labels") is not None or (path.is_file() and path.suffix.lower() in labels_table.TABLE_SUFFIXES
                                                  and not (path.parent / "input.csv").is_file()):
        return check_labels_table(spec, **load_options)
    if not spec.startswith("builtin:") and path.is_dir() and not (path / "input.csv").is_file():
        return check_image_folder(path, load_options.get("channels") or 3)
    ds = load_dataset(spec, **{**load_options, "val_split": 0.0})  # raises DataError naming file/line/column
    rep = CheckReport(spec, ds.source_format, images=sum(len(s) for s in ds.splits.values()),
                      bad=list(ds.bad_files), classes=list(ds.class_names))
    rep.splits = {k: len(v) for k, v in ds.splits.items()}
    return rep


def check_labels_table(spec: str, **load_options) -> CheckReport:
    """Load a labels-table dataset with every image decoded (small) and none skipped for the bad fraction; list the
    unreadable images and the rows whose file is missing as bad, the images no row names as ignored."""
    opts = {**load_options, "val_split": 0.0, "image_size": CHECK_SIZE, "stream": False, "max_bad_fraction": 1.0}
    ds = load_dataset(spec, **opts)  # a DataError/ConfigError names the table's line
    rep = CheckReport(spec, ds.source_format, classes=list(ds.class_names), notes=list(ds.notes))
    rep.bad = sorted(list(ds.bad_files) + list(ds.missing_files))
    rep.ignored = [(p, "no row of the labels table names it") for p in ds.unlabelled_files]
    rep.images = sum(len(s) for s in ds.splits.values()) + len(ds.bad_files) + len(ds.missing_files)
    rep.splits = {k: len(v) for k, v in ds.splits.items()}
    return rep
