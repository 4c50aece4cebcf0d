"""ConvNeXt-style net: patchify stem, blocks of 7x7 depthwise conv -> LayerNorm -> 4x MLP (GELU) with
layer scale, LayerNorm + 2x2 strided conv between stages."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.models._registry import register_model
from cnnlab.models.layers import ZooNet, check_size, stem_stride


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, layer_scale: float):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pw1 = nn.Linear(dim, 4 * dim)
        self.pw2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # NHWC for LayerNorm and the pointwise MLP
        y = self.pw2(F.gelu(self.pw1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


@register_model
def convnext(num_classes: int = 2, in_channels: int = 3, image_size=(64, 64), width: int = 32, depths: list = (2, 2, 4, 2),
             stem: str = "auto", layer_scale: float = 0.1, dropout: float = 0.0) -> nn.Module:
    """ConvNeXt-style: 7x7 depthwise + inverted MLP blocks, widths w..8w, depths (2, 2, 4, 2)."""
    depths = list(depths)
    if width < 1 or not depths or any(int(d) < 1 for d in depths):
        raise ValueError("width and every depth must be >= 1")
    patch = 2 if stem_stride(image_size, stem) < 4 else 4
    check_size(image_size, len(depths) - 1 + patch // 2, "convnext")
    stem_m = nn.Sequential(nn.Conv2d(in_channels, width, patch, patch), LayerNorm2d(width, eps=1e-6))
    layers: list[nn.Module] = []
    dim = width
    for i, d in enumerate(depths):
        if i > 0:
            layers += [LayerNorm2d(dim, eps=1e-6), nn.Conv2d(dim, dim * 2, 2, 2, padding=0)]
            dim *= 2
        layers += [ConvNeXtBlock(dim, layer_scale) for _ in range(int(d))]
    return ZooNet(stem_m, nn.Sequential(*layers), dim, num_classes, dropout, head_norm=nn.LayerNorm(dim, eps=1e-6))
