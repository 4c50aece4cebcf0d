"""The insight commands: explain (Grad-CAM, feature maps, filters), summary, report, compare."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cnnlab.cli._common import add_field_options
from cnnlab.config import CHANNELS, DEFAULT_CHANNELS, DEFAULT_IMAGE_SIZE, DEFAULT_NUM_CLASSES, TrainConfig
from cnnlab.errors import ConfigError, first_line


def register(sub) -> None:
    p = sub.add_parser("explain", help="Grad-CAM / Grad-CAM++ overlays, feature maps and first-layer filters for images")
    p.add_argument("run", metavar="MODEL|RUN_DIR")
    p.add_argument("paths", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--method", choices=("gradcam", "gradcam++", "both"), default="both", help="default: both, side by side")
    p.add_argument("--layer", metavar="NAME", help="conv layer to explain (default: the last; a wrong name lists the valid ones)")
    p.add_argument("--class", dest="class_name", metavar="NAME", help="explain this class instead of the predicted one")
    p.add_argument("--feature-maps", action="store_true", help="also save the layer's feature maps as a grid")
    p.add_argument("--filters", action="store_true", help="also save the first conv layer's learned filters")
    p.add_argument("--out", metavar="DIR", default="explain", help="output folder (default: explain/)")
    p.add_argument("--json", action="store_true", help="print one JSON list (class, probability, layer, files per image)")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("summary", help="per-layer output shape, parameters, MACs, receptive field, stride, memory")
    p.add_argument("run", nargs="?", metavar="MODEL|RUN_DIR", help="a trained model (or use --model NAME --image-size N)")
    p.add_argument("--model", metavar="NAME", help="registry name, for a model not trained yet")
    p.add_argument("--image-size", type=int, metavar="N", default=DEFAULT_IMAGE_SIZE)
    p.add_argument("--channels", type=int, choices=CHANNELS, default=DEFAULT_CHANNELS)
    p.add_argument("--num-classes", type=int, default=DEFAULT_NUM_CLASSES)
    add_field_options(p, TrainConfig, ("model_args",), overrides={"model_args": {"default": []}})  # train's --model-arg
    p.add_argument("--json", action="store_true", help="print one JSON object (schema: docs/insight.md)")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("report", help="(re)write RUN/report.html: one self-contained page about a training run")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--data", metavar="SPEC", help="dataset to evaluate on (default: the run's config.yaml data)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="table of configs and final metrics of runs, overlaid curves (PNG + HTML)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders, in the order the table and figure show them; a cross-validation"
                   " folder (train --folds K) stands for its K fold runs, a tune folder (tune --out DIR) for its best trial")
    p.add_argument("--out", metavar="DIR", default="compare", help="where compare.png and compare.html go (default: compare/)")
    p.add_argument("--json", action="store_true", help="print one JSON object (schema: docs/insight.md)")
    p.set_defaults(func=cmd_compare)


def cmd_explain(args: argparse.Namespace) -> int:
    from cnnlab.insight.explain import explain

    records = explain(args.run, args.paths, method=args.method, layer=args.layer, class_name=args.class_name,
                      feature_maps=args.feature_maps, filters=args.filters, out=args.out,
                      note=lambda msg: print(f"note: {msg}", file=sys.stderr))
    if args.json:
        print(json.dumps(records))
        return 0
    for rec in records:
        if "filters" in rec:
            print(f"saved {rec['filters']} (filters of {rec['layer']})")
        else:
            print(f"{rec['path']}: {rec['class']} ({rec['probability']:.1%}), layer {rec['layer']} — saved {rec['gradcam']}"
                  + (f" and {rec['feature_maps']}" if "feature_maps" in rec else ""))
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from cnnlab import api, models
    from cnnlab.insight.summary import print_summary, summarize

    if (args.run is None) == (args.model is None):
        raise ConfigError("summary needs either MODEL|RUN_DIR or --model NAME [--image-size N] — not both, not neither")
    if args.run is not None:
        clf = api.load(args.run)
        model, shape = clf.model, clf.input_shape
    else:
        model = models.create_model(args.model, args.num_classes, args.channels, args.image_size, **dict(args.model_args))
        shape = (args.channels, args.image_size, args.image_size)
    try:
        s = summarize(model, shape)
    except RuntimeError as e:
        raise ConfigError(f"{args.run or args.model} does not run on {shape[1]}x{shape[2]}x{shape[0]} input ({first_line(e, 120)}) — try another --image-size") from None
    if args.json:
        print(json.dumps(s))
    else:
        print_summary(s)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cnnlab import api
    from cnnlab.insight.report import write_report

    run = Path(args.run)
    if not run.is_dir():
        raise ConfigError(f"{run}: not a run folder — pass the folder `cnnlab train` wrote (e.g. runs/train)")
    if not (run / "model.safetensors").exists():
        raise ConfigError(f"{run}: no model.safetensors — the run did not finish (resume it with `cnnlab train --resume {run}`)")
    clf = api.load(run)
    ds = api.dataset_for_model(clf, args.data) if args.data else None
    print(f"saved {write_report(run, ds, clf)}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from cnnlab.insight import compare as C

    result = C.compare_runs(args.runs)
    for w in result["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    out = Path(args.out)
    png = C.save_overlaid_curves(result, out / "compare.png")
    page = C.write_compare_html(result, png, out / "compare.html")
    if args.json:
        print(json.dumps({**C.public(result), "files": {"curves": str(png), "html": str(page)}}))
        return 0
    from rich.console import Console
    from rich.table import Table

    header, rows = C.table_rows(result)
    t = Table(title="runs")
    for h in header:
        t.add_column(h, justify="left" if h in ("run", "model", "setup") else "right")
    for r in rows:
        t.add_row(*r)
    Console(width=200).print(t)  # wide enough for a setup column; a narrower table takes only what it needs
    print(f"saved {png} and {page}")
    return 0
