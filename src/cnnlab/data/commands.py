"""`cnnlab data check SPEC` (registered through cli.COMMAND_MODULES)."""

from __future__ import annotations

import argparse
import json
import sys

from cnnlab.cli import _floats_or_ints


def add_commands(subparsers, data_subparsers) -> None:
    q = data_subparsers.add_parser("check", help="list every file training would skip, with its reason (exit 2 when any)")
    q.add_argument("spec", metavar="SPEC")
    q.add_argument("--channels", type=int, choices=(1, 3), default=None, help="3 = RGB, 1 = greyscale")
    q.add_argument("--image-shape", type=_floats_or_ints, metavar="H,W,C", default=None, help="shape of one seed-CSV row")
    q.add_argument("--classes", metavar="A,B,...", default=None, help="class names for numeric labels")
    q.add_argument("--show-ignored", action="store_true", help="also list ignored files (.DS_Store, Thumbs.db, non-image extensions)")
    q.add_argument("--json", action="store_true", help="print one JSON object (keys: spec, format, images, ok, classes, splits, bad, ignored)")
    q.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    from cnnlab.data.check import check_dataset

    opts = {}
    if args.channels:
        opts["channels"] = args.channels
    if args.classes:
        opts["classes"] = args.classes
    if args.image_shape:
        opts["image_shape"] = args.image_shape
    rep = check_dataset(args.spec, **opts)
    if args.json:
        print(json.dumps(rep.to_dict()))
    else:
        for path, reason in rep.bad:
            print(f"bad      {path}: {reason}")
        if args.show_ignored:
            for path, reason in rep.ignored:
                print(f"ignored  {path}: {reason}")
        splits = ", ".join(f"{k} {v}" for k, v in rep.splits.items())
        print(f"{rep.spec} ({rep.format}): {len(rep.classes)} classes, {rep.images} images checked, "
              f"{len(rep.bad)} bad, {len(rep.ignored)} ignored; readable: {splits or 'none'}")
    if rep.bad:
        print(f"error: {len(rep.bad)} of {rep.images} images are unreadable — training skips them up to --max-bad-fraction"
              " (records them in RUN/bad_files.txt); fix or remove them", file=sys.stderr)
        return 2
    return 0
