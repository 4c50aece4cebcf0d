"""Image-folder decode throughput: cnnlab's loader vs a plain PIL loop vs Keras' image_dataset_from_directory.

    python -m benchmarks.decode                                  # ../shared/datasets/cats_vs_dogs/train, 100 px
    python -m benchmarks.decode --source PHOTOS --size 128 --repeats 5

Every side turns the same folder (one subfolder per class) into uint8 arrays of --size x --size x 3, in its
own process, alternating over the repeats:
- cnnlab: `load_images` (what `cnnlab train --data FOLDER` runs: header checks, JPEG draft decoding to at least
  the target size, bilinear resize with box pre-reduction, a thread per core);
- pil: the loop a user writes — `Image.open(p).convert("RGB").resize((size, size))` per file, one thread;
- keras: `tf.keras.utils.image_dataset_from_directory(..., image_size=(size, size), batch_size=64)`
  iterated once (TensorFlow's own JPEG decoder and parallel input pipeline). Needs the `bench` extra.
The page cache is warm for all sides (a first untimed pass reads every file).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from benchmarks._common import run_alternating

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cats_vs_dogs" / "train"
SIDES = ("cnnlab", "pil", "keras")


def _files(source: Path) -> list[Path]:
    from cnnlab.data.images import is_image_file

    return sorted(p for d in sorted(source.iterdir()) if d.is_dir() for p in sorted(d.iterdir()) if is_image_file(p))


def _child(side: str, source: Path, size: int) -> dict:
    if side == "keras":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf

        t0 = time.perf_counter()
        ds = tf.keras.utils.image_dataset_from_directory(str(source), image_size=(size, size), batch_size=64, shuffle=False, verbose=False)
        n = sum(int(x.shape[0]) for x, _ in ds)
        return {"side": side, "n": n, "seconds": time.perf_counter() - t0, "version": tf.__version__}
    files = _files(source)
    t0 = time.perf_counter()
    if side == "cnnlab":
        from cnnlab import __version__
        from cnnlab.data.images import load_images

        arr, ok, bad = load_images(files, (size, size), channels=3)
        n, version = len(ok), __version__
    else:
        import numpy as np
        import PIL
        from PIL import Image

        arr = np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)) for p in files])
        n, version = len(arr), PIL.__version__
    return {"side": side, "n": n, "seconds": time.perf_counter() - t0, "version": version}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sides", default=",".join(SIDES))
    ap.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.source, args.size)))
        return 0
    if not args.source.is_dir():
        print(f"{args.source}: no such folder — pass --source PHOTOS (one subfolder per class)", file=sys.stderr)
        return 2
    sides = [s for s in args.sides.split(",") if s]
    if any(s not in SIDES for s in sides):
        print(f"--sides: choose from {', '.join(SIDES)}", file=sys.stderr)
        return 2
    files = _files(args.source)
    for p in files:  # warm the page cache for every side alike
        p.read_bytes()
    from cnnlab.engine.device import cpu_description

    results = run_alternating("benchmarks.decode", sides, args.repeats, ["--source", str(args.source), "--size", str(args.size)])
    print(f"Command: `{' '.join(['python -m benchmarks.decode', *(argv if argv is not None else sys.argv[1:])])}`  ")
    print(f"Machine: {cpu_description()}; {time.strftime('%Y-%m-%d %H:%M')}; load average {os.getloadavg()[0]:.2f} at the end  ")
    print(f"{args.source}: {len(files)} files → {args.size}×{args.size}×3 uint8; {args.repeats} alternating repeats, median (min–max).\n")
    print("| side | version | images | seconds | images/s | vs pil loop |")
    print("|---|---|---|---|---|---|")
    base = results.get("pil")
    for side in sides:
        rs = results[side]
        rate = [r["n"] / r["seconds"] for r in rs]
        vs = "—" if not base or side == "pil" else f"{statistics.median([(r['n'] / r['seconds']) / (b['n'] / b['seconds']) for r, b in zip(rs, base)]):.2f}×"
        print(f"| {side} | {rs[0]['version']} | {rs[0]['n']} | {statistics.median([r['seconds'] for r in rs]):.2f} "
              f"| {statistics.median(rate):.0f} ({min(rate):.0f}–{max(rate):.0f}) | {vs} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
