"""Building blocks shared by the model families (conv-BN-act, heads, size checks).

Every family is a `ZooNet`: `stem -> stages` is `forward_features`, `pool -> head` is `forward_head`, so
Grad-CAM, summaries and fine-tuning find the last feature map without knowing the architecture.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "relu6": nn.ReLU6}


def head_outputs(num_classes: int) -> int:
    """Binary problems use one sigmoid output; K classes use K softmax outputs (multi-label: one_output_per_class)."""
    return 1 if num_classes == 2 else num_classes


def classifier_layer(model: nn.Module) -> tuple[str, nn.Linear] | None:
    """(name, module) of the linear layer that produces the class scores: a pretrained net's `head_name`, else the
    last nn.Linear registered (every registry family registers its classifier last); None without one."""
    name = getattr(model, "head_name", None)
    if name is not None and isinstance(model.get_submodule(name), nn.Linear):
        return name, model.get_submodule(name)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def one_output_per_class(model: nn.Module, num_classes: int) -> nn.Module:
    """Make a registry model multi-label: one independent sigmoid output per class. Only two classes need a change
    (a single-label model has one output for them); the model is tagged `cnnlab_task = "multi_label"`, which model
    files record."""
    found = classifier_layer(model)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no linear classifier layer to give one output per class")
    name, fc = found
    if fc.out_features != num_classes:
        if fc.out_features != head_outputs(num_classes):
            raise ValueError(f"{type(model).__name__}'s classifier {name!r} has {fc.out_features} outputs, not {num_classes}")
        parent, _, child = name.rpartition(".")
        new = nn.Linear(fc.in_features, num_classes, bias=fc.bias is not None).to(fc.weight.device, fc.weight.dtype)
        setattr(model.get_submodule(parent) if parent else model, child, new)
    model.cnnlab_task = "multi_label"
    return model


def conv_bn_act(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: str | None = "relu") -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(ACTIVATIONS[act](inplace=True) if act != "gelu" else nn.GELU())
    return nn.Sequential(*layers)


def check_size(image_size: tuple[int, int], downsamples: int, name: str) -> None:
    """An input must keep at least 1x1 pixels after `downsamples` halvings (ceil mode)."""
    h, w = image_size
    smallest = min(h, w)
    if smallest < 2 ** downsamples // 2 or smallest < 8:
        raise ValueError(f"input {h}x{w} is too small for {name} with {downsamples} downsamplings (needs at least {max(8, 2 ** downsamples // 2)}px)")


def stem_stride(image_size: tuple[int, int], stem: str) -> int:
    """How much the stem downsamples: 'small' 1 (CIFAR-style), 'large' 4 (ImageNet-style), 'auto' by size:
    1 below 64 px, 2 below 128 px, 4 from 128 px — so 28 px digits keep detail and 100 px photos stay cheap."""
    if stem not in ("auto", "small", "large"):
        raise ValueError(f"stem must be auto, small or large, not {stem!r}")
    if stem != "auto":
        return 1 if stem == "small" else 4
    smallest = min(image_size)
    return 1 if smallest < 64 else 2 if smallest < 128 else 4


def test_resize(x: torch.Tensor, scale: float) -> torch.Tensor:
    """The eval-time enlargement of a global-pool net trained with random resized crops ("FixRes",
    Touvron et al. 2019): random crops show objects larger in training than whole images show them at test,
    so a net scores better when test images are enlarged by the mean crop magnification. Bicubic, to
    floor(H * scale) x floor(W * scale) (scales are target/size ratios; the 1e-6 absorbs float error); ONNX
    exports it as a Resize node."""
    return F.interpolate(x, scale_factor=scale + 1e-6, mode="bicubic", align_corners=False, recompute_scale_factor=True)


def scaled(width: int, factor: float) -> int:
    return max(8, int(math.ceil(width * factor / 8) * 8))


class ZooNet(nn.Module):
    """stem -> stages (features) -> global average pool -> [norm] -> dropout -> linear (head)."""

    def __init__(self, stem: nn.Module, stages: nn.Module, features: int, num_classes: int, dropout: float = 0.0,
                 head_norm: nn.Module | None = None):
        super().__init__()
        self.stem, self.stages = stem, stages
        self.head_norm = head_norm if head_norm is not None else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(features, head_outputs(num_classes))
        self.num_classes = num_classes
        self.num_features = features
        self.test_scale = 1.0  # eval mode: inputs are enlarged by this factor first (set by create_model)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.test_scale != 1.0 and not self.training:
            x = test_resize(x, self.test_scale)
        return self.stages(self.stem(x))

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.head_norm(f.mean((2, 3)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
