"""`cnnlab evaluate` and `cnnlab predict`: a trained model on a dataset split, or on image files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cnnlab.cli._common import EVAL_SPLITS, add_data_options, data_options, need_data, print_notes
from cnnlab.errors import ConfigError

TTA_HELP = "test-time augmentation: average each image with its mirror (and, for a model with a test scale, at the trained size and enlarged)"


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="loss and accuracy of a trained model on a dataset split")
    p.add_argument("run", metavar="MODEL|RUN_DIR")
    add_data_options(p)
    p.add_argument("--split", choices=EVAL_SPLITS, help="default: test when present, else val")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: ~1.1 megapixels, at most 256)")
    p.add_argument("--json", action="store_true", help="print one JSON object (schema: docs/insight.md)")
    p.add_argument("--plots", metavar="DIR", help="also save confusion matrix, calibration, per-class, top-loss figures in DIR")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=False, help=TTA_HELP)  # the same kind of flag as train's --tta
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="predict image files/folders, or a random test image with --data --random")
    p.add_argument("run", metavar="MODEL|RUN_DIR")
    p.add_argument("paths", nargs="*", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=False, help=TTA_HELP)
    p.add_argument("--json", action="store_true")
    add_data_options(p)
    p.add_argument("--random", action="store_true", help="with --data: predict a random image and save a PNG with prediction and truth")
    p.add_argument("--backend", choices=("auto", "torch", "onnxruntime"), default="auto",
                   help="auto: the run's ONNX export with onnxruntime when it is there and up to date (no PyTorch start-up),"
                        " else PyTorch; onnxruntime: insist on the export (`cnnlab export RUN --format onnx`)")
    p.add_argument("--split", choices=EVAL_SPLITS)
    p.add_argument("--seed", type=int, help="pick the random image reproducibly")
    p.add_argument("--out", metavar="FILE.png")
    p.set_defaults(func=cmd_predict)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cnnlab import api

    if args.plots is not None:
        from cnnlab.io import writable_folder

        writable_folder(args.plots, "--plots")  # before the evaluation, not after it
    clf = api.load(args.run)
    ds = api.dataset_for_model(clf, need_data(args), **data_options(args).load_kwargs())
    print_notes(ds)
    res = api.evaluate(clf, ds, split=args.split, batch_size=args.batch_size, plots=args.plots, tta=args.tta)
    if args.json:
        print(json.dumps(res))
    else:
        print_evaluation(res)
    return 0


def print_evaluation(res: dict) -> None:
    """Human-readable `cnnlab evaluate` output (the --json form carries the same numbers)."""
    from rich.console import Console
    from rich.table import Table

    def f(v) -> str:
        return "-" if v is None else f"{v:.4f}"

    if res.get("task") == "multi_label":
        return print_multi_label_evaluation(res, f)
    print(f"{res['split']}: loss {f(res['loss'])}  accuracy {f(res['accuracy'])}  ({res['n']} images)")
    extra = [f"top-{k} accuracy {v:.4f}" for k, v in res.get("top_k_accuracy", {}).items()]
    extra.append(f"ROC-AUC {f(res.get('roc_auc'))}")
    extra.append(f"ECE {f(res.get('calibration', {}).get('ece'))}")
    print("  ".join(extra))
    t = Table()
    for col in ("class", "precision", "recall", "f1", "support"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for r in res["per_class"]:
        t.add_row(r["class"], f(r["precision"]), f(r["recall"]), f(r["f1"]), str(r["support"]))
    for name in ("macro_avg", "weighted_avg"):
        a = res[name]
        t.add_row(name.replace("_", " "), f(a["precision"]), f(a["recall"]), f(a["f1"]), str(res["n"]))
    Console(width=100).print(t)
    if res.get("most_confused"):
        print("most confused: " + ", ".join(f"{p['true']} → {p['predicted']} ({p['count']})" for p in res["most_confused"][:5]))
    for name, path in (res.get("plots") or {}).items():
        print(f"saved {path}")


def print_multi_label_evaluation(res: dict, f) -> None:
    """A multi-label model's evaluation: per-class precision/recall/F1/AP at each class's threshold, micro/macro, mAP."""
    from rich.console import Console
    from rich.table import Table

    print(f"{res['split']}: loss {f(res['loss'])}  mAP {f(res['map'])}  micro-F1 {f(res['micro_avg']['f1'])}  macro-F1"
          f" {f(res['macro_avg']['f1'])}  ({res['n']} images)")
    print(f"accuracy per label {f(res['accuracy'])}  exact match {f(res['exact_match'])}  labels per image: true"
          f" {f(res['labels_per_image']['true'])}, predicted {f(res['labels_per_image']['predicted'])}")
    t = Table()
    for col in ("class", "precision", "recall", "f1", "AP", "support", "predicted", "threshold"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for r in res["per_class"]:
        t.add_row(r["class"], f(r["precision"]), f(r["recall"]), f(r["f1"]), f(r["average_precision"]), str(r["support"]),
                  str(r["predicted"]), f"{r['threshold']:.3f}")
    for name in ("micro_avg", "macro_avg"):
        a = res[name]
        t.add_row(name.replace("_", " "), f(a["precision"]), f(a["recall"]), f(a["f1"]), f(res["map"]) if name == "macro_avg" else "", "", "", "")
    Console(width=110).print(t)
    for name, path in (res.get("plots") or {}).items():
        print(f"saved {path}")


def prediction_line(r: dict) -> str:
    """One image's prediction in words: the class and its probability with the runners-up; multi-label: every label
    at or above its threshold."""
    if "labels" in r:
        labels = ", ".join(f"{t['class']} {t['probability']:.1%}" for t in r["labels"]) or "no label above its threshold"
        return f"{r['path']}: {labels}"
    alts = ", ".join(f"{t['class']} {t['probability']:.1%}" for t in r["top_k"][1:])
    return f"{r['path']}: {r['class']} ({r['probability']:.1%})" + (f"  [{alts}]" if alts else "")


def cmd_predict(args: argparse.Namespace) -> int:
    from cnnlab.data.images import expand_image_paths
    from cnnlab.onnx_predictor import predictor_for

    if not args.random and not args.paths:
        raise ConfigError("predict needs IMAGE_OR_FOLDER paths, or --data SPEC --random")
    if args.top_k < 1:
        raise ConfigError(f"--top-k must be a whole number of at least 1 (the classes listed per image), got {args.top_k}")
    lite = None if args.random else predictor_for(args.run, args.backend, args.tta)  # an ONNX export: no torch import
    if lite is not None:
        results = lite.predict_files(expand_image_paths(args.paths), args.top_k)
    else:
        from cnnlab import api

        clf = api.load(args.run)
        if args.random:
            return _predict_random(args, clf)
        results = clf.predict_files(expand_image_paths(args.paths), args.top_k, tta=args.tta)
    failed = [r for r in results if "error" in r]
    if args.json:
        print(json.dumps(results))
    else:
        for r in results:
            if "error" not in r:
                print(prediction_line(r))
    for r in failed:
        print(f"error: {r['error']}", file=sys.stderr)
    return 2 if failed else 0


def _predict_random(args: argparse.Namespace, clf) -> int:
    """`predict --data SPEC --random`: one random image of a split, its prediction and truth, saved as a PNG."""
    import numpy as np

    from cnnlab import api
    from cnnlab.insight import plots

    ds = api.dataset_for_model(clf, need_data(args), **data_options(args).load_kwargs())
    print_notes(ds)
    split = args.split or ds.default_eval_split()
    s = ds.split(split)
    i = int(np.random.default_rng(args.seed).integers(len(s)))
    res = clf.describe(clf.predict_proba(s.x[i : i + 1], tta=args.tta)[0], args.top_k)
    truth = ds.label_text(s.y[i])
    if "labels" in res:  # multi-label: right when the predicted label set is exactly the true one
        ok = set(res["class"].split()) == {c for c, v in zip(ds.class_names, s.y[i]) if v}
        shown = res["class"] or "(no label)"
    else:
        ok = res["class"] == truth
        shown = f"{res['class']} ({res['probability']:.1%})"
    out = Path(args.out or "prediction.png")
    plots.save_image(s.x[i], f"predicted: {shown}\ntrue: {truth}", out, plots.OK_COLOUR if ok else plots.WRONG_COLOUR)
    record = {"split": split, "index": i, **({"path": s.paths[i]} if s.paths else {}), **res, "truth": truth, "correct": ok, "image": str(out)}
    if args.json:
        print(json.dumps(record))
    else:
        print(f"{split} image #{i}: predicted {shown}, true {truth} — {'right' if ok else 'wrong'}")
        print(f"saved {out}")
    return 0
