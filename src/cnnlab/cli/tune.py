"""`cnnlab tune --data SPEC --trials N [--timeout S] [--space FILE.yaml] [--storage URL] [--study NAME] [--resume]
[--objective val_accuracy|val_loss] [--pruner median|halving|none] [--epochs N | --time-budget S] [--set KEY=VALUE]`."""

from __future__ import annotations

import argparse
import json
import sys

from cnnlab.cli._common import add_data_options, add_field_options, data_options, need_data, parse_key_value
from cnnlab.config import TrainConfig


def register(sub) -> None:
    p = sub.add_parser("tune", help="hyperparameter search with Optuna (TPE); best config as YAML for `cnnlab train --config`")
    add_data_options(p)
    p.add_argument("--trials", type=int, metavar="N", help="trials to run in this process (several processes add up)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="stop starting trials after this long")
    p.add_argument("--space", metavar="FILE.yaml", help="search space replacing the built-in one (format: docs/scale-out.md)")
    p.add_argument("--storage", metavar="URL", help="Optuna storage URL, e.g. postgresql://user:pw@host/db (default: sqlite in --out)")
    p.add_argument("--study", default="cnnlab", metavar="NAME", help="study name (default cnnlab)")
    p.add_argument("--resume", action="store_true", help="continue (or join) an existing study instead of creating it")
    p.add_argument("--objective", choices=("val_accuracy", "val_loss"), default="val_accuracy")
    p.add_argument("--pruner", choices=("median", "halving", "none"), default="median",
                   help="stop poor trials after an epoch: median of earlier trials (default), successive halving, or none")
    # train's flags, each fixing its value for every trial (removing it from the search space)
    add_field_options(p, TrainConfig, ("model", "epochs", "time_budget"), unset=None, overrides={
        "model": {"help": "fix the model (removes model from the search space)"},
        "epochs": {"metavar": "N", "help": "fix epochs per trial (removes epochs from the space)"},
        "time_budget": {"help": "train each trial for this long instead of searching epochs"}})
    p.add_argument("--set", type=parse_key_value, action="append", default=[], metavar="KEY=VALUE", dest="fixed",
                   help="fix a TrainConfig value for every trial (removes it from the space), e.g. --set augment=none")
    add_field_options(p, TrainConfig, ("seed",), overrides={"seed": {"default": 0, "help": "training seed of every trial (same data split and init)"}})
    p.add_argument("--sampler-seed", type=int, help="seed of the TPE sampler (default: random)")
    p.add_argument("--out", default="runs/tune", metavar="DIR", help="tune folder (default runs/tune)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    from cnnlab.config import config_from_dict
    from cnnlab.tune import space as sp
    from cnnlab.tune.study import tune

    fixed = dict(args.fixed)
    for key in ("model", "epochs", "time_budget"):
        if getattr(args, key) is not None:
            fixed[key] = getattr(args, key)
    base = config_from_dict({"data": need_data(args), "seed": args.seed, **data_options(args).load_kwargs(), **fixed},
                            source="tune options").validate()
    if args.space:
        space = {k: v for k, v in sp.load_space_file(args.space).items() if k not in fixed}
    else:
        space = sp.default_space(fixed)
    log = (lambda msg: None) if args.json else (lambda msg: print(msg, flush=True))
    try:
        res = tune(base.data, args.trials, out=args.out, space=space, storage=args.storage, study=args.study, resume=args.resume,
                   objective=args.objective, timeout_s=args.timeout, pruner=args.pruner, sampler_seed=args.sampler_seed,
                   base=base, log=log)
    except KeyboardInterrupt:  # the study keeps every finished trial; the interrupted one is recorded as failed
        print(f"interrupted — continue the study with the same command plus --resume (study {args.study!r})", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps({"study": res.study_name, "storage": res.storage, "out": str(res.out), "ran": res.ran,
                          "counts": res.counts, "best": res.best, "files": res.files}))
    else:
        b = res.best
        print(f"best: trial {b['number']} {args.objective} {b['value']:.4f} ({', '.join(f'{k}={v}' for k, v in b['params'].items())})")
        print(f"study {res.study_name!r}: {res.counts}; this process ran {res.ran}")
        for name, path in res.files.items():
            print(f"wrote {path}")
        print(f"train the best config: cnnlab train --config {res.files['best_config']}")
    return 0
