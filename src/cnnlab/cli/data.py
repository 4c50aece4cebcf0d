"""`cnnlab data ACTION`: dataset tools — convert (to the seed's CSV layout or image folders), check (every file
training would skip, with its reason)."""

from __future__ import annotations

import argparse
import json
import sys

from cnnlab.cli._common import Parser, add_data_options, data_options, print_notes
from cnnlab.errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser("data", help="dataset tools: convert, check")
    p.set_defaults(func=_needs_action)
    actions = p.add_subparsers(dest="data_command", metavar="ACTION", parser_class=Parser)

    q = actions.add_parser("convert", help="write any dataset in the seed's CSV layout (--to csv), as image folders (--to folder) or as images + labels.csv (--to table)")
    q.add_argument("src", metavar="SPEC")
    q.add_argument("out", metavar="OUT_DIR")
    q.add_argument("--to", choices=("csv", "folder", "table"), required=True,
                   help="csv: the seed's pixel CSVs; folder: one subfolder per class; table: images/ + labels.csv (file, label, split)")
    q.add_argument("--overwrite", action="store_true")
    add_data_options(q)
    q.set_defaults(func=cmd_convert)

    q = actions.add_parser("check", help="list every file training would skip, with its reason (exit 2 when any)")
    q.add_argument("spec", metavar="SPEC")
    add_data_options(q, only=("image_shape", "channels", "classes", "labels", "file_col", "label_col", "label_delim"))  # what reading needs
    q.add_argument("--show-ignored", action="store_true", help="also list ignored files (.DS_Store, Thumbs.db, non-image extensions)")
    q.add_argument("--json", action="store_true", help="print one JSON object (keys: spec, format, images, ok, classes, splits, bad, ignored)")
    q.set_defaults(func=cmd_check)


def _needs_action(args: argparse.Namespace) -> int:
    raise ConfigError("`cnnlab data` needs an action (e.g. convert) — see `cnnlab data --help`")


def cmd_convert(args: argparse.Namespace) -> int:
    from cnnlab import api
    from cnnlab.data.convert import convert

    opts = data_options(args).load_kwargs()
    opts.setdefault("val_split", 0.0)  # keep the source's splits as they are
    opts.setdefault("stream", False)  # conversion writes every image anyway
    ds = api.load_dataset(args.src, **opts)
    print_notes(ds)
    written = convert(ds, args.out, to=args.to, overwrite=args.overwrite)
    print(f"wrote {args.to} dataset to {args.out}: " + ", ".join(f"{k} {v} images" for k, v in written.items()))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from cnnlab.data.check import check_dataset

    rep = check_dataset(args.spec, **data_options(args).load_kwargs())
    if args.json:
        print(json.dumps(rep.to_dict()))
    else:
        for note in rep.notes:
            print(note)
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
