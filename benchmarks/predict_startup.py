"""`cnnlab predict RUN one.png` wall time, whole command as a user runs it: PyTorch vs the run's ONNX export
(`--backend auto` finds RUN/model.onnx and never imports torch). Both sides alternate in one run.

    python -m benchmarks.predict_startup [--repeats 7]

Trains a tiny seed_cnn run on builtin:digits and exports it first (not timed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import spread


def cnnlab(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cnnlab", *args], check=True, capture_output=True, text=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        run, imgs = Path(d) / "run", Path(d) / "imgs"
        cnnlab("train", "--data", "builtin:digits", "--model", "seed_cnn", "--epochs", "1", "--out", str(run), "--quiet")
        cnnlab("export", str(run), "--format", "onnx")
        cnnlab("data", "convert", "builtin:digits", str(imgs), "--to", "folder")
        image = str(next((imgs / "test").rglob("*.png")))
        times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
        for i in range(args.repeats):
            for side in ("torch", "onnxruntime") if i % 2 == 0 else ("onnxruntime", "torch"):
                times[side].append(cnnlab("predict", str(run), image, "--backend", side))
    load = os.getloadavg()[0]
    print(f"cnnlab predict RUN one.png, whole command, median (min–max) of {args.repeats}; load average {load:.2f}")
    for side, values in times.items():
        print(f"  --backend {side:<12} {spread(values)} s")
    print(f"  ratio torch / onnxruntime: {statistics.median(times['torch']) / statistics.median(times['onnxruntime']):.1f}x")


if __name__ == "__main__":
    main()
