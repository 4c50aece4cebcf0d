"""LR range test (`cnnlab lr-find`): raise the LR exponentially batch by batch, record the smoothed loss,
stop when it explodes, and suggest an LR where the loss falls fastest (Smith 2015; fastai's lr_find).

The model and data are set up exactly as `cnnlab train` would (same recipe, augmentation, precision),
but nothing is saved except an optional plot: the model is thrown away afterwards.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from cnnlab.config import TrainConfig
from cnnlab.data.augment import Augmenter, batch_generator, resolve_ops, soft_targets, training_size
from cnnlab.data.loader import BatchReader
from cnnlab.engine.device import autocast, resolve_device, resolve_precision
from cnnlab.engine.inference import to_input
from cnnlab.engine.model_file import default_normalization
from cnnlab.engine.trainer import build_optimizer, epoch_order, train_loss
from cnnlab.errors import ConfigError


def lr_range_test(model: torch.nn.Module, dataset, cfg: TrainConfig, start_lr: float = 1e-6, end_lr: float = 1.0,
                  steps: int = 100) -> dict:
    """Returns {"lrs", "losses" (smoothed), "suggested_lr", "steps"}; cfg is resolved for the model first."""
    if not (0 < start_lr < end_lr) or steps < 5:
        raise ConfigError("lr-find needs 0 < --start-lr < --end-lr and --steps >= 5")
    cfg = cfg.resolved()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device, model)
    h, w, c = dataset.image_shape
    augmenter = Augmenter(resolve_ops(cfg.augment, cfg.aug_args), training_size(cfg.train_size, (h, w)))
    norm = getattr(model, "cnnlab_normalization", None) or default_normalization(c)  # a pretrained model's own statistics
    reader = BatchReader(dataset.train)  # streamed folders: worker processes decode the batches
    n, bs, k = len(dataset.train), cfg.batch_size, dataset.num_classes
    model.to(device).train()
    optimizer = build_optimizer(model, cfg)
    gamma = (end_lr / start_lr) ** (1 / (steps - 1))
    lrs, losses, avg, best = [], [], 0.0, math.inf
    per_epoch = max(1, n // bs)

    def batches():
        for epoch in range(1, steps // per_epoch + 2):
            yield from ((epoch, step, b) for step, b in enumerate(reader.batches(bs, epoch_order(n, cfg.seed, epoch), stop=per_epoch)))

    for i, (epoch, step, batch) in zip(range(steps), batches()):
        lr = start_lr * gamma**i
        for g in optimizer.param_groups:
            g["lr"] = lr
        xb, yb = to_input(batch.x, norm, device), batch.y.to(device)
        y2, lam = None, 1.0
        if augmenter.enabled:
            xb, y2, lam = augmenter(xb, yb, batch_generator(cfg.seed, epoch, step))
        with autocast(device, precision):
            logits = model(xb)
        loss = train_loss(logits, soft_targets(yb, k, y2, lam, cfg.label_smoothing).to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        avg = 0.9 * avg + 0.1 * value if math.isfinite(value) else math.inf
        smooth = avg / (1 - 0.9 ** (i + 1))
        if not math.isfinite(smooth) or (i > 5 and smooth > 4 * best):
            break  # the loss exploded: larger LRs tell nothing more
        best = min(best, smooth)
        lrs.append(lr)
        losses.append(smooth)
    suggested = _steepest(lrs, losses)
    return {"lrs": lrs, "losses": losses, "suggested_lr": suggested, "steps": len(lrs)}


def _steepest(lrs: list[float], losses: list[float]) -> float | None:
    """The LR where the smoothed loss falls fastest against log LR (before its minimum)."""
    if len(lrs) < 5:
        return None
    stop = int(np.argmin(losses)) + 1
    if stop < 3:  # the loss never fell: a tenth of the LR at the lowest loss, within the tested range
        return max(lrs[0], lrs[stop - 1] / 10)
    grads = np.gradient(np.asarray(losses[:stop]), np.log10(np.asarray(lrs[:stop])))
    return float(lrs[int(np.argmin(grads))])


def save_plot(result: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cnnlab.engine.io import atomic_path

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result["lrs"], result["losses"])
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    if result["suggested_lr"]:
        ax.axvline(result["suggested_lr"], color="tab:red", linestyle="--", label=f"suggested {result['suggested_lr']:.2g}")
        ax.legend()
    ax.set_title("LR range test")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


# ------------------------------------------------------------------ CLI (`cnnlab lr-find`)


def add_commands(subparsers, data_subparsers) -> None:
    from cnnlab.cli import _add_data_options, _key_value

    p = subparsers.add_parser("lr-find", help="LR range test: plot loss against learning rate and suggest an LR")
    _add_data_options(p, defaults=True)
    p.add_argument("--model", default="seed_cnn")
    p.add_argument("--model-arg", type=_key_value, action="append", default=[], metavar="KEY=VALUE", dest="model_args")
    p.add_argument("--pretrained", action="store_true", help="start from the model's ImageNet weights (the LRs of fine-tuning)")
    p.add_argument("--weights", metavar="NAME|FILE", help="start from these weights (implies --pretrained)")
    p.add_argument("--optimizer", choices=("auto", "adamw", "sgd", "adam"), default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--start-lr", type=float, default=1e-6)
    p.add_argument("--end-lr", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="FILE.png", default="lr_find.png")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lr_find)


def cmd_lr_find(args: argparse.Namespace) -> int:
    from cnnlab import api
    from cnnlab.cli import _data_options, _need_data

    cfg = TrainConfig(data=_need_data(args), model=args.model, model_args=dict(args.model_args), optimizer=args.optimizer,
                      pretrained=args.pretrained or None, weights=args.weights,
                      batch_size=args.batch_size, seed=args.seed, **_data_options(args)).validate()
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
