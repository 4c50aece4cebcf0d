"""ResNet-18/34/50 and MobileNetV2 with the module layout of torchvision's ImageNet checkpoints.

Parameter and buffer names and shapes match torchvision's weight files exactly (`resnet18-f37072fd.pth`,
`resnet34-b627a593.pth`, `resnet50-0676ba61.pth` / `-19c8e357.pth`, `mobilenet_v2-b0353104.pth` / `-7ebf99e0.pth`),
so they load with `load_state_dict(strict=True)` once the classifier is swapped (models/pretrained.py):

* ResNet: `conv1`, `bn1`, `layer1..4.<block>.conv1/bn1/conv2/bn2[/conv3/bn3]`, `layerN.0.downsample.0/1`, `fc`.
  ResNet-50 is torchvision's "v1.5": a Bottleneck strides on its 3x3 conv (conv2), not on the first 1x1.
* MobileNetV2: `features.0` stem (Sequential conv, bn, ReLU6), `features.1..17` inverted residuals whose
  `conv` Sequential is [[conv, bn, ReLU6] expand,] [conv, bn, ReLU6] depthwise, conv project, bn project —
  so the t=1 block's projection is `conv.1`/`conv.2` and the others' `conv.2`/`conv.3` — then `features.18`
  (1x1 conv to 1280, bn, ReLU6) and `classifier` = Sequential(Dropout, Linear), so the head is `classifier.1`.

Differences from torchvision that carry no weights: the stem takes 1 or 3 input channels (grey weights are the
colour stem summed over its input channels), the head has `head_outputs(num_classes)` outputs, and the model
splits into `forward_features` (last ReLU'd feature map) and `forward_head` (average pool, dropout, linear).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnlab.models._registry import register_model
from cnnlab.models.layers import check_size, head_outputs, test_resize


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride, bias=False)


class BasicBlock(nn.Module):
    """3x3 conv (strided) -> 3x3 conv, plus the (projected) input; ResNet-18/34."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (strided, torchvision v1.5) -> 1x1 expand x4, plus the (projected) input; ResNet-50."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class TorchvisionResNet(nn.Module):
    """conv1 7x7/2 -> bn1 -> ReLU -> maxpool 3x3/2 -> layer1..4 (features) -> average pool -> dropout -> fc (head)."""

    head_name = "fc"  # the classifier a pretrained net replaces (models/pretrained.py)
    stem_name = "conv1"  # the first conv, summed over colours for grey inputs
    early_modules = ("conv1", "bn1", "layer1")  # stem + blocks at 1/4 resolution: kept frozen when fine-tuning (engine/finetune.py)

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int], num_classes: int, in_channels: int,
                 dropout: float):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            cout = planes * block.expansion
            downsample = None
            if stride != 1 or cin != cout:
                downsample = nn.Sequential(_conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
            stage = [block(cin, planes, stride, downsample)] + [block(cout, planes) for _ in range(1, blocks)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            cin = cout
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, head_outputs(num_classes))  # PyTorch's default Linear init, as torchvision's
        self.num_classes = num_classes
        self.num_features = cin
        self.test_scale = 1.0  # eval mode: inputs are enlarged by this factor first (set by create_model)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.test_scale != 1.0 and not self.training:
            x = test_resize(x, self.test_scale)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(f.mean((2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _conv_bn_relu6(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """torchvision's ConvNormActivation(..., activation_layer=ReLU6): keys `0` (conv), `1` (bn)."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """[1x1 expand ReLU6 ->] 3x3 depthwise ReLU6 -> 1x1 linear project, all in one `conv` Sequential."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = int(round(cin * expand))
        layers: list[nn.Module] = [_conv_bn_relu6(cin, hidden, k=1)] if expand != 1 else []
        layers += [_conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# (expansion t, channels c, repeats n, stride s) of each group: torchvision's inverted_residual_setting
MOBILENET_V2_SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                        (6, 320, 1, 1)]


class TorchvisionMobileNetV2(nn.Module):
    """features.0 stem 3x3/2 -> 17 inverted residuals -> features.18 1x1 to 1280 (features) -> average pool ->
    classifier (Dropout, Linear) (head)."""

    head_name = "classifier.1"  # the classifier a pretrained net replaces (models/pretrained.py)
    stem_name = "features.0.0"  # the first conv, summed over colours for grey inputs
    early_modules = ("features.0", "features.1", "features.2", "features.3")  # stem + blocks at 1/2 and 1/4 resolution (engine/finetune.py)

    def __init__(self, num_classes: int, in_channels: int, dropout: float):
        super().__init__()
        cin, last = 32, 1280
        features: list[nn.Module] = [_conv_bn_relu6(in_channels, cin, stride=2)]
        for t, c, n, s in MOBILENET_V2_SETTING:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(_conv_bn_relu6(cin, last, k=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, head_outputs(num_classes)))
        self.num_classes = num_classes
        self.num_features = last
        self.test_scale = 1.0  # eval mode: inputs are enlarged by this factor first (set by create_model)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.test_scale != 1.0 and not self.training:
            x = test_resize(x, self.test_scale)
        return self.features(x)

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.classifier(f.mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _resnet(name: str, block, layers: list[int], num_classes: int, in_channels: int, image_size, dropout: float) -> nn.Module:
    check_size(image_size, 5, name)
    return TorchvisionResNet(block, layers, num_classes, in_channels, dropout)


@register_model
def tv_resnet18(num_classes: int = 2, in_channels: int = 3, image_size=(224, 224), dropout: float = 0.0) -> nn.Module:
    """ResNet-18, torchvision layout; ImageNet weights loadable (11.7M params at 1000 classes)."""
    return _resnet("tv_resnet18", BasicBlock, [2, 2, 2, 2], num_classes, in_channels, image_size, dropout)


@register_model
def tv_resnet34(num_classes: int = 2, in_channels: int = 3, image_size=(224, 224), dropout: float = 0.0) -> nn.Module:
    """ResNet-34, torchvision layout; ImageNet weights loadable (21.8M params at 1000 classes)."""
    return _resnet("tv_resnet34", BasicBlock, [3, 4, 6, 3], num_classes, in_channels, image_size, dropout)


@register_model
def tv_resnet50(num_classes: int = 2, in_channels: int = 3, image_size=(224, 224), dropout: float = 0.0) -> nn.Module:
    """ResNet-50 (v1.5), torchvision layout; ImageNet weights loadable (25.6M params at 1000 classes)."""
    return _resnet("tv_resnet50", Bottleneck, [3, 4, 6, 3], num_classes, in_channels, image_size, dropout)


@register_model
def mobilenet_v2(num_classes: int = 2, in_channels: int = 3, image_size=(224, 224), dropout: float = 0.2) -> nn.Module:
    """MobileNetV2, torchvision layout; ImageNet weights loadable (3.5M params at 1000 classes)."""
    check_size(image_size, 5, "mobilenet_v2")
    net = TorchvisionMobileNetV2(num_classes, in_channels, dropout)
    # Depthwise convolutions ran slower under bf16 autocast than in fp32 on this CPU (models/mobilenet.py):
    # precision 'auto' keeps fp32 here
    net.cpu_autocast = False
    return net
