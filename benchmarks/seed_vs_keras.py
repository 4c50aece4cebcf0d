"""The seed tutorial's Keras pipeline vs cnnlab on the same seed-format data, same machine, same run.

    python -m benchmarks.seed_vs_keras [--source FOLDER|builtin:...] [--data SEED_CSV_DIR] [--repeats 3]
                                       [--epochs 5] [--batch-size 64] [--models seed_cnn] [--markdown]

Needs the optional `bench` extra (tensorflow-cpu) for the Keras side. Runs alternate (Keras, cnnlab,
cnnlab, Keras, ...) so drift in machine load hits both; each side runs in its own process. Reports per-phase
seconds (CSV load, training, evaluation), images/s, test accuracy and the cnnlab/Keras ratios (median and
min-max over the paired repeats).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import run_side, spread

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parent.parent / "shared" / "datasets" / "cats_vs_dogs" / "train"


def prepare_seed_csv(source: str, out: Path, size: int = 100, test_fraction: float = 0.2) -> Path:
    """Write `source` (image folder or builtin:...) as seed CSVs at size x size x 3 with a held-out test part."""
    from cnnlab import load_dataset
    from cnnlab.data import seed_csv

    if (out / "input_test.csv").is_file():
        return out
    ds = load_dataset(source, image_size=size, channels=3, val_split=0)
    x = np.concatenate([s.x for s in ds.splits.values()])
    y = np.concatenate([s.y for s in ds.splits.values()])
    order = np.random.default_rng(0).permutation(len(y))
    n_test = int(len(y) * test_fraction)
    te, tr = order[:n_test], order[n_test:]
    out.mkdir(parents=True, exist_ok=True)
    seed_csv.write_pixel_csv(out / "input.csv", x[tr].reshape(len(tr), -1))
    seed_csv.write_label_csv(out / "labels.csv", y[tr])
    seed_csv.write_pixel_csv(out / "input_test.csv", x[te].reshape(len(te), -1))
    seed_csv.write_label_csv(out / "labels_test.csv", y[te])
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in ds.class_names))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", default=str(DEFAULT_SOURCE) if DEFAULT_SOURCE.is_dir() else "builtin:shapes?classes=2&n=2000&size=100")
    ap.add_argument("--data", type=Path, help="an existing seed CSV folder (input.csv, labels.csv, input_test.csv, labels_test.csv)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--models", default="seed_cnn", help="comma-separated cnnlab models (Keras runs the seed CNN)")
    ap.add_argument("--markdown", action="store_true", help="print a BENCHMARKS.md section")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="cnnlab-bench-"))
    data = args.data or prepare_seed_csv(args.source, HERE / ".data" / "seed_csv_100")
    keras_cmd = [sys.executable, str(HERE / "_keras_seed.py"), str(data), str(args.epochs), str(args.batch_size)]
    rows: dict[str, list[dict]] = {"keras": []}
    for i in range(args.repeats):
        sides = ["keras"] + args.models.split(",")
        if i % 2:
            sides.reverse()
        for side in sides:
            if side == "keras":
                res = run_side(keras_cmd)
            else:
                cold = work / f"cold-cache-{i}-{side}"  # first read: nothing cached
                res = run_side([sys.executable, str(HERE / "_cnnlab_seed.py"), str(data), str(args.epochs), str(args.batch_size), side, str(work / f"run-{side}")],
                               env={"CNNLAB_CACHE": str(cold)})
                # cached read: the same cache folder the run above just filled
                probe = "import json, time, cnnlab; t = time.perf_counter(); cnnlab.load_dataset(%r, val_split=0); print(json.dumps({'load_s': time.perf_counter() - t}))"
                cached = run_side([sys.executable, "-c", probe % str(data)], env={"CNNLAB_CACHE": str(cold)})
                res["cached_load_s"] = cached["load_s"]
            rows.setdefault(side, []).append(res)
            print(f"repeat {i + 1} {side}: " + json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()}), file=sys.stderr)

    k = rows["keras"]
    n_train, n_test = k[0]["n_train"], k[0]["n_test"]
    lines = []
    for side, rs in rows.items():
        lines.append(
            f"| {side} | {spread([r['load_s'] for r in rs])} | {spread([r['train_s'] for r in rs])} | {spread([r['eval_s'] for r in rs])} | "
            f"{spread([n_train * args.epochs / r['train_s'] for r in rs])} | {spread([n_test / r['eval_s'] for r in rs])} | "
            f"{spread([100 * r['test_accuracy'] for r in rs])} |"
        )
    ratio_lines = []
    for side, rs in rows.items():
        if side == "keras":
            continue
        tr = [kk["train_s"] / r["train_s"] for kk, r in zip(k, rs)]
        ev = [kk["eval_s"] / r["eval_s"] for kk, r in zip(k, rs)]
        ld = [kk["load_s"] / r["load_s"] for kk, r in zip(k, rs)]
        cl = [kk["load_s"] / r["cached_load_s"] for kk, r in zip(k, rs)]
        acc = [100 * (r["test_accuracy"] - kk["test_accuracy"]) for kk, r in zip(k, rs)]
        ratio_lines.append(f"| {side} | {spread(tr)}× | {spread(ev)}× | {spread(ld)}× | {spread(cl)}× | {spread(acc)} |")
    import torch

    from cnnlab.engine.device import cpu_description

    header = (
        f"### seed pipeline: cnnlab vs Keras — {time.strftime('%Y-%m-%d')}\n\n"
        f"Command: `python -m benchmarks.seed_vs_keras --repeats {args.repeats} --epochs {args.epochs} --batch-size {args.batch_size} --models {args.models}`  \n"
        f"Machine: {cpu_description()}; Python {platform.python_version()}, torch {torch.__version__}, TensorFlow {k[0]['version']}  \n"
        f"Data: {data if args.data else args.source} as seed CSVs, 100×100×3, {n_train} train / {n_test} test images; "
        f"{args.repeats} alternating repeats, median (min–max).\n\n"
        "| side | CSV load s | train s | evaluate s | train img/s | eval img/s | test acc % |\n|---|---|---|---|---|---|---|\n"
        + "\n".join(lines)
        + "\n\n| cnnlab model | training speed vs Keras | evaluation speed vs Keras | CSV first read vs np.loadtxt | cached read vs np.loadtxt | accuracy − Keras (points) |\n|---|---|---|---|---|---|\n"
        + "\n".join(ratio_lines)
        + "\n"
    )
    print(header)
    return 0


if __name__ == "__main__":
    sys.exit(main())
