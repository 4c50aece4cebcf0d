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
        idx = rng.choice(len(s), size=min(n, len(s)), replace=False)
        x, titles = s.x[idx], [ds.class_names[int(v)] for v in s.y[idx]]
        preset = None
        if args.augmented:
            from cnnlab.config import scratch_augment
            from cnnlab.data.augment import augment_uint8, resolve_ops, training_size

            h, w, c = ds.image_shape
            preset = scratch_augment(c, min(h, w)) if args.augment == "auto" else args.augment
            ops = resolve_ops(preset, dict(args.aug_args))
            x, notes = augment_uint8(x, s.y[idx], ops, args.seed or 0, training_size(args.train_size, x.shape[1:3]))
            titles = [_name_partner(t + note, ds.class_names) for t, note in zip(titles, notes)]
        out = plots.save_grid(x, titles, Path(args.out or ("augmented.png" if preset else "samples.png")),
                              suptitle=f"augmented ({preset})" if preset else "")
    else:
        i = int(rng.integers(len(s)))
        out = plots.save_image(s.x[i], f"{ds.class_names[int(s.y[i])]}  ({args.split} #{i})", Path(args.out or "sample.png"))
        print(f"{args.split} image #{i}: {ds.class_names[int(s.y[i])]}")
    print(f"saved {out}")
    return 0


def _name_partner(title: str, names: list[str]) -> str:
    """'cat (70%) + 1 (30%)' -> 'cat (70%)\\n+ dog (30%)' for mixup/cutmix grids."""
    head, sep, tail = title.partition(" + ")
    if not sep:
        return title
    idx, _, rest = tail.partition(" ")
    return f"{head}\n+ {names[int(idx)]} {rest}"
