"""`cnnlab show`: a random training image, or a grid, with labels — optionally as training augments them."""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnlab.cli._common import add_data_options, add_field_options, data_options, need_data, print_notes
from cnnlab.config import TrainConfig
from cnnlab.errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser("show", help="save a PNG of a random training image (or a grid) with labels")
    add_data_options(p)
    p.add_argument("--random", action="store_true", help="one random image (the default)")
    p.add_argument("--grid", type=int, metavar="N", help="N labelled samples in a grid")
    p.add_argument("--split", choices=("train", "val", "test"), default="train")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", metavar="FILE.png")
    p.add_argument("--augmented", action="store_true", help="show the images as training augments them")
    # train's own --aug / --aug-arg / --train-size (same choices and defaults)
    add_field_options(p, TrainConfig, ("augment", "aug_args", "train_size"), overrides={
        "augment": {"default": "auto", "help": "with --augmented: the preset (default auto: as the default recipe trains from scratch —"
                                               " standard for colour images of 48 px or more, light otherwise)"},
        "aug_args": {"default": []},
        "train_size": {"default": None, "help": "with --augmented: N x N crops, as `train --train-size N` trains on"}})
    p.set_defaults(func=cmd_show)


def cmd_show(args: argparse.Namespace) -> int:
    import numpy as np

    from cnnlab import api
    from cnnlab.insight import plots

    if args.train_size is not None and (not args.augmented or args.train_size < 8):
        raise ConfigError(f"--train-size {args.train_size}: " + ("a size in pixels >= 8" if args.augmented else "only shown with --augmented"))
    ds = api.load_dataset(need_data(args), **data_options(args).load_kwargs())
    print_notes(ds)
    s = ds.split(args.split)
    rng = np.random.default_rng(args.seed)
    if args.grid or args.augmented:
        n = args.grid if args.grid is not None else 16
        if n < 1:
            raise ConfigError("--grid N needs N >= 1")
        preset = None
        if args.augmented:
            from cnnlab.insight.notebook import augmented_samples

            x, titles, preset = augmented_samples(ds, args.augment, dict(args.aug_args), args.train_size, n, args.split, args.seed)
        else:
            idx = rng.choice(len(s), size=min(n, len(s)), replace=False)
            x, titles = s.x[idx], [ds.label_text(v) for v in s.y[idx]]
        out = plots.save_grid(x, titles, Path(args.out or ("augmented.png" if preset else "samples.png")),
                              suptitle=f"augmented ({preset})" if preset else "")
    else:
        i = int(rng.integers(len(s)))
        out = plots.save_image(s.x[i], f"{ds.label_text(s.y[i])}  ({args.split} #{i})", Path(args.out or "sample.png"))
        print(f"{args.split} image #{i}: {ds.label_text(s.y[i])}")
    print(f"saved {out}")
    return 0

