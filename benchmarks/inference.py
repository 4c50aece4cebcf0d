"""Inference speed of the seed model: cnnlab (torch eager), cnnlab's ONNX export in ONNX Runtime, and Keras.

    python -m benchmarks.inference                       # seed_cnn 100x100x3, 2048 images, batch 256, 3 repeats
    python -m benchmarks.inference --model resnet9 --size 96 --sides torch,onnxruntime

Each side runs in its own process (alternating over the repeats, so drifting machine load hits all sides)
and measures, on the same random uint8 images:
- batch throughput: images/s classifying all images in batches of --batch-size, preprocessing included
  (uint8 -> scaled float): cnnlab's `Classifier.predict_proba` (fp32, what `cnnlab evaluate/predict` run),
  the exported ONNX model (preprocessing inside the graph, uint8 input) in an onnxruntime session, and
  Keras' `model.predict` on the same images scaled to [0, 1] as the tutorial does;
- single-image latency: p50/p99 over --single calls with one image, the way a service answers one request:
  `predict_proba(x[None])`, `session.run` on one image, and Keras' direct call `model(x, training=False)`
  (faster than `model.predict` for one image).
Weights are untrained (speed does not depend on their values); Keras' model is the tutorial's, layer for
layer. Needs the optional `bench` extra (tensorflow-cpu) for the Keras side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import run_alternating, spread, time_single

SIDES = ("torch", "onnxruntime", "keras")


def _images(n: int, size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q))


def side_torch_or_onnx(side: str, model_name: str, size: int, n: int, batch: int, calls: int, workdir: Path) -> dict:
    import torch

    from cnnlab.engine.model_file import model_metadata, save_model_file
    from cnnlab.engine.predictor import Classifier
    from cnnlab.models import create_model

    path = workdir / f"{model_name}.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        model = create_model(model_name, 2, 3, (size, size)).eval()
        save_model_file(path, model, model_metadata(model, ["cat", "dog"], (3, size, size)))
    x = _images(n, size)
    if side == "torch":
        clf = Classifier.load(path)
        batch_fn = lambda: clf.predict_proba(x, batch_size=batch)  # noqa: E731
        one = lambda xb: clf.predict_proba(xb, batch_size=1)  # noqa: E731
        version = torch.__version__
    else:
        import onnxruntime as ort

        from cnnlab.export import export_onnx

        onnx_path = workdir / f"{model_name}.onnx"
        if not onnx_path.exists():
            export_onnx(path, out=onnx_path)
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        batch_fn = lambda: [sess.run(None, {name: x[i : i + batch]}) for i in range(0, n, batch)]  # noqa: E731
        one = lambda xb: sess.run(None, {name: xb})  # noqa: E731
        version = ort.__version__
    batch_fn()  # warm-up
    t0 = time.perf_counter()
    batch_fn()
    batch_s = time.perf_counter() - t0
    lat = time_single(one, x, calls, warmup=5)
    return {"side": side, "version": version, "batch_img_s": n / batch_s, "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99)}


def side_keras(size: int, n: int, batch: int, calls: int) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    from tensorflow.keras import Sequential
    from tensorflow.keras.layers import Conv2D, Dense, Flatten, Input, MaxPooling2D

    tf.keras.utils.set_random_seed(0)
    model = Sequential([
        Input((size, size, 3)),
        Conv2D(32, (3, 3), activation="relu"), MaxPooling2D((2, 2)),
        Conv2D(32, (3, 3), activation="relu"), MaxPooling2D((2, 2)),
        Flatten(), Dense(64, activation="relu"), Dense(1, activation="sigmoid"),
    ])
    x = _images(n, size)
    batch_fn = lambda: model.predict(x / 255.0, batch_size=batch, verbose=0)  # noqa: E731
    one = lambda xb: model(xb / 255.0, training=False).numpy()  # noqa: E731
    batch_fn()
    t0 = time.perf_counter()
    batch_fn()
    batch_s = time.perf_counter() - t0
    lat = time_single(one, x, calls, warmup=5)
    return {"side": "keras", "version": tf.__version__, "batch_img_s": n / batch_s, "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99)}


def _child(args: argparse.Namespace) -> None:
    if args.child == "keras":
        res = side_keras(args.size, args.images, args.batch_size, args.single)
    else:
        res = side_torch_or_onnx(args.child, args.model, args.size, args.images, args.batch_size, args.single, Path(args.workdir))
    print(json.dumps(res))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="seed_cnn", help="cnnlab registry model (the Keras side is always the tutorial's net)")
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--single", type=int, default=200, help="single-image calls per side and repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sides", default=",".join(SIDES))
    ap.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args)
        return 0
    sides = [s for s in args.sides.split(",") if s]
    bad = [s for s in sides if s not in SIDES]
    if bad:
        print(f"--sides: unknown side {bad[0]!r} — choose from {', '.join(SIDES)}", file=sys.stderr)
        return 2
    if args.model != "seed_cnn" and "keras" in sides:
        sides.remove("keras")  # the Keras peer is the tutorial's net only
    from cnnlab.engine.device import cpu_description

    with tempfile.TemporaryDirectory(prefix="cnnlab-inference-") as work:
        results = run_alternating("benchmarks.inference", sides, args.repeats, [
            "--workdir", work, "--model", args.model, "--size", str(args.size), "--images", str(args.images),
            "--batch-size", str(args.batch_size), "--single", str(args.single)])
    print(f"Command: `{' '.join(['python -m benchmarks.inference', *(argv if argv is not None else sys.argv[1:])])}`  ")
    print(f"Machine: {cpu_description()}; {time.strftime('%Y-%m-%d %H:%M')}; load average {os.getloadavg()[0]:.2f} at the end  ")
    print(f"{args.model} {args.size}×{args.size}×3, {args.images} random uint8 images, batch {args.batch_size}; "
          f"{args.single} single-image calls; {args.repeats} alternating repeats, median (min–max).\n")
    print("| side | version | batch img/s | single image p50 ms | single image p99 ms | batch img/s vs Keras | single-image speed vs Keras (Keras p50 ÷ p50) |")
    print("|---|---|---|---|---|---|---|")
    ref = results.get("keras")
    for side in sides:
        rs = results[side]
        tput = [r["batch_img_s"] for r in rs]
        p50 = [r["p50_ms"] for r in rs]
        vs_b = vs_l = "—"
        if ref and side != "keras":
            vs_b = spread([a["batch_img_s"] / k["batch_img_s"] for a, k in zip(rs, ref)]) + "×"
            vs_l = spread([k["p50_ms"] / a["p50_ms"] for a, k in zip(rs, ref)]) + "×"
        print(f"| {side} | {rs[0]['version']} | {spread(tput)} | {spread(p50)} | {spread([r['p99_ms'] for r in rs])} | {vs_b} | {vs_l} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
