"""Write any dataset in the seed's CSV layout, as image folders (one subfolder per class), or as a labels table
(images/ + labels.csv, Kaggle's layout).

CSV layout: input.csv / labels.csv (train, with val merged in: the seed format has no val file),
input_test.csv / labels_test.csv when there is a test split, and classes.txt with the class names.
Output is built in a temporary folder next to OUT and renamed into place, so an interrupted
conversion never leaves a folder that looks complete.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlab.data import seed_csv
from cnnlab.data.dataset import Dataset
from cnnlab.errors import CnnlabError, ConfigError


def convert(ds: Dataset, out: str | Path, to: str, overwrite: bool = False) -> dict[str, int]:
    out = Path(out)
    if ds.multi_label and to != "table":  # a class folder or a labels.csv number holds one class per image
        raise ConfigError(f"{ds.spec}: has several labels per image — --to {to} holds one class per image; use --to table"
                          " (one 0/1 column per class)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise CnnlabError(f"{out}: {'is a file' if not out.is_dir() else 'already exists and is not empty'} — choose another OUT"
                              " or pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        written = {"csv": _write_csv, "folder": _write_folders, "table": _write_table}[to](ds, tmp)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written


def _write_csv(ds: Dataset, folder: Path) -> dict[str, int]:
    train_parts = [ds.splits[k] for k in ("train", "val") if k in ds.splits]
    x = np.concatenate([s.x for s in train_parts])
    y = np.concatenate([s.y for s in train_parts])
    seed_csv.write_pixel_csv(folder / "input.csv", x.reshape(len(x), -1))
    seed_csv.write_label_csv(folder / "labels.csv", y)
    written = {"train": len(y)}
    if "test" in ds.splits:
        t = ds.splits["test"]
        seed_csv.write_pixel_csv(folder / "input_test.csv", t.x.reshape(len(t.x), -1))
        seed_csv.write_label_csv(folder / "labels_test.csv", t.y)
        written["test"] = len(t.y)
    (folder / "classes.txt").write_text("".join(f"{c}\n" for c in ds.class_names), encoding="utf-8")
    return written


def _write_folders(ds: Dataset, folder: Path) -> dict[str, int]:
    written = {}
    for split, s in ds.splits.items():
        for c in ds.class_names:
            (folder / split / _safe_name(c)).mkdir(parents=True, exist_ok=True)
        for i, (img, label) in enumerate(zip(s.x, s.y)):
            arr = img[:, :, 0] if img.shape[2] == 1 else img
            Image.fromarray(arr).save(folder / split / _safe_name(ds.class_names[label]) / f"{i:06d}.png")
        written[split] = len(s)
    return written


def _write_table(ds: Dataset, folder: Path) -> dict[str, int]:
    """Kaggle's layout: every image in images/, and labels.csv (file, label, split) naming them — what
    `--data OUT/labels.csv` (or `--data OUT/images --labels OUT/labels.csv`) reads back."""
    import csv

    (folder / "images").mkdir()
    written = {}
    multi = ds.multi_label  # multi-label: one 0/1 column per class (labels_table reads them back)
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as f:
        table = csv.writer(f)
        table.writerow(["file", *(ds.class_names if multi else ["label"]), "split"])
        for split, s in ds.splits.items():
            for i, (img, label) in enumerate(zip(s.x, s.y)):
                name = f"images/{split}_{i:06d}.png"
                Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).save(folder / name)
                table.writerow([name, *([int(v) for v in label] if multi else [ds.class_names[label]]), split])
            written[split] = len(s)
    return written


def _safe_name(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "-_. " else "_" for ch in name).strip(" .")
    return cleaned or "class"
