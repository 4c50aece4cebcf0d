"""What the training step optimises: the optimizer and its parameter groups, and the loss with its class weights.

A pretrained model's backbone learns at a fraction of the head's LR (discriminative groups, engine/finetune.py);
weight decay skips norm scales and biases; soft targets carry mixup/cutmix and label smoothing.
Multi-label targets (multi-hot rows) are mixed the same way — mixup/cutmix blend two images' label vectors with the
images' weights — and smoothed towards 0.5 per class (Keras' BinaryCrossentropy(label_smoothing)).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.config import TrainConfig
from cnnlab.data.augment import soft_targets
from cnnlab.engine import finetune
from cnnlab.errors import ConfigError


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only: decaying norm scales and biases just hurts."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """adam | adamw | sgd (Nesterov momentum); 'auto' values are resolved for the model first. A pretrained model
    gets discriminative groups: its backbone learns at cfg.backbone_lr times the head's LR (group "lr_scale")."""
    cfg = cfg.resolved()
    if cfg.optimizer == "adam" and cfg.weight_decay == 0 and not is_pretrained(model):
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)  # the seed's optimizer, exactly
    if is_pretrained(model):
        groups = finetune.discriminative_groups(model, cfg.weight_decay, cfg.backbone_lr)
    else:
        groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.Adam(groups, lr=cfg.lr)


def is_pretrained(model: nn.Module) -> bool:
    """Started from pretrained weights (models/pretrained.load_pretrained), with a head to fine-tune."""
    return getattr(model, "cnnlab_pretrained", None) is not None and hasattr(model, "head_name")


def train_targets(y: torch.Tensor, num_classes: int, y2: torch.Tensor | None = None, lam: float = 1.0,
                  smoothing: float = 0.0) -> torch.Tensor:
    """(N, K) soft targets: class ids as distributions (augment.soft_targets); multi-hot rows (N, C) as per-class
    probabilities, lam * own + (1 - lam) * partner's (mixup/cutmix), smoothed towards 0.5."""
    if y.ndim == 2:
        t = y.float()
        if y2 is not None:
            t = lam * t + (1 - lam) * y2.float()
        return t * (1 - smoothing) + smoothing / 2
    return soft_targets(y, num_classes, y2, lam, smoothing)


def train_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None,
               multi_label: bool = False) -> torch.Tensor:
    """Cross-entropy against soft targets (N, K): mixup/cutmix, label smoothing; the 1-logit head uses BCE on p(class 1);
    multi_label: binary cross-entropy on each of the K outputs, averaged per image."""
    logits = logits.float()
    if multi_label:
        per = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1)
    elif logits.shape[1] == 1:
        per = F.binary_cross_entropy_with_logits(logits[:, 0], targets[:, 1], reduction="none")
    else:
        per = -(targets * F.log_softmax(logits, 1)).sum(1)
    if weights is None:
        return per.mean()
    return (per * weights).sum() / weights.sum()


def class_weights(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse class frequency, normalised so a balanced dataset gets weight 1 everywhere."""
    counts = torch.bincount(y, minlength=num_classes).clamp(min=1).float()
    return len(y) / (num_classes * counts)


def loss_weights(cfg: TrainConfig, y: torch.Tensor, class_names: list[str]) -> torch.Tensor | None:
    """Per-class loss weights: --class-weights by name (others 1), --balance loss (inverse frequency), else None."""
    if cfg.class_weights:
        unknown = sorted(set(cfg.class_weights) - set(class_names))
        if unknown:
            raise ConfigError(f"class_weights: {', '.join(map(repr, unknown))} not among the classes {class_names} — weight those classes")
        return torch.tensor([float(cfg.class_weights.get(c, 1.0)) for c in class_names])
    if cfg.balance == "loss":
        return class_weights(y, len(class_names))
    return None


def balanced_sample_weights(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """--balance sampler: each image's draw weight 1 / (its class's count), so every class is drawn equally often."""
    counts = torch.bincount(y, minlength=num_classes).clamp(min=1).double()
    return 1.0 / counts[y]
