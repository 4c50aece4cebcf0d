"""What the conv layers see: feature maps of a layer for one image, and the first layer's learned filters."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from cnnlab.insight.gradcam import _eval_mode, conv_layers, resolve_layer
from cnnlab.insight.plots import _save, plt


def feature_maps(model: nn.Module, x: torch.Tensor, layer: str | None = None) -> tuple[str, np.ndarray]:
    """(layer name, activations (K, h, w) float32) of a conv layer (default: the last) for one input (1, C, H, W)."""
    name, module = resolve_layer(model, x, layer)
    store: dict = {}
    handle = module.register_forward_hook(lambda m, i, o: store.__setitem__("act", o.detach().float().clone()))
    try:
        with torch.no_grad(), _eval_mode(model):
            model.forward_features(x[:1])
    finally:
        handle.remove()
    return name, store["act"][0].cpu().numpy()


def first_layer_filters(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[str, np.ndarray]:
    """(layer name, weights (K, C, kh, kw)) of the first conv executed in forward_features."""
    name, module = conv_layers(model, input_shape=input_shape)[0]
    return name, module.weight.detach().float().cpu().numpy()


def _grid(n: int) -> tuple[int, int]:
    cols = max(1, math.ceil(math.sqrt(n)))
    return math.ceil(n / cols), cols


def save_feature_maps(maps: np.ndarray, layer: str, path: str | Path, max_maps: int = 64) -> Path:
    """A grid of the first `max_maps` channels, each scaled to its own range (viridis)."""
    maps = maps[:max_maps]
    rows, cols = _grid(len(maps))
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.5 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(maps):
            ax.imshow(maps[i], cmap="viridis")
            ax.set_title(str(i), fontsize=7)
    fig.suptitle(f"feature maps of {layer} ({maps.shape[1]}x{maps.shape[2]})")
    fig.tight_layout()
    return _save(fig, path)


def save_filters(weights: np.ndarray, layer: str, path: str | Path, max_filters: int = 64) -> Path:
    """First-layer kernels as small images: RGB when the input has 3 channels, else grey (channel mean)."""
    w = weights[:max_filters]
    rows, cols = _grid(len(w))
    fig, axes = plt.subplots(rows, cols, figsize=(1.0 * cols, 1.1 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(w):
            k = w[i]
            lo, hi = float(k.min()), float(k.max())
            k = (k - lo) / (hi - lo) if hi - lo > 1e-12 else np.zeros_like(k)  # each filter to [0, 1]
            if k.shape[0] == 3:
                ax.imshow(k.transpose(1, 2, 0), interpolation="nearest")
            else:
                ax.imshow(k.mean(0), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    fig.suptitle(f"learned filters of {layer} ({weights.shape[2]}x{weights.shape[3]})")
    fig.tight_layout()
    return _save(fig, path)
