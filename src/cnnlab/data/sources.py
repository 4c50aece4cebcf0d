"""One loader per data format, behind `load_dataset(spec)`.

SPEC is a folder of class subfolders (optionally train/ val/ test/ inside), a folder with the seed's
`input.csv` + `labels.csv` [+ `input_test.csv` + `labels_test.csv`], an `.npz` with `x` and `y`
[+ `x_test`, `y_test`, `class_names`], or `builtin:shapes` / `builtin:digits` with options
(`builtin:shapes?n=2000&size=64&classes=4`).

Image folders can also stream from disk instead (`stream=True`, or automatically when the decoded images
would not fit comfortably in memory; see cnnlab.data.stream): the splits then hold paths and labels only.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.data import builtin, images
from cnnlab.data.dataset import Dataset, Split
from cnnlab.data.stream import BadFiles, scan_headers, should_stream, stream_split
from cnnlab.errors import DataError

SPLIT_DIRS = ("train", "val", "test")
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
) -> Dataset:
    """Load any supported dataset and make sure it has train (+ val when asked) splits.

    stream: image folders only — True keeps paths and decodes batches from disk in `workers` processes
    (None: cnnlab.data.stream.default_workers()), False decodes everything into memory, None (default)
    streams when the decoded images would exceed cnnlab.data.stream.STREAM_MEMORY_FRACTION of available memory.
    """
    spec = str(spec)
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",") if c.strip()]
    if workers is not None and workers < 0:
        raise DataError(f"workers = {workers} is invalid — expected a number of decoding processes >= 0 (0: decode in the training process)")
    if spec.startswith("builtin:"):
        _no_stream(spec, "a built-in dataset", stream)
        ds = _load_builtin(spec)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise DataError(f"{spec}: no such file or folder — pass a dataset folder, an .npz file or builtin:shapes")
        if path.is_file() and path.name == "input.csv":
            path = path.parent
        if path.is_file() and path.suffix.lower() == ".npz":
            _no_stream(spec, "an .npz file", stream)
            ds = _load_npz(path, classes)
        elif path.is_dir() and (path / "input.csv").is_file():
            _no_stream(spec, "a seed CSV folder", stream)
            ds = _load_seed_csv(path, image_shape, classes)
        elif path.is_dir():
            ds = _load_image_folder(path, image_size or DEFAULT_FOLDER_SIZE, channels or 3, max_bad_fraction, stream, workers)
        else:
            raise DataError(
                f"{spec}: not a dataset — expected a folder of class subfolders, a folder with input.csv + labels.csv, or an .npz file"
            )
        ds.spec = spec
    if image_size is not None and ds.image_shape[:2] != (image_size, image_size):
        ds.splits = {k: Split(resize_images(v.x, image_size), v.y, v.paths) for k, v in ds.splits.items()}
    if channels is not None and ds.image_shape[2] != channels:
        ds.splits = {k: Split(convert_channels(v.x, channels), v.y, v.paths) for k, v in ds.splits.items()}
    if "val" not in ds.splits and val_split > 0:
        ds = with_validation_split(ds, val_split, seed)
    ds.load_options = {
        "image_size": image_size, "image_shape": list(image_shape) if image_shape is not None else None,
        "channels": channels, "classes": list(classes) if classes is not None else None,
        "val_split": val_split, "seed": seed, "max_bad_fraction": max_bad_fraction, "stream": stream, "workers": workers,
    }
    return ds


def _no_stream(spec: str, what: str, stream: bool | None) -> None:
    if stream:
        raise DataError(f"{spec}: is {what}, which loads into memory — --stream reads image folders from disk; drop --stream")


# ---------------------------------------------------------------- array helpers


def resize_images(x: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 (N, H, W, C) array to (N, size, size, C), antialiased, in chunks."""
    out = np.empty((len(x), size, size, x.shape[3]), dtype=np.uint8)
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
    """Hold out a stratified `fraction` of train as val (deterministic for a seed)."""
    from sklearn.model_selection import train_test_split

    train = ds.splits["train"]
    n_val = int(round(len(train) * fraction))
    if n_val < 1 or len(train) - n_val < 1:
        return ds
    counts = np.bincount(train.y)
    stratify = train.y if counts[counts > 0].min() >= 2 and n_val >= len(counts) else None
    idx_train, idx_val = train_test_split(np.arange(len(train)), test_size=n_val, random_state=seed, stratify=stratify)
    splits = {"train": train.subset(np.sort(idx_train)), "val": train.subset(np.sort(idx_val))}
    splits.update({k: v for k, v in ds.splits.items() if k != "train"})
    return Dataset(ds.spec, ds.class_names, splits, ds.bad_files, ds.source_format, dict(ds.load_options), list(ds.ignored_files), list(ds.notes))


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
    root = path / "train" if (path / "train").is_dir() else path
    try:
        found, _ = _scan_class_folders(root)
    except (OSError, DataError):
        return None
    if len(found) < 2 or not all(found.values()):
        return None  # not a usable dataset: loading it gives the precise error
    return sum(len(v) for v in found.values()), len(found)


_NUMBERED = re.compile(r"[\s._-]*\(?\d+\)?$")  # the numbering after a class name: ".123", "_10", " (2)"


def class_from_file_name(name: str) -> str | None:
    """The class a numbered file name gives: 'cat.123.jpg' -> 'cat' (Kaggle's dogs-vs-cats), 'american_bulldog_10.png'
    -> 'american_bulldog' (Oxford pets), 'dog (2).jpg' -> 'dog'; None for a name without a class (one with a
    letter) before its number: '0001.jpg', '12.5.png', 'cat.jpg'."""
    stem = Path(name).stem
    label = _NUMBERED.sub("", stem)
    return label if label != stem and re.search(r"[^\W\d_]", label) else None  # a class name has a letter


def walk_files(folder: Path) -> list[Path]:
    """Every non-directory entry below `folder`, sorted, without entering hidden folders (.thumbnails,
    .ipynb_checkpoints) or following folder symlinks (no loops); a linked folder is listed itself."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False, onerror=None):
        d = Path(dirpath)
        dirnames[:] = [n for n in dirnames if not n.startswith(".")]
        out.extend(d / n for n in filenames)
        out.extend(d / n for n in dirnames if (d / n).is_symlink())  # a linked folder: reported, not entered
    return sorted(out)


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


def _load_image_folder(root: Path, size: int, channels: int, max_bad_fraction: float, stream: bool | None = False,
                       workers: int | None = None) -> Dataset:
    split_roots = {s: root / s for s in SPLIT_DIRS if (root / s).is_dir()}
    if split_roots and "train" not in split_roots:
        raise DataError(f"{root}: has {', '.join(split_roots)}/ but no train/ — add train/<class>/ folders")
    if not split_roots:
        split_roots = {"train": root}
    ignored: list[str] = []
    scanned, by_name = {}, False
    for split, r in split_roots.items():
        scanned[split], named = _scan_class_folders(r, ignored)
        by_name = by_name or named
    class_names = sorted(scanned["train"])
    if not class_names:
        raise DataError(f"{split_roots['train']}: no class subfolders — put images in one folder per class, e.g. cats/ and dogs/")
    if by_name and len(class_names) < 2:
        raise DataError(f"{split_roots['train']}: no class subfolders, and the file names give one class ({class_names[0]!r})"
                        " — put images in one folder per class, e.g. cats/ and dogs/, or name them cat.0.jpg, dog.0.jpg")
    notes = []
    if by_name:
        counts = ", ".join(f"{name} {len(files)}" for name, files in scanned["train"].items())
        notes.append(f"classes from the file names (no class subfolders): {counts}")
    if ignored:
        exts = Counter(Path(p).suffix.lower() or "(no extension)" for p in ignored)
        kinds = ", ".join(f"{n} {e}" for e, n in exts.most_common(4)) + (", …" if len(exts) > 4 else "")
        notes.append(f"left out {len(ignored)} file(s) that are not images ({kinds}) — `cnnlab data check {root} --show-ignored` lists them")
    for split, found in scanned.items():
        for name, files in found.items():
            if not files:
                where = split_roots[split] / name
                raise DataError(f"{where}: class folder has no images (jpg, png, webp, heic, avif, …) — add images or remove the folder; `cnnlab data check` lists what it ignored")
            if name not in class_names:
                raise DataError(f"{split_roots[split] / name}: class {name!r} is not in train/ — classes: {', '.join(class_names)}")
    splits, bad = {}, []
    total = sum(len(files) for found in scanned.values() for files in found.values())
    streamed = should_stream(total, (size, size, channels), stream)
    bad_log = BadFiles(bad, total, max_bad_fraction)  # shares the `bad` list, which becomes Dataset.bad_files
    for split, found in scanned.items():
        paths = [p for name in class_names for p in found.get(name, [])]
        labels = np.array([i for i, name in enumerate(class_names) for _ in found.get(name, [])], dtype=np.int64)
        if streamed:  # headers only now; pixels are decoded batch by batch while training
            ok, bad_here = scan_headers(paths)
            bad.extend(bad_here)
            splits[split] = stream_split([paths[i] for i in ok], labels[np.asarray(ok, dtype=np.int64)], (size, size), channels, bad_log, workers)
            continue
        x, ok, bad_here = images.load_images(paths, (size, size), channels=channels)
        bad.extend(bad_here)
        ok = np.asarray(ok, dtype=np.int64)
        splits[split] = Split(x, labels[ok], [str(paths[i]) for i in ok])
    if bad and len(bad) / max(total, 1) > max_bad_fraction:
        path, reason = bad[0]
        raise DataError(
            f"{len(bad)} of {total} images are unreadable (more than max_bad_fraction={max_bad_fraction:g}), first: {path}: {reason}"
            " — remove or fix them, or raise --max-bad-fraction"
        )
    return _check_classes(Dataset(str(root), class_names, splits, bad, source_format="image-folder", ignored_files=ignored, notes=notes))


def _parse_options(spec: str, allowed: dict[str, type]) -> dict:
    name, _, query = spec.partition("?")
    opts = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in allowed:
            raise DataError(f"{spec}: unknown option {key!r} — {name} takes {', '.join(allowed)}")
        try:
            opts[key] = allowed[key](value)
        except ValueError:
            raise DataError(f"{spec}: option {key}={value!r} must be a {allowed[key].__name__}") from None
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
