"""Export formats side by side: file size, single-image latency, batch throughput, accuracy, agreement.

    python -m benchmarks.export_formats                                  # seed_cnn, resnet9, efficientnet_lite0 (pretrained)
    python -m benchmarks.export_formats --models seed_cnn --repeats 1    # a quick look
    python -m benchmarks.export_formats --keep runs/bench-export         # keep (and on the next run reuse) the trained runs

For each model, a run is trained on the cats/dogs photos (--source, split at random into train/ and a
held-out test/ of --test-per-class per class, symlinks only), as a user would (`cnnlab train`):
  seed_cnn 100 px from scratch (--seed-epochs), resnet9 96 px from scratch (--resnet9-budget seconds),
  efficientnet_lite0 224 px from its ImageNet weights, backbone frozen (head only).
Then every format is exported with `cnnlab.export.export_model` (int8 calibrated on --calibration train
images; the agreement floors are reported, not enforced, here), and each format runs in its own process,
alternating over --repeats (so drifting machine load hits every side alike), on the held-out photos:
- batch throughput: images/s classifying all held-out images in batches of --batch-size (uint8 in,
  preprocessing included: it is inside every exported model; PyTorch: `Classifier.predict_proba`);
- single-image latency: p50/p99 over --single calls with one image (what a service answers per request);
- accuracy on the held-out photos, and top-1 agreement with PyTorch's fp32 predictions.
Each runtime uses its default threads on this machine's cores (PyTorch: torch.set_num_threads(cores)).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import run_alternating, spread, time_single
from benchmarks.default_recipe import DEFAULT_SOURCE, split_folder

MODELS = ("seed_cnn", "resnet9", "efficientnet_lite0")
SIDES = ("torch", "onnx", "onnx-fp16", "onnx-int8", "torchscript", "openvino")


def train_command(model: str, data: Path, out: Path, args: argparse.Namespace) -> list[str]:
    base = [sys.executable, "-m", "cnnlab", "train", "--data", str(data), "--model", model, "--out", str(out), "--quiet", "--overwrite", "--seed", "0"]
    if model == "seed_cnn":
        return base + ["--image-size", "100", "--epochs", str(args.seed_epochs), "--no-pretrained"]
    if model == "resnet9":
        return base + ["--image-size", "96", "--time-budget", str(args.resnet9_budget), "--no-pretrained"]
    return base + ["--image-size", "224", "--pretrained", "--freeze"]


def side(name: str, run: Path, work: Path, batch: int, calls: int) -> dict:
    """One format in this process: throughput, latency and the predicted class of every held-out image."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    x = np.load(work / "test_x.npy")
    if name == "torch":
        from cnnlab.engine.predictor import Classifier

        model = Classifier.load(run)
        predict = lambda xb: model.predict_proba(xb, batch_size=len(xb))  # noqa: E731
        version = torch.__version__
    else:
        from cnnlab.export import load_exported

        exports = json.loads((work / "exports.json").read_text())
        model = load_exported(exports[name]["path"])
        predict = model.predict_proba
        version = {"onnxruntime": lambda: __import__("onnxruntime").__version__, "torchscript": lambda: torch.__version__,
                   "openvino": lambda: __import__("openvino").__version__.split("-")[0]}[model.runtime]()
    predict(x[:batch])  # warm-up
    t0 = time.perf_counter()
    preds = np.concatenate([predict(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])
    batch_s = time.perf_counter() - t0
    lat = np.asarray(time_single(predict, x, calls, warmup=3)) * 1e3
    return {"side": name, "version": version, "batch_img_s": len(x) / batch_s, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "pred": preds.tolist()}


def export_all(run: Path, data: Path, work: Path, calibration: int) -> dict:
    """Every format next to the run; the exports' own figures and export times."""
    from cnnlab.api import dataset_for_model
    from cnnlab.engine.predictor import Classifier
    from cnnlab.export import export_model

    clf = Classifier.load(run)
    ds = dataset_for_model(clf, str(data))
    test = ds.split("test")
    np.save(work / "test_x.npy", np.asarray(test.x))
    np.save(work / "test_y.npy", np.asarray(test.y))
    out = {"torch": {"path": str(run / "model.safetensors"), "size_bytes": (run / "model.safetensors").stat().st_size, "export_s": 0.0}}
    for fmt in SIDES[1:]:
        t0 = time.perf_counter()
        res = export_model(clf, format=fmt, data=ds, calibration=calibration, holdout=len(test), min_agreement=0.0)
        out[fmt] = {**res, "export_s": time.perf_counter() - t0}
        print(f"exported {fmt}: {json.dumps({k: v for k, v in res.items() if k not in ('class_names', 'sidecar')})}", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="photos, one subfolder per class")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--seed-epochs", type=int, default=10)
    ap.add_argument("--resnet9-budget", type=int, default=240, help="resnet9's --time-budget (seconds)")
    ap.add_argument("--calibration", type=int, default=100, help="int8 calibration images (train split)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--single", type=int, default=100, help="single-image calls per side and repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="keep the runs and exports here; a model whose run is there is not trained again")
    ap.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(side(args.child, args.run, args.workdir, args.batch_size, args.single)))
        return 0
    models = [m for m in args.models.split(",") if m]
    if bad := [m for m in models if m not in MODELS]:
        print(f"--models: unknown model {bad[0]!r} — choose from {', '.join(MODELS)}", file=sys.stderr)
        return 2
    if not args.source.is_dir():
        print(f"{args.source}: no such folder — pass --source PHOTOS (one subfolder per class)", file=sys.stderr)
        return 2
    from cnnlab.engine.device import cpu_description

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: still remove the temp folder
    tmp = Path(tempfile.mkdtemp(prefix="cnnlab-export-formats-"))
    sides = list(SIDES) if __import__("importlib").util.find_spec("openvino") else [s for s in SIDES if s != "openvino"]
    tables = []
    try:
        data = tmp / "data"
        split_folder(args.source, data, args.test_per_class)
        runs = args.keep or tmp / "runs"
        for model in models:
            run, work = runs / model, tmp / f"work-{model}"
            work.mkdir(parents=True)
            train_s = None
            if not (run / "model.safetensors").is_file():
                t0 = time.perf_counter()
                p = subprocess.run(train_command(model, data, run, args), capture_output=True, text=True)
                if p.returncode != 0:
                    raise SystemExit(f"training {model} failed:\n{p.stderr[-3000:]}")
                train_s = time.perf_counter() - t0
            exports = export_all(run, data, work, args.calibration)
            (work / "exports.json").write_text(json.dumps(exports))
            results = run_alternating("benchmarks.export_formats", [s for s in sides if s in exports], args.repeats, [
                "--run", str(run), "--workdir", str(work), "--batch-size", str(args.batch_size), "--single", str(args.single)])
            y = np.load(work / "test_y.npy")
            tables.append(_table(model, run, exports, results, y, train_s, args))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"Command: `{' '.join(['python -m benchmarks.export_formats', *(argv if argv is not None else sys.argv[1:])])}`  ")
    print(f"Machine: {cpu_description()}; {time.strftime('%Y-%m-%d %H:%M')}; load average {os.getloadavg()[0]:.2f} at the end  ")
    print(f"{args.source}: {args.test_per_class} held-out photos per class; batch {args.batch_size}; {args.single} single-image calls; "
          f"{args.repeats} alternating repeats, median (min–max); int8 calibrated on {args.calibration} train photos.\n")
    print("\n\n".join(tables))
    return 0


def _table(model: str, run: Path, exports: dict, results: dict, y: np.ndarray, train_s: float | None, args) -> str:
    from cnnlab.engine.predictor import Classifier

    ref = np.asarray(results["torch"][0]["pred"])  # predictions are the same in every repeat

    c, h, w = Classifier.load(run).input_shape
    lines = [f"**{model}** {h}×{w}, {len(y)} held-out photos" + (f"; trained in {train_s:.0f} s" if train_s else "") + ":\n",
             "| format | runtime | file MB | export s | single p50 ms | single p99 ms | batch img/s | throughput vs PyTorch | accuracy | top-1 agreement with PyTorch |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, rs in results.items():
        e = exports[name]
        preds = np.asarray(rs[0]["pred"])
        ratio = spread([r["batch_img_s"] / t["batch_img_s"] for r, t in zip(rs, results["torch"])]) + "×" if name != "torch" else "—"
        lines.append(f"| {name} | {e.get('runtime', 'torch')} {rs[0]['version']} | {e['size_bytes'] / 1e6:.2f} | {e['export_s']:.1f} | "
                     f"{spread([r['p50_ms'] for r in rs])} | {spread([r['p99_ms'] for r in rs])} | {spread([r['batch_img_s'] for r in rs])} | "
                     f"{ratio} | {np.mean(preds == y):.2%} | {np.mean(preds == ref):.2%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
