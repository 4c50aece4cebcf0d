"""The seed tutorial's CNN, layer for layer.

Keras original: Conv2D(32,3x3,relu) -> MaxPool(2) -> Conv2D(32,3x3,relu) -> MaxPool(2) -> Flatten ->
Dense(64,relu) -> Dense(1,sigmoid). For two classes the head has one output (a logit; sigmoid is
applied by the loss/prediction code), for K classes it has K outputs (softmax).

Speed: max-pool is applied before ReLU, fused into one kernel (models/fused.py). max and ReLU commute
(ReLU is monotonic), so the result is identical, but ReLU then touches 4x fewer elements — the
pooling/elementwise ops, not the convolutions, dominate CPU time for this net. Flatten uses Keras'
(H, W, C) order so weights map one-to-one.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.models._registry import register_model
from cnnlab.models.fused import max_pool2_relu


def _conv_out(n: int) -> int:
    return ((n - 2) // 2 - 2) // 2  # conv3 (valid) -> pool2 -> conv3 -> pool2


def head_outputs(num_classes: int) -> int:
    """Binary problems use one sigmoid output (as the seed); K classes use K softmax outputs."""
    return 1 if num_classes == 2 else num_classes


class SeedCNN(nn.Module):
    def __init__(self, num_classes: int = 2, in_channels: int = 3, image_size=(100, 100), filters: int = 32, hidden: int = 64):
        super().__init__()
        h, w = image_size
        fh, fw = _conv_out(h), _conv_out(w)
        if fh < 1 or fw < 1:
            raise ValueError(f"input {h}x{w} is too small for seed_cnn (needs at least 10x10)")
        self.conv1 = nn.Conv2d(in_channels, filters, 3)
        self.conv2 = nn.Conv2d(filters, filters, 3)
        self.fc1 = nn.Linear(fh * fw * filters, hidden)
        self.fc2 = nn.Linear(hidden, head_outputs(num_classes))
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = max_pool2_relu(self.conv1(x))
        return max_pool2_relu(self.conv2(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x.permute(0, 2, 3, 1), 1)  # Keras flattens (H, W, C)
        return self.fc2(F.relu(self.fc1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def seed_cnn(num_classes: int = 2, in_channels: int = 3, image_size=(100, 100), filters: int = 32, hidden: int = 64) -> nn.Module:
    """The seed tutorial's two-conv CNN (Conv32-Pool-Conv32-Pool-Dense64)."""
    return SeedCNN(num_classes, in_channels, image_size, filters=filters, hidden=hidden)
