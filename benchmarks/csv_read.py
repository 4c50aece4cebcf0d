"""Time reading a seed-format pixel CSV: np.loadtxt vs read_pixel_csv vs the .npy cache.

    python -m benchmarks.csv_read                      # 2000 x 30000 values, "%.1f" (~334 MB, like the tutorial)
    python -m benchmarks.csv_read --format int         # "%d" (~214 MB)
    python -m benchmarks.csv_read --format sci --rows 400   # np.savetxt's default "%.18e" (~300 MB)
    python -m benchmarks.csv_read --path data/input.csv

The file is generated once into a temporary folder (removed afterwards). Each repeat runs every method
once, alternating, so drifting machine load hits all methods alike; the table shows the median with
min/max and the speed-up over np.loadtxt. "first read" never uses the cache; "cached" is the second
call of load_pixel_csv_cached (a memory map of the .npy), "cached+copy" also reads every byte of it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from cnnlab.data import seed_csv

FORMATS = {"int": "%d", "dec": "%.1f", "sci": "%.18e"}


def make_csv(folder: Path, rows: int, cols: int, fmt: str) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (rows, cols), dtype=np.uint8)
    path = folder / "input.csv"
    with open(path, "wb") as f:
        seed_csv._write_table(f, pixels, fmt)  # same table writer as write_pixel_csv, any printf format
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2000, help="images (lines) to generate (default 2000)")
    ap.add_argument("--cols", type=int, default=30000, help="values per image (default 30000 = 100x100x3)")
    ap.add_argument("--format", choices=sorted(FORMATS), default="dec", help="value format of the generated file (default dec = %%.1f)")
    ap.add_argument("--path", type=Path, help="time this CSV instead of generating one")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="cnnlab-csv-bench-"))
    try:
        if args.path:
            path = args.path
            what = str(path)
        else:
            t = time.perf_counter()
            path = make_csv(tmp, args.rows, args.cols, FORMATS[args.format])
            what = f"generated {args.rows} x {args.cols} {FORMATS[args.format]!r} in {time.perf_counter() - t:.1f} s"
        size_mb = os.path.getsize(path) / 1e6
        cache = tmp / "cache"
        print(f"{path}: {size_mb:.1f} MB ({what})")

        ref = seed_csv.read_pixel_csv(path)
        t = time.perf_counter()
        seed_csv.load_pixel_csv_cached(path, cache)  # fills the cache
        fill_s = time.perf_counter() - t
        methods = {
            "np.loadtxt": lambda: np.loadtxt(path, delimiter=","),
            "read_pixel_csv (first read)": lambda: seed_csv.read_pixel_csv(path),
            "load_pixel_csv_cached (cached)": lambda: seed_csv.load_pixel_csv_cached(path, cache),
            "cached+copy": lambda: np.array(seed_csv.load_pixel_csv_cached(path, cache)),
        }
        times: dict[str, list[float]] = {k: [] for k in methods}
        for r in range(args.repeats):
            for name, fn in methods.items():
                t = time.perf_counter()
                out = fn()
                times[name].append(time.perf_counter() - t)
                if r == 0 and not np.array_equal(out, ref):
                    raise SystemExit(f"{name}: result differs from read_pixel_csv")
                del out

        base = statistics.median(times["np.loadtxt"])
        print(f"\n{'method':32s} {'median s':>10s} {'min s':>9s} {'max s':>9s} {'MB/s':>9s} {'x loadtxt':>10s}")
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"{name:32s} {med:10.4f} {min(ts):9.4f} {max(ts):9.4f} {size_mb / med:9.0f} {base / med:10.1f}")
        print(f"\n(cache fill, first load_pixel_csv_cached call: {fill_s:.2f} s; {args.repeats} alternating repeats; shape {ref.shape})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
