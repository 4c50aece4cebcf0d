"""Model zoo specifics (the registry-wide checks live in test_models.py)."""

from __future__ import annotations

import json

import pytest
import torch

from cnnlab import models
from cnnlab.errors import ModelError

ZOO = ["vgg", "resnet9", "resnet18", "resnet34", "mobilenetv2", "convnext"]


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def test_zoo_families_are_registered():
    assert set(ZOO) <= set(models.list_models())


@pytest.mark.parametrize("name, arg, small, big", [
    ("vgg", "width", 8, 16), ("resnet9", "width", 8, 16), ("resnet18", "width", 8, 16),
    ("mobilenetv2", "width_mult", 0.25, 0.5), ("convnext", "width", 8, 16),
])
def test_width_argument_scales_the_model(name, arg, small, big):
    a = models.create_model(name, 3, 3, 32, **{arg: small})
    b = models.create_model(name, 3, 3, 32, **{arg: big})
    assert n_params(a) < n_params(b)
    assert a(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    assert a.cnnlab_args == {arg: small}


def test_depths_and_stem_arguments():
    m = models.create_model("convnext", 2, 1, 40, width=8, depths=[1, 1])
    assert m(torch.rand(1, 1, 40, 40)).shape == (1, 1)
    big = models.create_model("resnet18", 2, 3, 160, width=8)  # ImageNet-style stem above 128 px
    assert big.forward_features(torch.rand(1, 3, 160, 160)).shape[-1] == 5


@pytest.mark.parametrize("name", ZOO)
def test_too_small_input_is_a_clear_error(name):
    with pytest.raises(ModelError, match="too small"):
        models.create_model(name, 2, 3, 6)


def test_bad_model_argument_values_are_model_errors():
    with pytest.raises(ModelError, match="width"):
        models.create_model("resnet9", 2, 3, 32, width=0)
    with pytest.raises(ModelError, match="stem"):
        models.create_model("resnet18", 2, 3, 32, stem="huge")
    with pytest.raises(ModelError, match="valid model arguments: width"):
        models.create_model("resnet9", 2, 3, 32, depth=3)


def test_models_command_lists_the_zoo_with_parameter_counts(cli):
    r = cli("models", "--json", "--image-size", "32")
    assert r.code == 0, r
    rows = {row["name"]: row for row in json.loads(r.out)}
    assert set(ZOO) <= set(rows)
    assert all(row["parameters"] > 0 and row["description"] for row in rows.values())


def test_auto_precision_keeps_fp32_on_cpu_where_bf16_is_slower():
    """mobilenetv2 opts out of CPU autocast (measured slower in bf16); other models follow the CPU's bf16 support."""
    import torch

    from cnnlab.engine.device import cpu_has_native_bf16, resolve_precision
    from cnnlab.models import create_model

    cpu = torch.device("cpu")
    mobile = create_model("mobilenetv2", 2, 3, (32, 32))
    assert resolve_precision("auto", cpu, mobile) == "fp32"
    assert resolve_precision("bf16", cpu, mobile) == "bf16"  # an explicit choice wins
    expected = "bf16" if cpu_has_native_bf16() else "fp32"
    for name in ("resnet9", "convnext", "seed_cnn"):
        assert resolve_precision("auto", cpu, create_model(name, 2, 3, (32, 32))) == expected
