"""Fine-tuning a pretrained backbone: the frozen phase on features computed once, then discriminative LRs.

The frozen phase trains only the new head. With the backbone frozen (and its BatchNorm layers in eval mode,
so their ImageNet statistics stay as the weights expect) every epoch would compute the same features again,
so they are computed once — for each training image and, when the augmentation flips, its mirror — and the
head trains on them for as many epochs as asked: after the one pass of feature extraction an epoch costs
milliseconds (measured: docs/recipes.md, "Pretrained backbones"). Unfreezing then trains everything with the
backbone's learning rate a fraction of the head's (`backbone_lr`), as fastai's `fine_tune` does.

Models expose `head_name` (the classifier module) and `forward_head(features)`, whose first step is the
global average pool, so a cached (N, C) feature row goes in as an (N, C, 1, 1) map.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn as nn

from cnnlab.data.loader import BatchReader
from cnnlab.engine.device import autocast
from cnnlab.engine.inference import loss_fn, predicted_class, to_input

def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    return list(model.get_submodule(model.head_name).parameters())


def freeze_early_layers(model: nn.Module) -> int:
    """Keep the stem and the blocks at 1/2 and 1/4 resolution (`model.early_modules`) frozen while the rest
    fine-tunes: no gradients (so autograd records nothing before the first trainable layer) and BatchNorm in
    eval mode (ImageNet statistics), re-applied before every forward, since evaluation switches modes.

    Why: at the backbone's low LR these generic edge/colour filters barely move, while their backward pass at
    the highest resolutions is most of a step's cost (benchmarks/finetune_speed.py; detectron2's FREEZE_AT=2
    does the same). Returns the number of parameters frozen."""
    early = [model.get_submodule(name) for name in getattr(model, "early_modules", ())]
    frozen = 0
    for module in early:
        for p in module.parameters():
            p.requires_grad_(False)
            frozen += p.numel()

    def keep_early_in_eval(net: nn.Module, inputs) -> None:
        if net.training:
            for module in early:
                module.eval()

    if early and not getattr(model, "_cnnlab_early_hook", None):
        model._cnnlab_early_hook = model.register_forward_pre_hook(keep_early_in_eval)
    return frozen


def discriminative_groups(model: nn.Module, weight_decay: float, backbone_lr: float) -> list[dict]:
    """AdamW groups: the head at the full LR, the backbone at `backbone_lr` times it ("lr_scale", applied by
    the trainer every step); weight decay on conv/linear weights only."""
    head = {id(p) for p in head_parameters(model)}
    groups = []
    for is_head, scale in ((False, backbone_lr), (True, 1.0)):
        params = [p for p in model.parameters() if p.requires_grad and (id(p) in head) == is_head]
        groups.append({"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay, "lr_scale": scale})
        groups.append({"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "lr_scale": scale})
    return [g for g in groups if g["params"]]


@torch.inference_mode()
def pooled_features(model: nn.Module, split, norm: dict, device: torch.device, precision: str, mirror: bool = False,
                    batch_size: int = 64, should_stop: Callable[[], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, C) float32 on CPU, labels) of a split: the frozen backbone's globally pooled last feature
    map, in eval mode; mirror=True: of the horizontally flipped images. `should_stop` is called between batches
    (it raises to interrupt)."""
    was_training = model.training
    model.eval()
    feats, labels = [], []
    try:
        for b in BatchReader(split).batches(batch_size):
            if should_stop is not None:
                should_stop()
            x = to_input(b.x, norm, device)
            if mirror:
                x = x.flip(3)
            with autocast(device, precision):
                feats.append(model.forward_features(x).float().mean((2, 3)).cpu())
            labels.append(b.y)
    finally:
        model.train(was_training)
    if not feats:
        return torch.zeros(0, getattr(model, "num_features", 1)), torch.zeros(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)


def head_logits(model: nn.Module, f: torch.Tensor) -> torch.Tensor:
    return model.forward_head(f[:, :, None, None])


def score_features(model: nn.Module, f: torch.Tensor, y: torch.Tensor) -> dict:
    model.eval()
    with torch.inference_mode():
        logits = head_logits(model, f).float()
    model.train()
    return {"loss": float(loss_fn(logits, y)), "accuracy": float((predicted_class(logits) == y).float().mean())}


def train_head(model: nn.Module, feats: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, weight_decay: float,
               batch_size: int, seed: int, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               val: tuple[torch.Tensor, torch.Tensor] | None = None, on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Train the head on cached features: AdamW, one-cycle over `epochs`, data order seeded by (seed, epoch).

    Returns one metrics row per epoch (train loss/accuracy as seen in training, val on cached val features).
    `loss(logits, y)` is the run's training loss (label smoothing, class weights)."""
    params = head_parameters(model)
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
                             {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}], lr=lr)
    n = len(y)
    steps = max(1, math.ceil(n / batch_size))
    total = epochs * steps
    rows = []
    model.train()
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * epoch)
        order = torch.randperm(n, generator=g)
        loss_sum, correct = 0.0, 0
        for s in range(steps):
            idx = order[s * batch_size:(s + 1) * batch_size]
            p = ((epoch - 1) * steps + s) / total  # one-cycle: warm up over the first 10%, cosine down
            for group in opt.param_groups:
                group["lr"] = lr * (p / 0.1 if p < 0.1 else 0.5 * (1 + math.cos(math.pi * (p - 0.1) / 0.9)))
            logits = head_logits(model, feats[idx])
            batch_loss = loss(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            batch_loss.backward()
            opt.step()
            loss_sum += float(batch_loss.detach()) * len(idx)
            correct += int((predicted_class(logits.detach()) == y[idx]).sum())
        row = {"train_loss": loss_sum / n, "train_accuracy": correct / n, "val_loss": None, "val_accuracy": None,
               "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        if val is not None and len(val[1]):
            ev = score_features(model, *val)
            row.update(val_loss=ev["loss"], val_accuracy=ev["accuracy"])
        rows.append(row)
        if on_epoch is not None:
            on_epoch(row)
    return rows


def mirror_helps(ops: dict[str, float]) -> bool:
    """Cache mirrored features too when training would flip images."""
    return ops.get("hflip", 0.0) > 0
