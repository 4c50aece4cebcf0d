"""The torchvision-layout nets (models/torchvision_nets.py) have torchvision's checkpoint keys and shapes exactly.

The expected state dicts are generated here independently, by loops mirroring torchvision's layer configs
(torchvision/models/resnet.py and mobilenetv2.py), with 1000 classes as in the ImageNet weight files.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from cnnlab import models

NAMES = ["tv_resnet18", "tv_resnet34", "tv_resnet50", "mobilenet_v2"]
# torchvision's documented parameter counts (parameters only, 1000 classes)
PARAMS = {"tv_resnet18": 11_689_512, "tv_resnet34": 21_797_672, "tv_resnet50": 25_557_032, "mobilenet_v2": 3_504_872}


def _conv(sd: dict, key: str, cout: int, cin: int, k: int) -> None:
    sd[f"{key}.weight"] = (cout, cin, k, k)


def _bn(sd: dict, key: str, c: int) -> None:
    for p in ("weight", "bias", "running_mean", "running_var"):
        sd[f"{key}.{p}"] = (c,)
    sd[f"{key}.num_batches_tracked"] = ()


def reference_resnet(bottleneck: bool, layers: list[int], num_classes: int = 1000) -> dict:
    sd: dict = {}
    _conv(sd, "conv1", 64, 3, 7)
    _bn(sd, "bn1", 64)
    expansion = 4 if bottleneck else 1
    inplanes = 64
    for i, (planes, n) in enumerate(zip([64, 128, 256, 512], layers)):
        stride = 1 if i == 0 else 2
        for b in range(n):
            p = f"layer{i + 1}.{b}"
            if bottleneck:
                _conv(sd, f"{p}.conv1", planes, inplanes, 1)
                _bn(sd, f"{p}.bn1", planes)
                _conv(sd, f"{p}.conv2", planes, planes, 3)
                _bn(sd, f"{p}.bn2", planes)
                _conv(sd, f"{p}.conv3", planes * 4, planes, 1)
                _bn(sd, f"{p}.bn3", planes * 4)
            else:
                _conv(sd, f"{p}.conv1", planes, inplanes, 3)
                _bn(sd, f"{p}.bn1", planes)
                _conv(sd, f"{p}.conv2", planes, planes, 3)
                _bn(sd, f"{p}.bn2", planes)
            if b == 0 and (stride != 1 or inplanes != planes * expansion):
                _conv(sd, f"{p}.downsample.0", planes * expansion, inplanes, 1)
                _bn(sd, f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    sd["fc.weight"] = (num_classes, 512 * expansion)
    sd["fc.bias"] = (num_classes,)
    return sd


def reference_mobilenet_v2(num_classes: int = 1000) -> dict:
    sd: dict = {}
    _conv(sd, "features.0.0", 32, 3, 3)
    _bn(sd, "features.0.1", 32)
    setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
    cin, idx = 32, 1
    for t, c, n, _s in setting:
        for _ in range(n):
            p, hidden, j = f"features.{idx}.conv", cin * t, 0
            if t != 1:
                _conv(sd, f"{p}.0.0", hidden, cin, 1)
                _bn(sd, f"{p}.0.1", hidden)
                j = 1
            sd[f"{p}.{j}.0.weight"] = (hidden, 1, 3, 3)  # depthwise
            _bn(sd, f"{p}.{j}.1", hidden)
            _conv(sd, f"{p}.{j + 1}", c, hidden, 1)
            _bn(sd, f"{p}.{j + 2}", c)
            cin, idx = c, idx + 1
    assert idx == 18
    _conv(sd, "features.18.0", 1280, 320, 1)
    _bn(sd, "features.18.1", 1280)
    sd["classifier.1.weight"] = (num_classes, 1280)
    sd["classifier.1.bias"] = (num_classes,)
    return sd


REFERENCES = {
    "tv_resnet18": lambda: reference_resnet(False, [2, 2, 2, 2]),
    "tv_resnet34": lambda: reference_resnet(False, [3, 4, 6, 3]),
    "tv_resnet50": lambda: reference_resnet(True, [3, 4, 6, 3]),
    "mobilenet_v2": reference_mobilenet_v2,
}


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_and_shapes_match_torchvision(name):
    m = models.create_model(name, 1000, 3, 224)
    expected = REFERENCES[name]()
    got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert list(got) == list(expected)  # same keys in the same order
    assert got == expected
    assert sum(p.numel() for p in m.parameters()) == PARAMS[name]
    # a checkpoint with torchvision's keys loads strictly
    torch.manual_seed(0)
    ckpt = {k: torch.randn(shape) if shape else torch.tensor(7) for k, shape in expected.items()}
    m.load_state_dict(ckpt, strict=True)


def _numel(shape: tuple) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


@pytest.mark.parametrize("name", NAMES)
def test_reference_generator_agrees_with_torchvisions_parameter_counts(name):
    expected = REFERENCES[name]()
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    assert sum(_numel(s) for k, s in expected.items() if not k.endswith(buffers)) == PARAMS[name]


@pytest.mark.parametrize("name", NAMES)
def test_head_stem_and_feature_attributes(name):
    m = models.create_model(name, 5, 3, 64)
    modules = dict(m.named_modules())
    assert isinstance(modules[m.head_name], nn.Linear) and modules[m.head_name].out_features == 5
    assert isinstance(modules[m.stem_name], nn.Conv2d) and f"{m.stem_name}.weight" in m.state_dict()
    assert m.num_classes == 5 and m.test_scale == 1.0
    m.eval()
    f = m.forward_features(torch.rand(2, 3, 224, 224))
    assert f.shape == (2, m.num_features, 7, 7)
    assert m.num_features == {"tv_resnet50": 2048, "mobilenet_v2": 1280}.get(name, 512)
    assert (f >= 0).all()  # after the last ReLU / ReLU6
    assert (getattr(m, "cpu_autocast", True) is False) == (name == "mobilenet_v2")


def test_resnet50_strides_on_the_3x3_conv_as_torchvision_v1_5():
    m = models.create_model("tv_resnet50", 1000, 3, 224)
    for layer in ("layer2", "layer3", "layer4"):
        block = getattr(m, layer)[0]
        assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
        assert block.downsample[0].stride == (2, 2)


def test_mobilenet_v2_classifier_is_dropout_then_linear():
    m = models.create_model("mobilenet_v2", 1000, 3, 224)
    assert isinstance(m.classifier[0], nn.Dropout) and m.classifier[0].p == 0.2
    assert isinstance(m.classifier[1], nn.Linear)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_classes", [2, 5])
@pytest.mark.parametrize("size", [32, 64])
def test_forward_shapes(name, num_classes, size):
    m = models.create_model(name, num_classes, 3, size)
    out = m(torch.rand(2, 3, size, size).contiguous(memory_format=torch.channels_last))
    assert out.shape == (2, 1 if num_classes == 2 else num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_grey_input_and_eval_test_scale(name):
    m = models.create_model(name, 3, 1, 32, test_scale=1.5)
    assert m.state_dict()[f"{m.stem_name}.weight"].shape[1] == 1
    assert m.test_scale == 1.5
    m.eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        out = m(x)
        f = m.forward_features(x)
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    assert f.shape[-1] == 2  # 48 px after the 1.5x enlargement -> 48 / 32 = 1.5 -> 2 (ceil)
