"""VGG-style nets: stages of 3x3 conv-BN-ReLU followed by 2x2 max-pool, widths doubling per stage."""

from __future__ import annotations

import torch.nn as nn

from cnnlab.models._registry import register_model
from cnnlab.models.fused import MaxPoolReLU
from cnnlab.models.layers import ZooNet, check_size, conv_bn_act


def _vgg(num_classes, in_channels, image_size, width, stages, convs_per_stage, dropout, name):
    if stages < 1 or convs_per_stage < 1 or width < 1:
        raise ValueError("width, stages and convs_per_stage must be >= 1")
    check_size(image_size, stages, name)
    layers: list[nn.Module] = []
    cin = in_channels
    for i in range(stages):
        cout = width * 2 ** min(i, 3)
        for j in range(convs_per_stage):
            # the stage's last ReLU runs after the pool, fused with it (they commute; models/fused.py)
            layers.append(conv_bn_act(cin, cout, act="relu" if j < convs_per_stage - 1 else None))
            cin = cout
        layers.append(MaxPoolReLU(ceil_mode=True))
    return ZooNet(nn.Identity(), nn.Sequential(*layers), cin, num_classes, dropout)


@register_model
def vgg(num_classes: int = 2, in_channels: int = 3, image_size=(64, 64), width: int = 32, stages: int = 4,
        convs_per_stage: int = 2, dropout: float = 0.0) -> nn.Module:
    """VGG-style: stages x (conv-BN-ReLU)*n + max-pool; widths width, 2w, 4w, 8w."""
    return _vgg(num_classes, in_channels, image_size, width, stages, convs_per_stage, dropout, "vgg")
