"""K-fold cross-validation: K ordinary training runs of one configuration, each holding out one fold of the data.

    cnnlab train --data D --folds 5    ->    runs/train3/fold1 … fold5 (run folders), folds.json, heldout.csv

Which images: the dataset's training images — train, plus its val split when the dataset brings one (a val/
folder, a split column), loaded without a validation split of their own. A test split the dataset brings (test/,
the seed's input_test.csv, a built-in's fixed 20%) is left out of every fold and named in a note: it stays unseen
for the model retrained on all the images afterwards.

The folds (`stratified_folds`): each class is shuffled once (seeded) and cut into K contiguous parts whose sizes
differ by at most one; class after class the larger parts go to the next folds in turn, so the folds' sizes also
differ by at most one. benchmarks/default_recipe.py splits its photo folders with this same function.

Fold k's run (ROOT/foldk, an ordinary run folder): test = fold k (the run's test score is its held-out score),
train = the other folds, val = --val-split of those (stratified, seeded, as a plain run splits it). Fold k is
never trained on nor used to choose anything. Every fold run has the same config, seed and time budget as one
`cnnlab train` (the default recipe chooses once, before the first fold), so the pooled held-out accuracy
estimates what that command gives.

Each fold's held-out predictions go to ROOT/foldk/heldout.csv when it finishes; folds.json records the plan and
progress (insight/kfold.py adds the pooled summary when all folds are done). An interrupted cross-validation
continues with `cnnlab train --resume ROOT`: finished folds are kept, the interrupted one resumes from its
last.ckpt, the rest start.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import io
import json
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch.nn as nn

from cnnlab.config import TrainConfig, config_from_dict
from cnnlab.data.dataset import Dataset, Split
from cnnlab.data.sources import with_validation_split
from cnnlab.data.stream import LazyImages, StreamSplit
from cnnlab.engine import run_dir as rd
from cnnlab.engine import session
from cnnlab.errors import CnnlabError, ConfigError, DataError, TrainingError, TrainingInterrupted
from cnnlab.io import write_text_atomic

FOLDS_JSON, HELDOUT_CSV = "folds.json", "heldout.csv"
_FOLD_DIR = re.compile(r"^fold(\d+)$")


# ---------------------------------------------------------------------------- which image goes to which fold


def stratified_folds(y: np.ndarray, class_names: list[str], k: int, seed: int) -> np.ndarray:
    """The fold (0..k-1) of each image, from its class id in `y`. Per class (in class_names order): its images in
    dataset order, shuffled by random.Random(f"{seed}:{class name}"), cut into k contiguous parts. With n images
    in a class, n % k parts get one more image; which ones rotates from class to class (starting where the
    previous class stopped), so every fold gets a near-equal share of every class and of the whole."""
    y = np.asarray(y, dtype=np.int64)
    fold = np.full(len(y), -1, dtype=np.int64)
    offset = 0  # the next fold that gets one of the larger parts
    for c, name in enumerate(class_names):
        members = np.flatnonzero(y == c).tolist()
        random.Random(f"{seed}:{name}").shuffle(members)
        base, extra = divmod(len(members), k)
        start = 0
        for j in range(k):
            size = base + (1 if (j - offset) % k < extra else 0)
            fold[members[start:start + size]] = j
            start += size
        offset = (offset + extra) % k
    return fold


def check_k(k: Any) -> int:
    """The number of folds as an int, or a one-line error."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ConfigError(f"folds = {k!r} is invalid — cross-validation needs K >= 2 folds (each held out once), e.g. --folds 5")
    return int(k)


def check_fold_count(k: Any, y: np.ndarray, class_names: list[str], where: str) -> int:
    """k as an int, or a one-line error: fewer than 2 folds, or a class with fewer images than folds (a fold
    would hold none of it)."""
    k = check_k(k)
    if np.asarray(y).ndim != 1:
        raise DataError(f"{where}: several labels per image — stratified folds need one class per image; cross-validate single-label data")
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=len(class_names))
    smallest = int(np.argmin(counts))
    if counts[smallest] < k:
        raise DataError(f"{where}: class {class_names[smallest]!r} has {counts[smallest]} image(s), fewer than the {k} folds — every fold must "
                        f"hold out at least one image of every class: use --folds {max(2, int(counts[smallest]))} or fewer, or add images")
    return int(k)


def folds_fingerprint(fold: np.ndarray, y: np.ndarray) -> str:
    """sha256 of the assignment and the labels: a resumed cross-validation checks that the data still split the same."""
    h = hashlib.sha256(np.asarray(fold, dtype=np.int64).tobytes())
    h.update(np.asarray(y, dtype=np.int64).tobytes())
    return h.hexdigest()


def cross_validation_images(ds: Dataset) -> tuple[Split, list[str]]:
    """(the images the folds split: train then val, the notes that say what was left out)."""
    if ds.multi_label:  # stratified folds and the pooled held-out metrics are defined for one label per image
        raise ConfigError(f"{ds.spec}: --folds does not take multi-label data yet — train one run (cnnlab train) and score it"
                          " with cnnlab evaluate")
    parts = [ds.splits[name] for name in ("train", "val") if name in ds.splits and len(ds.splits[name])]
    pool = parts[0] if len(parts) == 1 else concat_splits(parts[0], parts[1])
    notes = []
    if "val" in ds.splits and len(ds.splits["val"]):
        notes.append(f"the dataset's own val split ({len(ds.splits['val'])} images) joins the folds; each fold run splits its validation "
                     "images off its training images (--val-split)")
    if "test" in ds.splits and len(ds.splits["test"]):
        notes.append(f"the dataset's test split ({len(ds.splits['test'])} images) is left out of every fold — score the model you "
                     f"retrain on all the images on it: cnnlab evaluate NEW_RUN --data {ds.spec}")
    return pool, notes


def concat_splits(a: Split, b: Split) -> Split:
    if isinstance(a, StreamSplit) != isinstance(b, StreamSplit):
        raise DataError("the train and val splits are not loaded the same way (one streamed from disk) — load with stream=True or False")
    y = np.concatenate([a.y, b.y])
    if isinstance(a, StreamSplit):
        paths = np.concatenate([a.x.paths, b.x.paths])  # numpy widens the bytes width to the longer one
        return StreamSplit(LazyImages(paths, a.x.size, a.x.channels), y, a.bad, a.workers)
    paths = list(a.paths) + list(b.paths) if a.paths is not None and b.paths is not None else None
    return Split(np.concatenate([a.x, b.x]), y, paths)


def fold_dataset(ds: Dataset, pool: Split, fold: np.ndarray, j: int, val_split: float, seed: int) -> Dataset:
    """Fold j's dataset (0-based): test = the pool's images of fold j, train = the others, val = val_split of train."""
    splits = {"train": pool.subset(np.flatnonzero(fold != j)), "test": pool.subset(np.flatnonzero(fold == j))}
    options = {**ds.load_options, "val_split": val_split, "seed": seed}  # what the fold run records in its config
    fd = dataclasses.replace(ds, splits=splits, load_options=options, notes=list(ds.notes), ignored_files=list(ds.ignored_files))
    return with_validation_split(fd, val_split, seed) if val_split > 0 else fd


# ---------------------------------------------------------------------------- the result


@dataclass
class FoldOutcome:
    """One finished fold: its run folder, and its model's predictions on the images it held out."""

    number: int  # 1..K
    run_dir: Path
    index: np.ndarray  # positions among the cross-validated images (heldout.csv's `index`)
    y: np.ndarray  # their true classes
    probs: np.ndarray  # (n, classes) predicted probabilities, as the run scored its test split (its precision, TTA)
    paths: list[str] | None
    entry: dict  # the fold's record in folds.json: sizes, accuracy, loss, val accuracy, epochs, seconds

    @property
    def accuracy(self) -> float:
        return float((self.probs.argmax(1) == self.y).mean()) if len(self.y) else float("nan")


@dataclass
class CrossValidation:
    """What engine.kfold.cross_validate leaves for the summary (insight/kfold.py): the plan and every fold."""

    root: Path
    k: int
    config: TrainConfig  # as every fold run starts from it (the default recipe already chosen)
    class_names: list[str]
    n_images: int  # cross-validated images
    notes: list[str]
    folds: list[FoldOutcome] = field(default_factory=list)
    state: dict = field(default_factory=dict)  # folds.json as written so far

    def write_state(self) -> None:
        rd.write_json(self.root / FOLDS_JSON, self.state)


# ---------------------------------------------------------------------------- running the folds


OnFoldEnd = Callable[[Any, Dataset], None]  # (TrainResult, the fold's dataset): e.g. write the fold run's report.html


def cross_validate(model: nn.Module | str | None = None, data: Dataset | str | None = None, *, folds: int = 5,
                   config: TrainConfig | None = None, out: str | Path | None = None, overwrite: bool = False, quiet: bool = False,
                   spent_seconds: float = 0.0, callbacks: list | None = None, on_fold_end: OnFoldEnd | None = None,
                   **overrides: Any) -> CrossValidation:
    """Train `folds` runs of one configuration under one folder (see the module doc). Every input problem is raised
    before anything is written. `spent_seconds` (the command's start-up) counts in each fold's time budget, as it
    would in one `cnnlab train`; so do loading the data and the default recipe's choice."""
    _check_single_process()
    check_k(folds)
    cfg = session.config_for(model if model is not None else (config.model if config else "auto"),
                             data if data is not None else (config.data if config else ""), base=config, **overrides)
    root = Path(out) if out is not None else rd.next_run_dir()
    _check_root(root, overwrite)
    cfg, ds = _planned(cfg, data if isinstance(data, Dataset) else None, quiet)
    load_seconds = getattr(ds, "load_seconds", None) or 0.0  # loading (+ the default recipe's speed probe)
    pool, notes = cross_validation_images(ds)
    k = check_fold_count(folds, pool.y, ds.class_names, ds.spec or "the dataset")
    fold = stratified_folds(pool.y, ds.class_names, k, cfg.seed)
    cv = CrossValidation(root, k, cfg, list(ds.class_names), len(pool), notes)
    cv.state = _initial_state(cv, ds, pool, fold)
    _prepare_root(root, k, overwrite)  # the first write: every check above has passed
    cv.write_state()
    template = copy.deepcopy(model) if isinstance(model, nn.Module) else None  # every fold starts from these weights
    return _run(cv, ds, pool, fold, quiet, load_seconds, spent_seconds, callbacks, on_fold_end, template, resuming=False)


def resume_cross_validation(root: str | Path, *, quiet: bool = False, spent_seconds: float = 0.0, callbacks: list | None = None,
                            on_fold_end: OnFoldEnd | None = None) -> CrossValidation:
    """Continue an interrupted cross-validation folder: finished folds are kept, an interrupted fold resumes from
    its last.ckpt, the others train. The data must split into the same folds as when it started."""
    _check_single_process()
    root = Path(root)
    state = read_state(root)
    if state.get("status") == "completed":
        raise CnnlabError(f"{root}: this cross-validation already completed — start a new one instead of --resume")
    try:
        cfg = config_from_dict(state["config"], source=str(root / FOLDS_JSON)).validate()
        k = int(state["k"])
        expected = state["assignment"]["sha256"]
    except (KeyError, TypeError, ValueError):
        raise CnnlabError(f"{root / FOLDS_JSON}: missing config, k or assignment — was the file edited by hand?") from None
    t0 = time.perf_counter()
    ds = session.dataset_for_config(dataclasses.replace(cfg, val_split=0.0))
    load_seconds = time.perf_counter() - t0
    pool, notes = cross_validation_images(ds)
    fold = stratified_folds(pool.y, ds.class_names, k, cfg.seed)
    if folds_fingerprint(fold, pool.y) != expected:
        raise DataError(f"{cfg.data}: the images or their labels changed since {root} started, so its folds would differ — "
                        "start a new cross-validation instead of --resume")
    cv = CrossValidation(root, k, cfg, list(ds.class_names), len(pool), notes, state=state)
    cv.state["status"] = "running"
    cv.write_state()
    return _run(cv, ds, pool, fold, quiet, load_seconds, spent_seconds, callbacks, on_fold_end, None, resuming=True)


def _run(cv: CrossValidation, ds: Dataset, pool: Split, fold: np.ndarray, quiet: bool, load_seconds: float, spent_seconds: float,
         callbacks: list | None, on_fold_end: OnFoldEnd | None, template: nn.Module | None, resuming: bool) -> CrossValidation:
    say = (lambda msg: None) if quiet else print
    cfg, k = cv.config, cv.k
    recorded = {e.get("fold"): e for e in cv.state.get("folds", []) if isinstance(e, dict)}
    for j in range(k):
        number, run = j + 1, cv.root / f"fold{j + 1}"
        fd = fold_dataset(ds, pool, fold, j, cfg.val_split, cfg.seed)
        fd.load_seconds = load_seconds  # type: ignore[attr-defined]  # each fold's budget covers loading, as one run's would
        heldout_index = np.flatnonzero(fold == j)
        info = rd.read_run_json(run) if resuming else {}
        if info.get("status") == "completed" and (run / rd.MODEL).is_file():
            outcome = _finished_fold(cv, number, run, fd, heldout_index, recorded.get(number, {}))
            _add(cv, outcome)
            say(f"fold {number}/{k}: finished earlier — held-out accuracy {outcome.accuracy:.2%} ({len(outcome.y)} images)")
            continue
        say(f"fold {number}/{k}: training on {len(fd.train)} images, validating on {len(fd.splits.get('val', ()))}, "
            f"holding out {len(fd.splits['test'])} → {run}")
        t0 = time.perf_counter()
        try:
            if info.get("status") in ("interrupted", "running", "stopped") and (run / rd.LAST_CKPT).is_file():
                result = _resume_fold(run, fd, quiet, load_seconds, callbacks)
            else:
                model = copy.deepcopy(template) if template is not None else cfg.model
                result, _ = session.train(model, fd, config=cfg, out=run, overwrite=True, quiet=quiet,
                                          spent_seconds=spent_seconds, callbacks=callbacks)
        except TrainingError as e:
            raise _stopped(cv, number, run, e) from None
        except KeyboardInterrupt as k:  # (engine.signals.Signalled, a KeyboardInterrupt, carries the signal's name)
            raise _stopped(cv, number, run, None, k.args[0] if k.args and isinstance(k.args[0], str) else "SIGINT") from None
        run_cfg = config_from_dict(result.meta["config"], source=str(run)) if result.meta.get("config") else cfg
        index, probs = score_heldout(result.model, result.meta["normalization"], fd.splits["test"], run_cfg, len(cv.class_names))
        outcome = _outcome(cv, number, run, fd, heldout_index, index, probs, {"seconds": round(time.perf_counter() - t0, 3)})
        write_text_atomic(run / HELDOUT_CSV, heldout_csv_text([outcome], cv.class_names))
        if on_fold_end is not None:
            on_fold_end(result, fd)
        _add(cv, outcome)
        say(f"fold {number}/{k}: held-out accuracy {outcome.accuracy:.2%} ({len(outcome.y)} images)")
    return cv


def _add(cv: CrossValidation, outcome: "FoldOutcome") -> None:
    cv.folds.append(outcome)
    cv.state["folds"] = [f.entry for f in cv.folds]
    cv.write_state()


def _stopped(cv: CrossValidation, number: int, run: Path, e: TrainingError | None, signal_name: str = "SIGINT") -> TrainingError:
    """The error for a fold that ended early: an interruption says how to resume the whole cross-validation (not the
    fold alone, whose config names the whole dataset)."""
    interrupted = e is None or rd.read_run_json(run).get("status") == "interrupted"
    cv.state["status"] = "interrupted" if interrupted else "failed"
    cv.write_state()
    finished = len(cv.folds)
    if interrupted:
        return TrainingInterrupted(f"cross-validation interrupted in fold {number}/{cv.k} ({finished} fold(s) finished) — resume it"
                                   f" with: cnnlab train --resume {cv.root}", getattr(e, "signal_name", signal_name))
    return TrainingError(f"fold {number}/{cv.k} ({run}): {e}")


def _resume_fold(run: Path, fd: Dataset, quiet: bool, load_seconds: float, callbacks: list | None):
    """session._resume for a fold: the fold's own dataset instead of the one its config names."""
    from cnnlab.engine.checkpoint import load_checkpoint
    from cnnlab.engine.trainer import fit
    from cnnlab.track import trackers_for

    state = load_checkpoint(run)
    cfg = config_from_dict(state["config"], source=str(run / rd.LAST_CKPT)).validate()
    model = session.model_for_config(cfg, fd)
    callbacks = [*trackers_for(cfg, fd), *(callbacks or [])]  # TensorBoard / MLflow continue, as session._resume does
    return fit(model, fd, cfg, resume_state=state, resume_dir=run, quiet=quiet, load_seconds=load_seconds, callbacks=callbacks)


def score_heldout(model: nn.Module, normalization: dict, split: Split, cfg: TrainConfig, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions in `split` of the images scored, their class probabilities (n, classes) as float64): the model in
    eval mode at the run's precision, with TTA when its config asks — the computation behind its test score.
    A streamed file that fails to decode is left out (and listed in the dataset's bad files)."""
    from cnnlab.engine.device import resolve_precision
    from cnnlab.engine.inference import evaluate_on_split, probabilities

    device = next(model.parameters()).device
    precision = resolve_precision(cfg.precision, device, model)
    ev = evaluate_on_split(model, split, normalization, device, precision, tta=bool(cfg.tta))
    probs = probabilities(ev["logits"]).numpy().astype(np.float64) if ev["n"] else np.zeros((0, n_classes))
    return np.asarray(ev["index"], dtype=np.int64), probs


def _outcome(cv: CrossValidation, number: int, run: Path, fd: Dataset, heldout_index: np.ndarray, index: np.ndarray,
             probs: np.ndarray, recorded: dict) -> FoldOutcome:
    """The fold's outcome from the positions (in its test split) of the images scored and their probabilities; its
    folds.json entry from the run's run.json."""
    test = fd.splits["test"]
    y = np.asarray(test.y, dtype=np.int64)[index]
    paths = [test.paths[int(i)] for i in index] if test.paths is not None else None
    counts = np.bincount(np.asarray(test.y, dtype=np.int64), minlength=len(cv.class_names))
    info = rd.read_run_json(run)
    final, tested = info.get("final") or {}, info.get("test") or {}
    entry = {"fold": number, "run": run.name, "status": "completed", "n_train": len(fd.train), "n_val": len(fd.splits.get("val", ())),
             "n_heldout": len(test), "n_scored": int(len(y)), "heldout_per_class": {c: int(n) for c, n in zip(cv.class_names, counts)},
             "accuracy": float((probs.argmax(1) == y).mean()) if len(y) else None, "loss": tested.get("loss"), "tta": tested.get("tta"),
             "epochs": final.get("epoch"), "final_val_accuracy": final.get("val_accuracy"),
             "best_val_accuracy": (info.get("best") or {}).get("accuracy"), "train_seconds": (info.get("seconds") or {}).get("train"),
             "seconds": None, **{k: v for k, v in recorded.items() if k == "seconds"}}
    return FoldOutcome(number, run, heldout_index[index], y, probs, paths, entry)


def _finished_fold(cv: CrossValidation, number: int, run: Path, fd: Dataset, heldout_index: np.ndarray, recorded: dict) -> FoldOutcome:
    """A fold that finished before an interruption: its predictions from its heldout.csv, or (when that file is missing
    or does not match the fold) from scoring its model file again as the run scored its test split."""
    rows = read_heldout_csv(run / HELDOUT_CSV, cv.class_names)
    pos = {int(p): i for i, p in enumerate(heldout_index)}
    if rows is not None and all(int(i) in pos for i in rows[0]):
        local, probs = np.array([pos[int(i)] for i in rows[0]], dtype=np.int64), rows[1]
    else:
        from cnnlab.engine.predictor import load_classifier

        clf = load_classifier(run)
        local, probs = score_heldout(clf.model, clf.meta["normalization"], fd.splits["test"], rd.RunFolder(run).config(), len(cv.class_names))
    outcome = _outcome(cv, number, run, fd, heldout_index, local, probs, recorded)
    write_text_atomic(run / HELDOUT_CSV, heldout_csv_text([outcome], cv.class_names))
    return outcome


# ---------------------------------------------------------------------------- files


def heldout_csv_text(folds: list[FoldOutcome], class_names: list[str]) -> str:
    """heldout.csv: one row per held-out image, by `index` (its position among the cross-validated images: the
    dataset's train images, then its val images), with its fold, file (when it came from one), true and predicted
    class and the predicted probability of every class (p_CLASS, exact float32 values)."""
    rows = []
    for f in folds:
        for i in range(len(f.y)):
            rows.append((int(f.index[i]), f.number, f.paths[i] if f.paths is not None else "", class_names[int(f.y[i])],
                         class_names[int(f.probs[i].argmax())], *(f"{p:.9g}" for p in f.probs[i])))
    rows.sort()
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "fold", "path", "true", "predicted", *(f"p_{c}" for c in class_names)])
    w.writerows(rows)
    return buf.getvalue()


def read_heldout_csv(path: Path, class_names: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(index, probabilities) from a heldout.csv; None when it is missing or not one for these classes."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader)
            if header[5:] != [f"p_{c}" for c in class_names]:
                return None
            rows = list(reader)
        index = np.array([int(r[0]) for r in rows], dtype=np.int64)
        probs = np.array([[float(v) for v in r[5:]] for r in rows], dtype=np.float64).reshape(len(rows), len(class_names))
    except (OSError, StopIteration, ValueError, IndexError, csv.Error, UnicodeDecodeError):
        return None
    return index, probs


def read_state(root: str | Path) -> dict:
    """folds.json of a cross-validation folder; a CnnlabError when it is missing or not a JSON object."""
    path = Path(root) / FOLDS_JSON
    if not path.is_file():
        raise CnnlabError(f"{root}: no {FOLDS_JSON} — not a cross-validation folder (`cnnlab train --folds K` writes one)")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise CnnlabError(f"{path}: unreadable ({e.__class__.__name__}) — was the file edited by hand?") from None
    if not isinstance(state, dict):
        raise CnnlabError(f"{path}: not a JSON object — was the file edited by hand?")
    return state


def is_cross_validation(path: str | Path) -> bool:
    return (Path(path) / FOLDS_JSON).is_file()


def fold_runs(path: str | Path) -> list[Path]:
    """The fold run folders of a cross-validation folder that hold a run, in fold order ([] for any other folder)."""
    root = Path(path)
    if not is_cross_validation(root):
        return []
    k = read_state(root).get("k")
    runs = [root / f"fold{j}" for j in range(1, k + 1)] if isinstance(k, int) else []
    return [d for d in runs if (d / rd.CONFIG).is_file() and (d / rd.METRICS).is_file()]


def fold_of(run: str | Path) -> tuple[Path, int] | None:
    """(its cross-validation folder, fold number) when `run` is a fold run, else None."""
    run = Path(run)
    m = _FOLD_DIR.match(run.name)
    if m and is_cross_validation(run.parent):
        return run.parent, int(m.group(1))
    return None


# ---------------------------------------------------------------------------- set-up


def _check_single_process() -> None:
    from cnnlab.engine.distributed import env_world_size

    if env_world_size() > 1:
        raise ConfigError("cross-validation runs its folds one after another in one process — drop --folds under torchrun/--nproc,"
                          " or run `cnnlab train --folds K` without them")


def _check_root(root: Path, overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise CnnlabError(f"{root}: exists and is a file — choose another --out")
    if not root.is_dir() or overwrite:
        return
    if is_cross_validation(root):
        raise CnnlabError(f"{root}: already holds a cross-validation — pass --overwrite to replace it, --resume {root} to continue it,"
                          " or choose another --out")
    held = [p for p in [root, *(d for d in root.iterdir() if d.is_dir() and _FOLD_DIR.match(d.name))]
            if any((p / m).exists() for m in rd.RUN_MARKERS)]
    if held:
        raise CnnlabError(f"{held[0]}: already holds a run — pass --overwrite to replace it, or choose another --out")


def _prepare_root(root: Path, k: int, overwrite: bool) -> None:
    """Create the folder (checked writable); with overwrite, clear what an earlier run or cross-validation left."""
    rd.RunFolder.create(root, overwrite=overwrite)
    if not overwrite:
        return
    for name in (FOLDS_JSON, HELDOUT_CSV, "confusion_matrix.png"):
        (root / name).unlink(missing_ok=True)
    for d in root.iterdir():
        m = _FOLD_DIR.match(d.name)
        if d.is_dir() and m and int(m.group(1)) > k:  # folds of an earlier, larger K: their run files go
            for name in (*rd.RUN_MARKERS, rd.METRICS, rd.BEST_MODEL, rd.REPORT, rd.BAD_FILES, HELDOUT_CSV, *rd.PLOTS):
                (d / name).unlink(missing_ok=True)
            try:
                d.rmdir()
            except OSError:
                pass  # it holds other files: left as they are
        elif d.is_dir() and m:
            (d / HELDOUT_CSV).unlink(missing_ok=True)  # written again when the fold finishes


def _planned(cfg: TrainConfig, ds: Dataset | None, quiet: bool) -> tuple[TrainConfig, Dataset]:
    """The config every fold trains (the default recipe chosen once, here) and the data loaded without a validation
    split of its own (each fold splits its own off its training images)."""
    if cfg.model == "auto":
        planned, ds = session.auto_recipe(dataclasses.replace(cfg, val_split=0.0), ds, quiet)
        return dataclasses.replace(planned, val_split=cfg.val_split), ds
    if ds is None:
        if cfg.uses_pretrained and cfg.image_size is None:
            cfg = session.pretrained_image_size(cfg)  # photos load at the weights' resolution, as in one run
        ds = session.dataset_for_config(dataclasses.replace(cfg, val_split=0.0))
    return cfg, ds


def _initial_state(cv: CrossValidation, ds: Dataset, pool: Split, fold: np.ndarray) -> dict:
    per_fold = []
    for j in range(cv.k):
        counts = np.bincount(pool.y[fold == j], minlength=len(cv.class_names))
        per_fold.append({"fold": j + 1, "n": int(counts.sum()), "per_class": {c: int(n) for c, n in zip(cv.class_names, counts)}})
    return {
        "status": "running",
        "k": cv.k,
        "seed": cv.config.seed,
        "data": ds.spec,
        "classes": cv.class_names,
        "n_images": cv.n_images,
        "left_out": {name: len(s) for name, s in ds.splits.items() if name == "test" and len(s)},
        "notes": cv.notes,
        "runs": [f"fold{j + 1}" for j in range(cv.k)],
        "assignment": {"method": "stratified, seeded (engine/kfold.stratified_folds)", "sha256": folds_fingerprint(fold, pool.y),
                       "per_fold": per_fold},
        "config": cv.config.to_dict(),
        "folds": [],
    }
