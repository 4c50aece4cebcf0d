"""LR range test (`cnnlab lr-find`): raise the LR exponentially batch by batch, record the smoothed loss,
stop when it explodes, and suggest an LR where the loss falls fastest (Smith 2015; fastai's lr_find).

The model and data are set up exactly as `cnnlab train` would (same recipe, augmentation, precision),
but nothing is saved except an optional plot: the model is thrown away afterwards.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from cnnlab.config import TrainConfig
from cnnlab.data.augment import Augmenter, batch_generator, resolve_ops, training_size
from cnnlab.data.loader import BatchReader
from cnnlab.engine.device import resolve_device, resolve_precision
from cnnlab.engine.model_file import default_normalization
from cnnlab.engine.trainer import StepContext, build_optimizer, epoch_order, set_lr, train_step
from cnnlab.errors import ConfigError


def lr_range_test(model: torch.nn.Module, dataset, cfg: TrainConfig, start_lr: float = 1e-6, end_lr: float = 1.0,
                  steps: int = 100) -> dict:
    """Returns {"lrs", "losses" (smoothed), "suggested_lr", "steps"}; cfg is resolved for the model first."""
    if not (0 < start_lr < end_lr) or steps < 5:
        raise ConfigError("lr-find needs 0 < --start-lr < --end-lr and --steps >= 5")
    cfg = cfg.resolved()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    h, w, c = dataset.image_shape
    norm = getattr(model, "cnnlab_normalization", None) or default_normalization(c)  # a pretrained model's own statistics
    reader = BatchReader(dataset.train)  # streamed folders: worker processes decode the batches
    n, bs = len(dataset.train), cfg.batch_size
    model.to(device).train()
    # the same step as `cnnlab train` (augmentation, precision, loss), without the divergence check: here a
    # diverging loss is the signal to stop
    ctx = StepContext(model, build_optimizer(model, cfg), cfg, norm, device, resolve_precision(cfg.precision, device, model),
                      dataset.num_classes, Augmenter(resolve_ops(cfg.augment, cfg.aug_args), training_size(cfg.train_size, (h, w))),
                      check_finite=False)
    gamma = (end_lr / start_lr) ** (1 / (steps - 1))
    lrs, losses, avg, best = [], [], 0.0, math.inf
    per_epoch = max(1, n // bs)

    def batches():
        for epoch in range(1, steps // per_epoch + 2):
            yield from ((epoch, step, b) for step, b in enumerate(reader.batches(bs, epoch_order(n, cfg.seed, epoch), stop=per_epoch)))

    for i, (epoch, step, batch) in zip(range(steps), batches()):
        lr = start_lr * gamma**i
        set_lr(ctx.optimizer, lr, 1.0)
        loss, *_ = train_step(ctx, batch.x, batch.y, batch_generator(cfg.seed, epoch, step), (epoch, step))
        value = float(loss)
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
    """A tenth of the LR at the smoothed loss's minimum (the usual rule: the minimum is already on the edge of
    divergence), but not before the loss has started to fall. Not the single steepest point: the first batches'
    noise can be the steepest fall of the whole test (measured: that rule said 1e-06 on the cats/dogs photos, whose
    curve starts falling at ~1e-5 and bottoms out near 1e-2)."""
    if len(lrs) < 5:
        return None
    stop = int(np.argmin(losses)) + 1
    if stop < 3:  # the loss never fell: a tenth of the LR at the lowest loss, within the tested range
        return max(lrs[0], lrs[stop - 1] / 10)
    head = float(np.median(losses[: max(3, len(losses) // 10)]))  # the level before the LR matters
    fell = head - 0.1 * (head - losses[stop - 1])  # a tenth of the way down: the fall has begun
    start = next(i for i in range(stop) if losses[i] <= fell)
    return float(max(lrs[stop - 1] / 10, lrs[start]))


def save_plot(result: dict, path: str | Path) -> Path:
    from cnnlab.plotting import plt, save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result["lrs"], result["losses"])
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    if result["suggested_lr"]:
        ax.axvline(result["suggested_lr"], color="tab:red", linestyle="--", label=f"suggested {result['suggested_lr']:.2g}")
        ax.legend()
    ax.set_title("LR range test")
    return save_figure(fig, path)
