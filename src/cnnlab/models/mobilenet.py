"""MobileNetV2-style net: inverted residual blocks (1x1 expand -> 3x3 depthwise -> 1x1 linear project).

Depthwise-separable convolutions cost about 1/8 of a full 3x3 conv; the residual joins the thin ends.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnlab.models._registry import register_model
from cnnlab.models.layers import ZooNet, check_size, conv_bn_act, scaled, stem_stride

# (expansion t, channels c, repeats n, stride s) of the first block in each group, as in the paper
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [conv_bn_act(cin, hidden, k=1, act="relu6")] if expand != 1 else []
        layers += [conv_bn_act(hidden, hidden, stride=stride, groups=hidden, act="relu6"), conv_bn_act(hidden, cout, k=1, act=None)]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_residual else self.block(x)


@register_model
def mobilenetv2(num_classes: int = 2, in_channels: int = 3, image_size=(64, 64), width_mult: float = 1.0, stem: str = "auto",
                last_channels: int = 1280, dropout: float = 0.0) -> nn.Module:
    """MobileNetV2-style: inverted residuals with depthwise 3x3 convs; width_mult scales all widths."""
    if width_mult <= 0 or last_channels < 1:
        raise ValueError("width_mult must be > 0 and last_channels >= 1")
    stride = min(2, stem_stride(image_size, stem))
    check_size(image_size, 3 + stride, "mobilenetv2")
    cin = scaled(32, width_mult)
    stem_m = conv_bn_act(in_channels, cin, stride=stride, act="relu6")
    blocks: list[nn.Module] = []
    for t, c, n, s in SETTINGS:
        cout = scaled(c, width_mult)
        for i in range(n):
            blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
            cin = cout
    last = scaled(last_channels, max(1.0, width_mult))
    blocks.append(conv_bn_act(cin, last, k=1, act="relu6"))
    net = ZooNet(stem_m, nn.Sequential(*blocks), last, num_classes, dropout)
    # Measured (benchmarks.registry_speed, 64 px, batch 64, 2-core AVX-512-bf16 CPU): a training step ran at
    # 250 img/s with bf16 autocast and 378 img/s in fp32 channels_last, so precision 'auto' keeps fp32 on CPU.
    net.cpu_autocast = False
    return net
