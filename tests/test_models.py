"""Registry-wide model tests (every registered model) and seed_cnn against the tutorial."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab import models
from cnnlab.errors import ModelError

ALL = models.list_models()


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("num_classes, channels, size", [(2, 3, 64), (5, 1, 28), (3, 3, 45)])
def test_forward_shape_gradients_and_finiteness(name, num_classes, channels, size):
    torch.manual_seed(0)
    m = models.create_model(name, num_classes, channels, size)
    x = torch.rand(4, channels, size, size)
    torch.manual_seed(1)  # the same dropout / stochastic-depth draws in both passes
    out = m(x)
    assert out.shape == (4, 1 if num_classes == 2 else num_classes)
    assert torch.isfinite(out).all()
    torch.manual_seed(1)
    feats = m.forward_features(x)
    assert torch.equal(m.forward_head(feats), out)
    out.float().pow(2).mean().backward()
    torch.manual_seed(2)  # a second batch: stochastic depth may drop a whole branch for every image of one small batch
    m(x).float().pow(2).mean().backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} got no gradient"


@pytest.mark.parametrize("name", ALL)
def test_channels_last_and_bf16_autocast_run(name):
    m = models.create_model(name, 3, 3, 32)
    x = torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    assert torch.isfinite(out.float()).all()


def test_seed_cnn_has_the_tutorials_parameter_count():
    m = models.create_model("seed_cnn", 2, 3, 100)
    assert sum(p.numel() for p in m.parameters()) == 1_093_665


class KerasOrderSeedCNN(nn.Module):
    """Plain reference: the tutorial's layer order (ReLU, then pool) and Keras' HWC flatten."""

    def __init__(self, ref):
        super().__init__()
        self.ref = ref

    def forward(self, x):
        r = self.ref
        x = F.max_pool2d(F.relu(r.conv1(x)), 2)
        x = F.max_pool2d(F.relu(r.conv2(x)), 2)
        x = x.permute(0, 2, 3, 1).flatten(1)
        return torch.sigmoid(r.fc2(F.relu(r.fc1(x))))


def test_seed_cnn_matches_the_plain_reference_layer_order():
    torch.manual_seed(1)
    m = models.create_model("seed_cnn", 2, 3, 100)
    x = torch.rand(8, 3, 100, 100)
    assert torch.allclose(torch.sigmoid(m(x)), KerasOrderSeedCNN(m)(x), atol=1e-6)


def test_unknown_model_and_argument_errors():
    with pytest.raises(ModelError, match="seed_cnn"):
        models.create_model("resnet9000", 2)
    with pytest.raises(ModelError, match="filters"):
        models.create_model("seed_cnn", 2, bogus=1)
    with pytest.raises(ModelError, match="too small"):
        models.create_model("seed_cnn", 2, 3, 8)


def test_register_model_extends_the_registry():
    @models.register_model
    def tiny_test_net(num_classes=2, in_channels=3, image_size=(32, 32)):
        """A test-only net."""
        conv = nn.Conv2d(in_channels, 4, 3)

        class Tiny(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv, self.fc = conv, nn.Linear(4, 1 if num_classes == 2 else num_classes)

            def forward_features(self, x):
                return F.relu(self.conv(x))

            def forward_head(self, f):
                return self.fc(f.mean((2, 3)))

            def forward(self, x):
                return self.forward_head(self.forward_features(x))

        return Tiny()

    try:
        assert "tiny_test_net" in models.list_models()
        assert models.create_model("tiny_test_net", 4)(torch.rand(1, 3, 32, 32)).shape == (1, 4)
    finally:
        from cnnlab.models._registry import _MODELS

        _MODELS.pop("tiny_test_net")
