"""One loader per data format, behind `load_dataset(spec)`.

SPEC is a folder of class subfolders (optionally train/ val/ test/ inside), a folder with the seed's
`input.csv` + `labels.csv` [+ `input_test.csv` + `labels_test.csv`], an `.npz` with `x` and `y`
[+ `x_test`, `y_test`, `class_names`], or `builtin:shapes` / `builtin:digits` with options
(`builtin:shapes?n=2000&size=64&classes=4`).

Split folders may be named train/ + val/ (valid/, validation/, eval/) + test/, in any case; a val folder is the
validation split as it is. Images named by a labels table (`load_dataset("images/", labels="labels.csv")`, or
`load_dataset("labels.csv")` when its paths are relative to its own folder) are read by cnnlab.data.labels_table.

Image folders can also stream from disk instead (`stream=True`, or automatically when the decoded images
would not fit comfortably in memory; see cnnlab.data.stream): the splits then hold paths and labels only.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cnnlab.data import builtin, images, labels_table, public
from cnnlab.data.images import walk_files  # noqa: F401  (also imported from here)
from cnnlab.data.dataset import Dataset, Split
from cnnlab.data.stream import BadFiles, available_memory_bytes, scan_headers, should_stream, stream_split
from cnnlab.errors import CnnlabError, ConfigError, DataError

SPLIT_DIRS = ("train", "val", "test")
# Split folder names as fastai, Keras, timm and Ultralytics datasets use them (compared lower-cased).
SPLIT_FOLDER_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "eval": "val",
                      "test": "test", "testing": "test"}
DEFAULT_FOLDER_SIZE = 100  # the seed's 100x100 images


def load_dataset(
    spec: str | os.PathLike,
    *,
    image_size: int | None = None,
    image_shape: tuple[int, int, int] | list[int] | None = None,
    channels: int | None = None,
    classes: list[str] | str | None = None,
    val_split: float = 0.1,
    seed: int = 0,
    max_bad_fraction: float = 0.01,
    stream: bool | None = None,
    workers: int | None = None,
    labels: str | os.PathLike | None = None,
    file_col: str | None = None,
    label_col: str | None = None,
    label_delim: str | None = None,
    resize: str | None = None,
) -> Dataset:
    """Load any supported dataset and make sure it has train (+ val when asked) splits.

    resize: how images of another aspect ratio become image_size x image_size — squash, crop (centre) or pad
    (letterbox); None: cnnlab.config.DEFAULT_RESIZE (cnnlab.data.images.fit_image). Photos are fitted as they are
    decoded, arrays (.npz, seed CSV) of another shape when they are resized.

    labels: a labels table (CSV/TSV) naming the images of the folder `spec` and their labels; `spec` may also be
    the table itself (its paths relative to its folder). file_col / label_col choose its columns (default:
    detected), label_delim splits a label cell into several labels (see cnnlab.data.labels_table).

    stream: image folders only — True keeps paths and decodes batches from disk in `workers` processes
    (None: cnnlab.data.stream.default_workers()), False decodes everything into memory, None (default)
    streams when the decoded images would exceed cnnlab.data.stream.STREAM_MEMORY_FRACTION of available memory.
    """
    spec = str(spec)
    resize = images.check_resize(resize)
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",") if c.strip()]
    if workers is not None and workers < 0:
        raise DataError(f"workers = {workers} is invalid — expected a number of decoding processes >= 0 (0: decode in the training process)")
    table_opts = {"file_col": file_col, "label_col": label_col, "label_delim": label_delim}
    if labels is None and not spec.lower().endswith(labels_table.TABLE_SUFFIXES) and any(v is not None for v in table_opts.values()):
        given = ", ".join(k for k, v in table_opts.items() if v is not None)
        raise ConfigError(f"{given}: only a labels table has columns — pass --labels FILE.csv, or a .csv as --data")
    if labels is not None and spec.startswith("builtin:"):
        raise ConfigError(f"{spec}: --labels does not apply — a built-in dataset comes with its own labels; drop --labels")
    public_name = public.match(spec)  # cifar10, mnist, … (fetched once into the cache; a local path of that name wins)
    if public_name is not None:
        _no_stream(spec, "a public dataset", stream)
        ds = public.load(public_name, spec, classes, labels)
    elif spec.startswith("builtin:"):
        _no_stream(spec, "a built-in dataset", stream)
        ds = _load_builtin(spec)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            if path.is_symlink():  # exists() follows the link: a loop or a dangling link is not "no such file"
                raise DataError(f"{spec}: a symbolic link to {os.readlink(path)!r}, which leads nowhere (a loop, or its target is"
                                " gone) — fix the link or pass the dataset folder itself")
            raise DataError(_no_such_dataset(spec))
        if path.is_file() and (path.name == "input.csv" or (path.name in SEED_FILES and (path.parent / "input.csv").is_file())):
            path = path.parent
        if labels is not None or _is_table_file(path):
            ds = _load_labels_table(path, labels, classes, image_size or DEFAULT_FOLDER_SIZE, channels or 3, max_bad_fraction,
                                    stream, workers, **table_opts, resize=resize)
        elif path.is_file() and path.suffix.lower() == ".npz":
            _no_stream(spec, "an .npz file", stream)
            ds = _load_npz(path, classes)
        elif path.is_dir() and (path / "input.csv").is_file():
            _no_stream(spec, "a seed CSV folder", stream)
            ds = _load_seed_csv(path, image_shape, classes)
        elif path.is_dir():
            ds = _load_image_folder(path, image_size or DEFAULT_FOLDER_SIZE, channels or 3, max_bad_fraction, stream, workers, resize)
        else:
            raise DataError(
                f"{spec}: not a dataset — expected a folder of class subfolders, a folder with input.csv + labels.csv, or an .npz file"
            )
        ds.spec = spec
    if image_size is not None and ds.image_shape[:2] != (image_size, image_size):
        ds.splits = {k: Split(resize_images(v.x, image_size, resize), v.y, v.paths) for k, v in ds.splits.items()}
    if channels is not None and ds.image_shape[2] != channels:
        ds.splits = {k: Split(convert_channels(v.x, channels), v.y, v.paths) for k, v in ds.splits.items()}
    if "val" not in ds.splits and val_split > 0:
        ds = with_validation_split(ds, val_split, seed)
    ds.load_options = {
        "image_size": image_size, "image_shape": list(image_shape) if image_shape is not None else None,
        "channels": channels, "classes": list(classes) if classes is not None else None,
        "val_split": val_split, "seed": seed, "max_bad_fraction": max_bad_fraction, "stream": stream, "workers": workers,
        "labels": str(labels) if labels is not None else None, **table_opts, "resize": resize,
    }
    return ds


SEED_FILES = ("input.csv", "labels.csv", "input_test.csv", "labels_test.csv")


def _is_table_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in labels_table.TABLE_SUFFIXES


def _no_stream(spec: str, what: str, stream: bool | None) -> None:
    if stream:
        raise DataError(f"{spec}: is {what}, which loads into memory — --stream reads image folders from disk; drop --stream")


# ---------------------------------------------------------------- array helpers


def check_fits_in_memory(n: int, shape: tuple[int, int, int]) -> None:
    """Refuse, before allocating, n decoded images of `shape` that this machine's available memory cannot hold."""
    need, have = n * shape[0] * shape[1] * shape[2], available_memory_bytes()
    if have is not None and need > have:
        raise DataError(f"{n} images of {shape[0]}x{shape[1]}x{shape[2]} need {need / 2**30:.1f} GiB in memory but {have / 2**30:.1f} GiB"
                        " is available — choose a smaller --image-size")


def resize_images(x: np.ndarray, size: int, resize: str | None = None) -> np.ndarray:
    """Resize a uint8 (N, H, W, C) array to (N, size, size, C), antialiased, in chunks.

    Non-square images with resize crop or pad are fitted one by one as photos are (images.fit_image); squares, and
    squash, are resized as one batch (bilinear, antialiased)."""
    check_fits_in_memory(len(x), (size, size, x.shape[3]))
    out = np.empty((len(x), size, size, x.shape[3]), dtype=np.uint8)
    if images.check_resize(resize) != "squash" and x.shape[1] != x.shape[2]:
        for i in range(len(x)):
            im = Image.fromarray(np.ascontiguousarray(x[i, :, :, 0] if x.shape[3] == 1 else x[i]), "L" if x.shape[3] == 1 else "RGB")
            out[i] = np.asarray(images.fit_image(im, (size, size), resize), dtype=np.uint8).reshape(size, size, x.shape[3])
        return out
    for i in range(0, len(x), 256):
        t = torch.from_numpy(np.ascontiguousarray(x[i : i + 256])).permute(0, 3, 1, 2).float()
        r = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[i : i + 256] = r.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def convert_channels(x: np.ndarray, channels: int) -> np.ndarray:
    if channels == 3 and x.shape[3] == 1:
        return np.repeat(x, 3, axis=3)
    if channels == 1 and x.shape[3] == 3:  # ITU-R 601 luma, as Pillow's "L"
        grey = x.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(np.rint(grey), 0, 255).astype(np.uint8)[..., None]
    raise DataError(f"cannot convert {x.shape[3]}-channel images to {channels} channels")


def with_validation_split(ds: Dataset, fraction: float, seed: int) -> Dataset:
    """Hold out a stratified `fraction` of train as val (deterministic for a seed). Multi-label data is split at random:
    a stratified split of label sets needs every combination of labels twice, which few multi-label tables have."""
    from sklearn.model_selection import train_test_split

    train = ds.splits["train"]
    n_val = int(round(len(train) * fraction))
    if n_val >= 1 and len(train) - n_val < 1:  # asked for, but it would take every training image: say so, train without
        note = (f"no validation split: --val-split {fraction:g} of {len(train)} training images would leave none to train on;"
                " training without validation (lower --val-split to hold some out)")
        return dataclasses.replace(ds, load_options=dict(ds.load_options), ignored_files=list(ds.ignored_files), notes=[*ds.notes, note])
    if n_val < 1:
        return ds
    notes = list(ds.notes)
    if np.ndim(train.y) == 2:
        stratify = None
        notes.append(f"validation split: {n_val} training images drawn at random (multi-label data is not stratified)")
    else:
        counts = np.bincount(train.y)
        stratify = train.y if counts[counts > 0].min() >= 2 and n_val >= len(counts) else None
    idx_train, idx_val = train_test_split(np.arange(len(train)), test_size=n_val, random_state=seed, stratify=stratify)
    splits = {"train": train.subset(np.sort(idx_train)), "val": train.subset(np.sort(idx_val))}
    splits.update({k: v for k, v in ds.splits.items() if k != "train"})
    return dataclasses.replace(ds, splits=splits, load_options=dict(ds.load_options), ignored_files=list(ds.ignored_files),
                               notes=notes)  # bad_files stays the same list: streamed splits add to it


def _labels_to_ids(labels: np.ndarray, class_names: list[str] | None, where: str) -> tuple[np.ndarray, list[str]]:
    """Map numeric labels (0..K-1) or text labels (class names) to int64 ids and class names."""
    if labels.dtype.kind in "iu":
        if labels.min(initial=0) < 0:
            raise DataError(f"{where}: label {labels.min()} is negative — labels must be 0..K-1 or class names")
        k = int(labels.max(initial=0)) + 1
        if class_names is None:
            class_names = [str(i) for i in range(max(k, 2))]
        elif k > len(class_names):
            raise DataError(
                f"{where}: label {k - 1} needs at least {k} classes but --classes names {len(class_names)} — add the missing class names"
            )
        return labels.astype(np.int64), list(class_names)
    names = [str(v) for v in labels]
    if class_names is None:
        class_names = sorted(set(names))
    lookup = {c: i for i, c in enumerate(class_names)}
    unknown = sorted(set(names) - set(lookup))
    if unknown:
        raise DataError(f"{where}: label {unknown[0]!r} is not one of the classes {class_names} — fix the label or --classes")
    return np.array([lookup[n] for n in names], dtype=np.int64), list(class_names)


def _check_classes(ds: Dataset) -> Dataset:
    if ds.num_classes < 2:
        raise DataError(f"{ds.spec}: found {ds.num_classes} class — a classifier needs at least 2 classes")
    multi = ds.multi_label  # (the labels-table loader checks multi-hot labels itself)
    present = np.unique(np.asarray(ds.splits["train"].y)) if len(ds.splits["train"]) and not multi else np.array([], dtype=np.int64)
    if len(present) == 1:  # e.g. a seed CSV whose labels are all 0: the second class would be invented, never seen
        raise DataError(f"{ds.spec}: every training image has the label {ds.class_names[int(present[0])]!r} — a classifier needs"
                        " images of at least 2 classes; check the labels file")
    if len(ds.splits["train"]) == 0:
        raise DataError(f"{ds.spec}: the train split holds no images")
    return ds


# ---------------------------------------------------------------- formats


def _load_seed_csv(folder: Path, image_shape, classes) -> Dataset:
    from cnnlab.data import seed_csv  # noqa: PLC0415  (numpy-only reader, imported when needed)

    if classes is None and (folder / "classes.txt").is_file():
        classes = [ln.strip() for ln in (folder / "classes.txt").read_text(encoding="utf-8").splitlines() if ln.strip()]
    pairs = [("train", "input.csv", "labels.csv"), ("test", "input_test.csv", "labels_test.csv")]
    raw: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    shape = tuple(image_shape) if image_shape is not None else None
    for split, x_name, y_name in pairs:
        x_path, y_path = folder / x_name, folder / y_name
        if split == "test" and not x_path.exists() and not y_path.exists():
            continue
        for p in (x_path, y_path):
            if not p.is_file():
                other = x_name if p == y_path else y_name
                raise DataError(f"{p}: missing — {other} needs its partner {p.name} in the same folder")
        pixels = seed_csv.load_pixel_csv_cached(x_path)
        labels = seed_csv.read_label_csv(y_path, expected_rows=len(pixels), data_file=x_name)
        h, w, c = seed_csv.infer_image_shape(pixels.shape[1], shape, path=x_name)
        shape = (h, w, c)
        raw[split] = (np.asarray(pixels).reshape(-1, h, w, c), labels)
    all_labels = np.concatenate([y for _, y in raw.values()])
    _, class_names = _labels_to_ids(all_labels, classes, str(folder / "labels.csv"))
    splits = {}
    for split, (x, y) in raw.items():
        ids, _ = _labels_to_ids(y, class_names, str(folder / dict((s, l) for s, _, l in pairs)[split]))
        splits[split] = Split(np.array(x, order="C"), ids)  # copy out of the read-only cache mmap
    return _check_classes(Dataset(str(folder), class_names, splits, source_format="seed-csv"))


def _load_npz(path: Path, classes) -> Dataset:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise DataError(f"{path.name}: cannot read it ({e.strerror or e.__class__.__name__})") from None
    if magic != b"PK\x03\x04":  # np.load reads anything else as a pickle, and would say so ("cannot read without pickle")
        raise DataError(f"{path.name}: not a readable .npz file (not a zip archive) — save with np.savez(path, x=images, y=labels)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        raise DataError(f"{path.name}: cannot read without pickle ({e}) — save plain arrays with np.savez") from None
    except Exception as e:  # zipfile/OSError: not an npz
        raise DataError(f"{path.name}: not a readable .npz file ({e.__class__.__name__}) — save with np.savez(x=..., y=...)") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{path.name}: no array {key!r} (found {', '.join(arrays) or 'none'}) — save with np.savez(path, x=images, y=labels)")
    if classes is None and "class_names" in arrays:
        classes = [str(c) for c in arrays["class_names"].tolist()]
    splits = {}
    class_names = None
    for split, xk, yk in (("train", "x", "y"), ("val", "x_val", "y_val"), ("test", "x_test", "y_test")):
        if xk not in arrays:
            continue
        x, y = arrays[xk], arrays.get(yk)
        if y is None:
            raise DataError(f"{path.name}: {xk!r} has no labels {yk!r}")
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.shape[3] not in (1, 3):
            raise DataError(f"{path.name}: {xk!r} has shape {x.shape} — expected (N, H, W) or (N, H, W, C) with C 1 or 3")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{path.name}: {yk!r} has shape {y.shape} but {xk!r} holds {len(x)} images — one label per image")
        splits[split] = (_to_uint8(x, f"{path.name}: {xk!r}"), y)
    all_y = np.concatenate([y for _, y in splits.values()])
    if all_y.dtype.kind == "f":
        if not np.all(np.isfinite(all_y)) or not np.all(all_y == np.round(all_y)):
            raise DataError(f"{path.name}: labels must be whole numbers or class names")
        all_y = all_y.astype(np.int64)
        splits = {k: (x, y.astype(np.int64)) for k, (x, y) in splits.items()}
    _, class_names = _labels_to_ids(all_y, classes, path.name)
    out = {k: Split(x, _labels_to_ids(y, class_names, path.name)[0]) for k, (x, y) in splits.items()}
    return _check_classes(Dataset(str(path), class_names, out, source_format="npz"))


def _to_uint8(x: np.ndarray, where: str) -> np.ndarray:
    """Accept uint8 0-255 or floats in [0, 1] (scaled) or [0, 255]."""
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype.kind not in "iuf":
        raise DataError(f"{where} has dtype {x.dtype} — images must be numbers")
    xf = x.astype(np.float32)
    if not np.all(np.isfinite(xf)):
        raise DataError(f"{where} contains NaN or inf — clean the data")
    lo, hi = float(xf.min(initial=0)), float(xf.max(initial=0))
    if lo < 0 or hi > 255:
        raise DataError(f"{where} has values in [{lo:g}, {hi:g}] — expected 0-255 (or 0-1 floats)")
    if x.dtype.kind == "f" and hi <= 1.0:
        xf = xf * 255.0
    return np.clip(np.rint(xf), 0, 255).astype(np.uint8)


def image_folder_counts(spec: str) -> tuple[int, int] | None:
    """(training images, classes) of an image-folder dataset from a directory listing (nothing decoded);
    None when `spec` is another kind of dataset. Before a val split is taken off."""
    if spec.startswith("builtin:"):
        return None
    path = Path(spec).expanduser()
    if not path.is_dir() or (path / "input.csv").is_file():
        return None
    try:
        root = find_split_folders(path)[0].get("train", path)
        found, _ = _scan_class_folders(root)
    except (OSError, DataError):
        return None
    if len(found) < 2 or not all(found.values()):
        return None  # not a usable dataset: loading it gives the precise error
    return sum(len(v) for v in found.values()), len(found)


@dataclasses.dataclass(frozen=True)
class PhotoCounts:
    """What the default recipe plans with before decoding anything: a dataset of image files of any sizes."""

    n: int  # training images (before a random val split is taken off)
    classes: int
    n_val: int  # images of an explicit val split (a val/ folder, a split column); 0: split off train
    n_test: int


def photo_counts(spec: str, labels: str | None = None, file_col: str | None = None, label_col: str | None = None,
                 label_delim: str | None = None) -> PhotoCounts | None:
    """Counts of an image-folder or labels-table dataset from a listing or the table (no image decoded); None for
    fixed-size data (seed CSV, .npz, built-ins) or a dataset that loading will refuse (it gives the precise error)."""
    if labels is not None or spec.lower().endswith(labels_table.TABLE_SUFFIXES):
        try:
            table = labels_table.read_labels_table(labels if labels is not None else spec, file_col=file_col, label_col=label_col,
                                                   label_delim=label_delim)
        except (OSError, CnnlabError):
            return None
        by_split = {name: [r for r in table.rows if (r.split or "train") == name] for name in ("train", "val", "test")}
        k = len({lab for r in by_split["train"] for lab in r.labels})
        return PhotoCounts(len(by_split["train"]), k, len(by_split["val"]), len(by_split["test"])) if k >= 2 else None
    counts = image_folder_counts(spec)
    if counts is None:
        return None
    dirs = find_split_folders(Path(spec).expanduser())[0]
    extra = {name: (image_folder_counts(str(dirs[name])) or (0, 0))[0] if name in dirs else 0 for name in ("val", "test")}
    return PhotoCounts(counts[0], counts[1], extra["val"], extra["test"])


_NUMBERED = re.compile(r"[\s._-]*\(?\d+\)?$")  # the numbering after a class name: ".123", "_10", " (2)"


def class_from_file_name(name: str) -> str | None:
    """The class a numbered file name gives: 'cat.123.jpg' -> 'cat' (Kaggle's dogs-vs-cats), 'american_bulldog_10.png'
    -> 'american_bulldog' (Oxford pets), 'dog (2).jpg' -> 'dog'; None for a name without a class (one with a
    letter) before its number: '0001.jpg', '12.5.png', 'cat.jpg'."""
    stem = Path(name).stem
    label = _NUMBERED.sub("", stem)
    return label if label != stem and re.search(r"[^\W\d_]", label) else None  # a class name has a letter


def _scan_class_folders(root: Path, ignored: list[str] | None = None) -> tuple[dict[str, list[Path]], bool]:
    """({class: its image files}, whether the classes came from file names).

    Classes are root's subfolders; a root with no subfolders but numbered image files (cat.0.jpg, dog.1.jpg)
    takes its classes from the file names. Files that are not images by their extension go to `ignored`
    (operating-system files such as .DS_Store and Thumbs.db do not)."""
    def keep(p: Path) -> bool:
        if not (p.is_file() or p.is_symlink()):  # a broken or looping symlink is reported, not silently dropped
            return False
        if images.is_image_file(p):
            return True
        if ignored is not None and not images.is_os_file(p.name):
            ignored.append(str(p))
        return False

    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes:
        return {d.name: [p for p in walk_files(d) if keep(p)] for d in classes}, False
    found: dict[str, list[Path]] = {}
    for p in sorted(root.iterdir()):
        if keep(p):
            name = class_from_file_name(p.name)
            if name is None:
                raise DataError(f"{p}: no class subfolders in {root}, and this file name does not start with its class"
                                " — name the files <class>.<number> (cat.0.jpg, dog.0.jpg) or put them in one folder per class")
            found.setdefault(name, []).append(p)
    return dict(sorted(found.items())), bool(found)


def find_split_folders(root: Path) -> tuple[dict[str, Path], list[Path]]:
    """({split: folder}, what lies beside them unread) when `root` holds split folders, else ({}, []): `root` holds classes.

    Split folders are train/ with val/ (valid/, validation/, eval/) and test/, in any case (SPLIT_FOLDER_NAMES). Without
    train/, a val/ or test/ folder is an error, while valid/, validation/ or eval/ beside other folders are classes
    (a dataset of 'valid' and 'invalid' images). Folders and images beside the split folders are returned so that
    loading names them instead of leaving them out in silence."""
    entries = sorted(e for e in root.iterdir() if not e.name.startswith("."))
    found: dict[str, Path] = {}
    for e in entries:
        split = SPLIT_FOLDER_NAMES.get(e.name.lower()) if e.is_dir() else None
        if split is None:
            continue
        if split in found:
            raise DataError(f"{root}: {found[split].name}/ and {e.name}/ would both be the {split} split — merge them or rename one")
        found[split] = e
    if not found:
        return {}, []
    if "train" not in found:
        classes_beside = any(e.is_dir() and e not in found.values() for e in entries)
        if classes_beside and not any(p.name.lower() in ("val", "test") for p in found.values()):
            return {}, []
        raise DataError(f"{root}: has {', '.join(p.name + '/' for p in found.values())} but no train/ — add train/<class>/ folders")
    beside = [e for e in entries if e not in found.values() and (e.is_dir() or images.is_image_file(e))]
    return found, beside


def no_classes_error(folder: Path, message: str) -> DataError:
    """The error for a folder whose images have no classes: it names a labels table that names them, when there is one."""
    table = labels_table.find_naming_table(folder)
    if table is None:
        return DataError(message)
    return DataError(f"{folder}: no class subfolders, but {table} names its images — pass that table with --labels {table}")


def scan_image_folder(root: Path) -> tuple[dict[str, Path], list[Path], dict[str, dict[str, list[Path]]], bool, list[str], list[str]]:
    """The layout of an image-folder dataset and the rules training holds it to — the one place they live, so
    `cnnlab data check` says what `cnnlab train` would: (split folders, what lies beside them, {split: {class:
    files}}, classes from file names?, class names, files left out as not images). Raises the DataError a user sees."""
    split_roots, beside = find_split_folders(root)
    if not split_roots:
        split_roots = {"train": root}
    ignored: list[str] = []
    scanned, by_name = {}, False
    for split, r in split_roots.items():
        try:
            scanned[split], named = _scan_class_folders(r, ignored)
        except DataError as e:
            raise no_classes_error(r, str(e)) from None
        by_name = by_name or named
    class_names = sorted(scanned["train"])
    train_root = split_roots["train"]
    if not class_names:
        raise no_classes_error(train_root, f"{train_root}: no class subfolders — put images in one folder per class, e.g. cats/ and dogs/")
    if not by_name and len(class_names) == 1:  # one subfolder: the images' classes may be in a table
        raise no_classes_error(train_root, f"{train_root}: found 1 class ({class_names[0]!r}) — a classifier needs at least 2 classes")
    if by_name and len(class_names) < 2:
        raise no_classes_error(train_root, f"{train_root}: no class subfolders, and the file names give one class ({class_names[0]!r})"
                                " — put images in one folder per class, e.g. cats/ and dogs/, or name them cat.0.jpg, dog.0.jpg")
    for split, found in scanned.items():
        for name, files in found.items():
            if not files:
                where = split_roots[split] / name
                raise DataError(f"{where}: class folder has no images (jpg, png, webp, heic, avif, …) — add images or remove the folder; `cnnlab data check` lists what it ignored")
            if name not in class_names:
                raise DataError(f"{split_roots[split] / name}: class {name!r} is not in {train_root.name}/ — classes: {', '.join(class_names)}")
    return split_roots, beside, scanned, by_name, class_names, ignored


def _load_image_folder(root: Path, size: int, channels: int, max_bad_fraction: float, stream: bool | None = False,
                       workers: int | None = None, resize: str | None = None) -> Dataset:
    split_roots, beside, scanned, by_name, class_names, ignored = scan_image_folder(root)
    train_root = split_roots["train"]
    notes = []
    if by_name:
        counts = ", ".join(f"{name} {len(files)}" for name, files in scanned["train"].items())
        notes.append(f"classes from the file names (no class subfolders): {counts}")
        table = labels_table.find_naming_table(train_root)
        if table is not None:
            notes.append(f"{table} names these images too — to take their labels from it instead, pass --labels {table}")
    if beside:
        names = [e.name + ("/" if e.is_dir() else "") for e in beside]
        notes.append(f"warning: {root}: left out {labels_table.names_text(names)} beside the split folders — only train/,"
                     " val/ (or valid/, validation/, eval/) and test/ are read")
    if ignored:
        exts = Counter(Path(p).suffix.lower() or "(no extension)" for p in ignored)
        kinds = ", ".join(f"{n} {e}" for e, n in exts.most_common(4)) + (", …" if len(exts) > 4 else "")
        notes.append(f"left out {len(ignored)} file(s) that are not images ({kinds}) — `cnnlab data check {root} --show-ignored` lists them")
    groups = {}
    for split, found in scanned.items():
        paths = [p for name in class_names for p in found.get(name, [])]
        labels = np.array([i for i, name in enumerate(class_names) for _ in found.get(name, [])], dtype=np.int64)
        groups[split] = (paths, labels)
    splits, bad = decode_splits(groups, size, channels, max_bad_fraction, stream, workers, resize)
    return _check_classes(Dataset(str(root), class_names, splits, bad, source_format="image-folder", ignored_files=ignored, notes=notes))


def decode_splits(groups: dict[str, tuple[list[Path], np.ndarray]], size: int, channels: int, max_bad_fraction: float,
                  stream: bool | None, workers: int | None, resize: str | None = None) -> tuple[dict[str, Split], list[tuple[str, str]]]:
    """({split: Split}, bad files) from {split: (image paths, int64 labels)}: decoded into memory at size x size (fitted as
    `resize` says: images.fit_image), or kept as
    paths to decode batch by batch (stream: True, or None and too big for memory). Unreadable files are left out and
    listed; more than max_bad_fraction of them is a DataError."""
    splits, bad = {}, []
    total = sum(len(paths) for paths, _ in groups.values())
    streamed = should_stream(total, (size, size, channels), stream)
    bad_log = BadFiles(bad, total, max_bad_fraction)  # shares the `bad` list, which becomes Dataset.bad_files
    for split, (paths, labels) in groups.items():
        if streamed:  # headers only now; pixels are decoded batch by batch while training
            ok, bad_here = scan_headers(paths)
            bad.extend(bad_here)
            splits[split] = stream_split([paths[i] for i in ok], labels[np.asarray(ok, dtype=np.int64)], (size, size), channels, bad_log, workers,
                                         resize)
            continue
        x, ok, bad_here = images.load_images(paths, (size, size), channels=channels, resize=resize)
        bad.extend(bad_here)
        ok = np.asarray(ok, dtype=np.int64)
        splits[split] = Split(x, labels[ok], [str(paths[i]) for i in ok])
    if bad and len(bad) / max(total, 1) > max_bad_fraction:
        path, reason = bad[0]
        raise DataError(
            f"{len(bad)} of {total} images are unreadable (more than max_bad_fraction={max_bad_fraction:g}), first: {path}: {reason}"
            " — remove or fix them, or raise --max-bad-fraction"
        )
    return splits, bad


def _load_labels_table(spec_path: Path, labels: str | os.PathLike | None, classes: list[str] | None, size: int, channels: int,
                       max_bad_fraction: float, stream: bool | None, workers: int | None, *, file_col: str | None,
                       label_col: str | None, label_delim: str | None, resize: str | None = None) -> Dataset:
    """Images named by a labels table: `spec_path` is the image folder (with `labels`) or the table (paths relative to it)."""
    if labels is None:
        root, table_path = spec_path.parent, spec_path
    else:
        if not spec_path.is_dir():
            raise ConfigError(f"{spec_path}: with --labels, --data is the folder of the images the table names — pass that folder")
        root, table_path = spec_path, Path(labels).expanduser()
        if not table_path.exists() and not table_path.is_absolute() and (root / table_path).is_file():
            table_path = root / table_path  # labels.csv inside the image folder, named relative to it (as fastai's from_csv)
    table = labels_table.read_labels_table(table_path, file_col=file_col, label_col=label_col, label_delim=label_delim)
    match = labels_table.match_files(table, root, base=table_path.parent)
    found = match.found
    split_of = _table_splits(table, root, found)
    class_names = _table_class_names(table, [r for r, _ in found], classes)
    ids = {c: i for i, c in enumerate(class_names)}
    # integer labels 0..K-1 naming --classes by position
    numeric = not set(ids).issuperset(lb for r, _ in found for lb in r.labels)
    trained = {lb for (r, _), s in zip(found, split_of) if s == "train" for lb in r.labels}
    for (r, _), s in zip(found, split_of):
        for lb in r.labels:
            if s != "train" and lb not in trained:
                raise DataError(f"{table.path} line {r.line}: class {lb!r} is in the {s} rows but in no train row"
                                " — add train images of it or remove its rows")
    groups: dict[str, tuple[list[Path], list]] = {}
    for (r, path), s in zip(found, split_of):
        paths, labels_ = groups.setdefault(s, ([], []))
        paths.append(path)
        labels_.append([int(lb) if numeric else ids[lb] for lb in r.labels])
    if "train" not in groups:
        raise DataError(f"{table.path}: no row is in the train split ({table.split_col} marks every row {next(iter(groups))})"
                        " — mark the training rows")
    order = [s for s in ("train", "val", "test") if s in groups]
    as_y = _multi_hot if table.multi_label else (lambda ids_, _k: np.array([i[0] for i in ids_], dtype=np.int64))
    y_of = {s: as_y(groups[s][1], len(class_names)) for s in order}
    if table.multi_label and not y_of["train"].any():
        raise DataError(f"{table.path}: no train row has a label — a multi-label classifier needs training images with labels")
    splits, bad = decode_splits({s: (groups[s][0], y_of[s]) for s in order}, size, channels, max_bad_fraction, stream, workers, resize)
    notes = _table_notes(table, root, match, split_of)
    if table.multi_label:
        notes.append(_multi_label_note(table, class_names, y_of["train"]))
    missing = [(str(where), f"named on line {r.line} of {table.name}, file not found") for r, where in match.missing]
    ds = Dataset(str(root), class_names, splits, bad, source_format="labels-table", notes=notes, missing_files=missing,
                 unlabelled_files=[str(p) for p in match.unlabelled])
    return _check_classes(ds)


def _table_splits(table: labels_table.LabelsTable, root: Path, found) -> list[str]:
    """Each found row's split: the table's split column; else the split folder its file is in, when every file is in
    train/ val/ test/ folders (SPLIT_FOLDER_NAMES) and some in train/; else train (the usual val split follows)."""
    if table.split_col is not None:
        return [r.split for r, _ in found]
    tops = [SPLIT_FOLDER_NAMES.get(p.relative_to(root).parts[0].lower()) if len(p.relative_to(root).parts) > 1 else None
            for _, p in found]
    if all(tops) and "train" in tops:
        return tops  # type: ignore[return-value]
    return ["train"] * len(found)


def _multi_hot(ids: list[list[int]], k: int) -> np.ndarray:
    """Multi-hot uint8 (N, k) rows from each image's class ids (none: a row of zeros)."""
    y = np.zeros((len(ids), k), dtype=np.uint8)
    for i, row in enumerate(ids):
        y[i, row] = 1
    return y


def _multi_label_note(table: labels_table.LabelsTable, class_names: list[str], y_train: np.ndarray) -> str:
    """What a multi-label table gave: how many labels per image, images without one, classes never seen in training."""
    per_image = y_train.sum(1)
    unseen = [c for c, n in zip(class_names, y_train.sum(0)) if n == 0]
    how = "one 0/1 column per class" if table.class_cols is not None else f"label_delim {table.label_delim!r}"
    return (f"multi-label ({how}): {len(class_names)} classes, {per_image.mean():.2f} labels per training image on average,"
            f" {int((per_image == 0).sum())} with none; one sigmoid output per class, binary cross-entropy"
            + (f"; warning: no training image has {labels_table.names_text(unseen)} — the model will not learn to predict it"
               if unseen else ""))


def _table_class_names(table: labels_table.LabelsTable, rows: list[labels_table.TableRow], classes: list[str] | None) -> list[str]:
    """Class names: `classes` when given (labels are those names, or integers 0..K-1 by position), else the labels sorted
    (as numbers when all are integers, so class 10 comes after class 9). One 0/1 column per class: the columns, in
    header order (`classes` may reorder them)."""
    if table.class_cols is not None:
        if classes is not None and sorted(classes) != sorted(table.class_cols):
            raise DataError(f"{table.path}: classes {list(classes)} are not the class columns {table.class_cols} — drop --classes"
                            " (the columns name the classes) or list the same names")
        return list(classes) if classes is not None else list(table.class_cols)
    pairs = [(r, lb) for r in rows for lb in r.labels]
    labels = [lb for _, lb in pairs]
    integer = all(re.fullmatch(r"[+-]?\d+", v) for v in labels)
    if classes is not None:
        known = set(classes)
        if integer and not known.issuperset(labels):  # integer labels name the classes by position
            bad = next(((r, lb) for r, lb in pairs if not 0 <= int(lb) < len(classes)), None)
        else:
            bad = next(((r, lb) for r, lb in pairs if lb not in known), None)
        if bad is not None:
            raise DataError(f"{table.path} line {bad[0].line}: label {bad[1]!r} is not one of the classes {list(classes)}"
                            + (f" (nor 0..{len(classes) - 1})" if integer else "") + " — fix the label or --classes")
        return list(classes)
    distinct = set(labels)
    return sorted(distinct, key=lambda v: (int(v), v)) if integer else sorted(distinct)


def _table_notes(table: labels_table.LabelsTable, root: Path, match: labels_table.TableMatch, split_of: list[str]) -> list[str]:
    notes = [f"labels from {table.path} (file column {table.file_col!r}, {table.label_source}"
             + (f", splits from column {table.split_col!r}" if table.split_col else "") + ")"]
    if table.split_col is None and set(split_of) != {"train"}:
        counts = Counter(split_of)
        notes.append("splits from the folders the files are in: " + ", ".join(f"{s} {counts[s]}" for s in ("train", "val", "test") if s in counts))
    if match.missing:
        names = [f"line {r.line} {r.file}" for r, _ in match.missing]
        notes.append(f"warning: left out {len(match.missing)} row(s) of {table.name} whose file is not in {root}: {labels_table.names_text(names)}")
    if match.unlabelled:
        names = [p.relative_to(root).as_posix() for p in match.unlabelled]
        notes.append(f"warning: left out {len(names)} image(s) in {root} that no row of {table.name} names: {labels_table.names_text(names)}")
    repeated = table.repeated + match.repeated
    if repeated:
        pairs = [f"line {a} = line {b}" for a, b in sorted(repeated)]
        notes.append(f"{table.name}: {len(repeated)} row(s) repeat an earlier row for the same file, used once: {labels_table.names_text(pairs)}")
    return notes


def _no_such_dataset(spec: str) -> str:
    """Why --data SPEC names nothing here, and what it takes instead (a URL is never fetched; a near miss of a name)."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", spec):
        return (f"{spec}: --data takes local files and folders, never URLs — download the dataset and pass its folder"
                f" (public datasets by name: {', '.join(public.CATALOGUE)})")
    import difflib

    close = difflib.get_close_matches(spec.lower(), [*public.CATALOGUE, "builtin:shapes", "builtin:digits"], n=1, cutoff=0.8)
    return (f"{spec}: no such file or folder{f' (did you mean {close[0]}?)' if close else ''} — pass a dataset folder, an .npz"
            f" file, builtin:shapes or a public dataset name ({', '.join(public.CATALOGUE)})")


def _parse_options(spec: str, allowed: dict[str, type]) -> dict:
    name, _, query = spec.partition("?")
    opts = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in allowed:
            raise DataError(f"{spec}: unknown option {key!r} — {name} takes {', '.join(allowed)}")
        try:
            opts[key] = allowed[key](value)
        except ValueError:
            kind = {int: "a whole number", float: "a number"}.get(allowed[key], f"of type {allowed[key].__name__}")
            raise DataError(f"{spec}: option {key}={value!r} must be {kind}") from None
    return opts


def _load_builtin(spec: str) -> Dataset:
    name = spec.partition("?")[0]
    if name == "builtin:shapes":
        opts = _parse_options(spec, {"n": int, "size": int, "classes": int, "seed": int, "noise": float})
        n = opts.pop("n", 1500)
        if n < 10 or not 2 <= opts.get("classes", 4) <= 6 or opts.get("size", 64) < 8:
            raise DataError(f"{spec}: needs n >= 10, 2 <= classes <= 6 and size >= 8")
        x, y, names = builtin.make_shapes(n=n, **opts)
        fmt = "builtin-shapes"
    elif name == "builtin:digits":
        opts = _parse_options(spec, {"size": int})
        if opts.get("size", 32) < 8:
            raise DataError(f"{spec}: size must be >= 8")
        x, y, names = builtin.load_digits_images(**opts)
        fmt = "builtin-digits"
    else:
        raise DataError(f"unknown built-in dataset {name!r} — choose builtin:shapes or builtin:digits")
    # A fixed 20% test split (independent of the run's seed) so every run is scored on the same images.
    from sklearn.model_selection import train_test_split

    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=y)
    full = Split(x, y)
    splits = {"train": full.subset(np.sort(idx_train)), "test": full.subset(np.sort(idx_test))}
    return Dataset(spec, names, splits, source_format=fmt)
