"""The default recipe on a real photo folder: `cnnlab train --data D` with no other flags, several seeds.

    python -m benchmarks.default_recipe                                   # ../shared/datasets/cats_vs_dogs/train
    python -m benchmarks.default_recipe --source PHOTOS --seeds 0,1,2 --test-per-class 200
    python -m benchmarks.default_recipe --split-seed run                  # a different held-out part per seed
    python -m benchmarks.default_recipe --folds 5                         # 5-fold: every image held out once

The source folder (one subfolder per class) is split at random into train/ and a held-out test/ of
--test-per-class images per class (symlinks in a temporary folder; nothing is copied): once, with
--split-seed N (default 0), or once per run with `--split-seed run` (split seed = the run's seed), so the
spread over seeds also covers which images happened to be held out — 400 held-out images alone carry a
sampling error of about 1.5 points that a fixed split repeats in every run. `--folds K` is K-fold
cross-validation with the library's folds (cnnlab.engine.kfold.stratified_folds: each class shuffled once by
the split seed and cut into K near-equal parts — the images `cnnlab train --data SOURCE --folds K --seed S`
holds out in its fold j+1): run j (seed j) holds out part j, so every image of the source is held out exactly
once. The pooled accuracy is the accuracy on the whole folder (2000 images: a sampling error of about 0.7
points), computed by the library's pooling (cnnlab.insight.kfold) from each run's model re-scored on its
held-out images as the run scored them (its precision and TTA), untimed, after the run.
Each seed then runs `cnnlab train --data SPLIT --seed S` as a user would, in its own process, and the
table shows the wall time of the whole command, the held-out accuracy the run reports (TTA, the
default), the final accuracy on its validation images (the 10% of train/ the run split off by itself and
never trained on or selected with: the saved model is the last epoch's), the model/size/augmentation it
chose and its epochs; then mean +- std over the seeds.
The test images are never used for training or model selection.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from cnnlab import __version__
from cnnlab.data.images import is_image_file
from cnnlab.engine.device import cpu_description
from cnnlab.engine.kfold import stratified_folds

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cats_vs_dogs" / "train"


def split_folder(source: Path, out: Path, test_per_class: int, seed: int = 0, fold: tuple[int, int] | None = None,
                 train_per_class: int | None = None) -> dict[str, int]:
    """Symlink source's class folders into out/train and out/test: test gets the first test_per_class
    images of each class in a seeded shuffle, or with fold=(j, K) fold j of the library's K stratified folds
    (seeded the same way); train the rest in that shuffled order, or only its first train_per_class (few-shot)."""
    files = {cls.name: sorted(p for p in cls.iterdir() if is_image_file(p)) for cls in sorted(d for d in source.iterdir() if d.is_dir())}
    held: set[Path] = set()
    if fold is not None:
        names = list(files)
        y = np.array([c for c, name in enumerate(names) for _ in files[name]], dtype=np.int64)
        flat = [f for name in names for f in files[name]]
        held = {flat[i] for i in np.flatnonzero(stratified_folds(y, names, fold[1], seed) == fold[0])}
    for name, class_files in files.items():
        order = list(class_files)
        random.Random(f"{seed}:{name}").shuffle(order)
        if fold is None:
            test, rest = order[:test_per_class], order[test_per_class:]
        else:
            test, rest = [f for f in order if f in held], [f for f in order if f not in held]
        for part, chosen in (("test", test), ("train", rest[:train_per_class])):
            (out / part / name).mkdir(parents=True, exist_ok=True)
            for f in chosen:
                os.symlink(f.resolve(), out / part / name / f.name)
    return {name: len(class_files) for name, class_files in files.items()}


def heldout_predictions(run: Path, data: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(true classes, probabilities, class names) of a finished run's model on data/test, scored as the run
    scored its test split (engine.kfold.score_heldout: the run's precision and TTA)."""
    from cnnlab import api
    from cnnlab.engine.kfold import score_heldout
    from cnnlab.engine.run_dir import RunFolder

    clf = api.load(run)
    held = api.dataset_for_model(clf, str(data / "test"), val_split=0.0).train  # test/'s class folders, loaded as the run saw them
    index, probs = score_heldout(clf.model, clf.meta["normalization"], held, RunFolder(run).config(), len(clf.class_names))
    return held.y[index], probs, clf.class_names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    ap.add_argument("--seeds", help="comma-separated run seeds (default 0,1,2, or 0..K-1 with --folds K)")
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--split-seed", default="0", help="seed of the held-out split, or `run`: each run's own seed")
    ap.add_argument("--folds", type=int, help="K-fold cross-validation: run j holds out part j of K (seeds 0..K-1 by default)")
    ap.add_argument("--train-per-class", type=int, metavar="N", help="train on only N images per class (few-shot); the held-out part is unchanged")
    ap.add_argument("--keep", type=Path, help="keep the run folders here (default: a temporary folder)")
    ap.add_argument("extra", nargs="*", help="extra `cnnlab train` flags after --, e.g. -- --time-budget 300")
    args = ap.parse_args(argv)
    if not args.source.is_dir():
        print(f"{args.source}: no such folder — pass --source PHOTOS (one subfolder per class)", file=sys.stderr)
        return 2
    if args.split_seed != "run" and not args.split_seed.isdigit():
        print(f"--split-seed {args.split_seed}: expected a number or `run`", file=sys.stderr)
        return 2
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(range(args.folds or 3))
    if args.folds is not None and (args.folds < 2 or args.split_seed == "run" or len(seeds) != args.folds):
        print(f"--folds {args.folds}: expected K >= 2 with one seed per fold (--seeds gives {len(seeds)}) and a "
              "numbered --split-seed", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="cnnlab-default-recipe-"))
    try:
        runs = args.keep or tmp / "runs"
        print(f"cnnlab {__version__}, {cpu_description()}, {time.strftime('%Y-%m-%d %H:%M')}, load average "
              f"{os.getloadavg()[0]:.2f}; {args.source}: held out "
              f"{f'1 of {args.folds} folds' if args.folds else f'{args.test_per_class} per class'}, split seed {args.split_seed}"
              + (f", trained on {args.train_per_class} per class" if args.train_per_class else "") + f"; extra flags: {' '.join(args.extra) or 'none'}")
        print("| seed | wall | held-out accuracy | validation | chose | epochs |")
        print("|---|---|---|---|---|---|")
        accs, vals, walls, heldout = [], [], [], []
        for j, seed in enumerate(seeds):
            split = seed if args.split_seed == "run" else int(args.split_seed)
            data = tmp / (f"data{split}" if args.folds is None else f"data{split}_fold{j}")
            if not data.exists():  # a fixed split is made once and shared by every seed
                split_folder(args.source, data, args.test_per_class, split, None if args.folds is None else (j, args.folds),
                             args.train_per_class)
            run = runs / f"seed{seed}"
            cmd = [sys.executable, "-m", "cnnlab", "train", "--data", str(data), "--seed", str(seed), "--out", str(run),
                   "--overwrite", "--quiet", *args.extra]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if r.returncode != 0:
                print(f"| {seed} | failed (exit {r.returncode}) | {r.stderr.strip()[-300:]} | | | |")
                continue
            info = json.loads((run / "run.json").read_text())
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            acc, val = info["test"]["accuracy"], info["final"].get("val_accuracy")
            accs.append(acc)
            walls.append(wall)
            if val is not None:
                vals.append(val)
            if args.folds:
                heldout.append(heldout_predictions(run, data))
            print(f"| {seed} | {wall:.0f} s | {acc:.2%} | {'-' if val is None else f'{val:.1%}'} | "
                  f"{cfg['model']} {cfg.get('image_size')} px, aug {cfg['augment']} | {info['final']['epoch']} |", flush=True)
        if accs:
            print(f"\nheld-out accuracy {mean_sd(accs)} over {len(accs)} seeds"
                  + (f"; validation {mean_sd(vals)}" if vals else "")
                  + f"; wall {statistics.mean(walls):.0f} s mean, {max(walls):.0f} s max")
            if args.folds and len(accs) == args.folds:
                from cnnlab.insight.kfold import pooled_metrics

                names = heldout[0][2]
                pooled = pooled_metrics(np.concatenate([h[0] for h in heldout]), np.concatenate([h[1] for h in heldout]), names)
                print(f"{args.folds}-fold: every image held out once; pooled accuracy {pooled['accuracy']:.2%} of {pooled['n']} images "
                      f"({pooled['n'] - pooled['correct']} errors); per class (precision/recall): "
                      + ", ".join(f"{r['class']} {r['precision']:.1%}/{r['recall']:.1%}" for r in pooled["per_class"]))
        return 0 if len(accs) == len(seeds) else 1
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            for data in tmp.glob("data*"):
                shutil.rmtree(data, ignore_errors=True)


def mean_sd(xs: list[float]) -> str:
    from cnnlab.insight.kfold import fold_spread

    spread = fold_spread(xs)
    return f"{spread['mean']:.1%} +- {spread['sd']:.1%}"


if __name__ == "__main__":
    sys.exit(main())
