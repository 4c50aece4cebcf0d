"""`cnnlab lr-find`: the LR range test (cnnlab.engine.lr_find) — plot loss against learning rate, suggest an LR."""

from __future__ import annotations

import argparse
import json

from cnnlab.cli._common import add_data_options, add_field_options, data_options, need_data
from cnnlab.config import DEFAULT_BATCH_SIZE, TrainConfig


def register(sub) -> None:
    p = sub.add_parser("lr-find", help="LR range test: plot loss against learning rate and suggest an LR")
    add_data_options(p)
    # train's flags, with the defaults of a quick test on the tutorial's model
    add_field_options(p, TrainConfig, ("model", "model_args", "pretrained", "weights", "optimizer", "batch_size"), unset=None, overrides={
        "model": {"default": "seed_cnn", "help": "registry name (default seed_cnn)"},
        "model_args": {"default": []},
        "pretrained": {"help": "start from the model's ImageNet weights (the LRs of fine-tuning)"},
        "weights": {"help": "start from these weights (implies --pretrained)"},
        "optimizer": {"default": "auto"},
        "batch_size": {"default": DEFAULT_BATCH_SIZE, "help": None}})
    p.add_argument("--start-lr", type=float, default=1e-6)
    p.add_argument("--end-lr", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=100)
    add_field_options(p, TrainConfig, ("seed",), overrides={"seed": {"default": 0}})
    p.add_argument("--out", metavar="FILE.png", default="lr_find.png")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lr_find)


def cmd_lr_find(args: argparse.Namespace) -> int:
    from cnnlab import api
    from cnnlab.engine.lr_find import lr_range_test, save_plot

    cfg = TrainConfig(data=need_data(args), model=args.model, model_args=dict(args.model_args), optimizer=args.optimizer,
                      pretrained=args.pretrained, weights=args.weights,
                      batch_size=args.batch_size, seed=args.seed, **data_options(args).load_kwargs()).validate()
    ds = api.dataset_for_config(cfg)
    model = api.model_for_config(cfg, ds, seed=cfg.seed)
    res = lr_range_test(model, ds, cfg, args.start_lr, args.end_lr, args.steps)
    plot = save_plot(res, args.out)
    if args.json:
        print(json.dumps({"suggested_lr": res["suggested_lr"], "steps": res["steps"], "plot": str(plot),
                          "lrs": res["lrs"], "losses": res["losses"]}))
    else:
        sug = f"{res['suggested_lr']:.2g}" if res["suggested_lr"] else "none (too few steps before the loss exploded)"
        print(f"suggested lr: {sug}  ({res['steps']} steps)")
        print(f"saved {plot}")
    return 0
