"""The default recipe on a real photo folder: `cnnlab train --data D` with no other flags, several seeds.

    python -m benchmarks.default_recipe                                   # ../shared/datasets/cats_vs_dogs/train
    python -m benchmarks.default_recipe --source PHOTOS --seeds 0,1,2 --test-per-class 200

The source folder (one subfolder per class) is split once, at random with a fixed seed, into train/ and a
held-out test/ of --test-per-class images per class (symlinks in a temporary folder; nothing is copied).
Each seed then runs `cnnlab train --data SPLIT --seed S` as a user would, in its own process, and the
table shows the wall time of the whole command, the held-out accuracy the run reports (flip TTA, the
default), the model/size/augmentation it chose and its epochs; then mean +- std over the seeds.
The test images are never used for training or model selection (validation is split off train/).
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

import yaml

from cnnlab import __version__
from cnnlab.data.images import is_image_file
from cnnlab.engine.device import cpu_description

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cats_vs_dogs" / "train"


def split_folder(source: Path, out: Path, test_per_class: int, seed: int = 0) -> dict[str, int]:
    counts = {}
    for cls in sorted(d for d in source.iterdir() if d.is_dir()):
        files = sorted(p for p in cls.iterdir() if is_image_file(p))
        random.Random(f"{seed}:{cls.name}").shuffle(files)
        for part, chosen in (("test", files[:test_per_class]), ("train", files[test_per_class:])):
            (out / part / cls.name).mkdir(parents=True, exist_ok=True)
            for f in chosen:
                os.symlink(f.resolve(), out / part / cls.name / f.name)
        counts[cls.name] = len(files)
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--keep", type=Path, help="keep the run folders here (default: a temporary folder)")
    ap.add_argument("extra", nargs="*", help="extra `cnnlab train` flags after --, e.g. -- --time-budget 300")
    args = ap.parse_args(argv)
    if not args.source.is_dir():
        print(f"{args.source}: no such folder — pass --source PHOTOS (one subfolder per class)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="cnnlab-default-recipe-"))
    try:
        data = tmp / "data"
        counts = split_folder(args.source, data, args.test_per_class)
        runs = args.keep or tmp / "runs"
        print(f"cnnlab {__version__}, {cpu_description()}, {time.strftime('%Y-%m-%d %H:%M')}, load average "
              f"{os.getloadavg()[0]:.2f}; {args.source}: {counts}, held out {args.test_per_class} per class")
        print("| seed | wall | held-out accuracy | chose | epochs |")
        print("|---|---|---|---|---|")
        accs, walls = [], []
        for seed in [int(s) for s in args.seeds.split(",")]:
            run = runs / f"seed{seed}"
            cmd = [sys.executable, "-m", "cnnlab", "train", "--data", str(data), "--seed", str(seed), "--out", str(run),
                   "--overwrite", "--quiet", *args.extra]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if r.returncode != 0:
                print(f"| {seed} | failed (exit {r.returncode}) | {r.stderr.strip()[-300:]} | | |")
                continue
            info = json.loads((run / "run.json").read_text())
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            acc = info["test"]["accuracy"]
            accs.append(acc)
            walls.append(wall)
            print(f"| {seed} | {wall:.0f} s | {acc:.1%} | {cfg['model']} {cfg.get('image_size')} px, aug {cfg['augment']} | "
                  f"{info['final']['epoch']} |", flush=True)
        if accs:
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            print(f"\nheld-out accuracy {statistics.mean(accs):.1%} +- {sd:.1%} over {len(accs)} seeds; "
                  f"wall {statistics.mean(walls):.0f} s mean, {max(walls):.0f} s max")
        return 0 if len(accs) == len(args.seeds.split(",")) else 1
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            shutil.rmtree(tmp / "data", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
