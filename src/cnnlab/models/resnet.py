"""ResNet family: a fast ResNet-9-style net (DAWNBench / airbench lineage) and ResNet-18/34-style nets.

ResNet-9: conv -> [conv, pool, res] -> [conv, pool] -> [conv, pool, res] -> pool -> linear. Few, wide
layers and early pooling make it the fastest strong net on a CPU.
ResNet-18/34: basic blocks (two 3x3 convs + identity/1x1 shortcut) in four stages; the 'auto' stem keeps full
resolution below 64 px, halves it below 128 px and downsamples by 4 for 224-px-style inputs.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.models._registry import register_model
from cnnlab.models.fused import MaxPoolReLU
from cnnlab.models.layers import ZooNet, check_size, conv_bn_act, stem_stride


class Residual(nn.Module):
    """x + f(x) with f = two conv-BN-ReLU (ResNet-9's residual unit)."""

    def __init__(self, c: int):
        super().__init__()
        self.f = nn.Sequential(conv_bn_act(c, c), conv_bn_act(c, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


def _pool_block(cin: int, cout: int) -> nn.Sequential:
    # conv -> BN -> pool+ReLU: max-pool and ReLU commute, and the fused kernel (models/fused.py) does both in one pass
    return nn.Sequential(conv_bn_act(cin, cout, act=None), MaxPoolReLU(ceil_mode=True))


@register_model
def resnet9(num_classes: int = 2, in_channels: int = 3, image_size=(64, 64), width: int = 32, stem: str = "auto",
            dropout: float = 0.0) -> nn.Module:
    """Fast ResNet-9-style net (widths w, 2w, 4w, 8w; 3 pools); the default for training from scratch."""
    if width < 1:
        raise ValueError("width must be >= 1")
    stride = min(2, stem_stride(image_size, stem))  # 'auto': a stride-2 stem from 64 px keeps CPU cost ~4x lower
    check_size(image_size, 3 + stride, "resnet9")
    w = width
    stem_m = conv_bn_act(in_channels, w, stride=stride)
    stages = nn.Sequential(
        _pool_block(w, 2 * w), Residual(2 * w),
        _pool_block(2 * w, 4 * w),
        _pool_block(4 * w, 8 * w), Residual(8 * w),
        nn.MaxPool2d(2, ceil_mode=True),
    )
    return ZooNet(stem_m, stages, 8 * w, num_classes, dropout)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = conv_bn_act(cin, cout, stride=stride)
        self.conv2 = conv_bn_act(cout, cout, act=None)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else conv_bn_act(cin, cout, k=1, stride=stride, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


def _resnet(num_classes, in_channels, image_size, width, blocks, stem, dropout, name):
    if width < 1:
        raise ValueError("width must be >= 1")
    stride = stem_stride(image_size, stem)
    check_size(image_size, 3 + stride // 2, name)
    if stride < 4:
        stem_m = conv_bn_act(in_channels, width, stride=stride)
    else:
        stem_m = nn.Sequential(conv_bn_act(in_channels, width, k=7, stride=2), nn.MaxPool2d(3, 2, 1))
    layers: list[nn.Module] = []
    cin = width
    for i, n in enumerate(blocks):
        cout = width * 2 ** i
        for j in range(n):
            layers.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
            cin = cout
    return ZooNet(stem_m, nn.Sequential(*layers), cin, num_classes, dropout)


@register_model
def resnet18(num_classes: int = 2, in_channels: int = 3, image_size=(64, 64), width: int = 64, stem: str = "auto",
             dropout: float = 0.0) -> nn.Module:
    """ResNet-18-style: basic blocks (2, 2, 2, 2), widths w..8w; stem by image size."""
    return _resnet(num_classes, in_channels, image_size, width, (2, 2, 2, 2), stem, dropout, "resnet18")


@register_model
def resnet34(num_classes: int = 2, in_channels: int = 3, image_size=(64, 64), width: int = 64, stem: str = "auto",
             dropout: float = 0.0) -> nn.Module:
    """ResNet-34-style: basic blocks (3, 4, 6, 3), widths w..8w; stem by image size."""
    return _resnet(num_classes, in_channels, image_size, width, (3, 4, 6, 3), stem, dropout, "resnet34")
