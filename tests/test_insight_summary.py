"""Model summary against hand computation (seed_cnn) and registry-wide consistency."""

from __future__ import annotations

import json

import pytest
import torch.nn as nn

from cnnlab import models
from cnnlab.insight.summary import GLOBAL, summarize
from test_errors import assert_clean_error


def test_seed_cnn_100px_by_hand():
    s = summarize(models.create_model("seed_cnn", 2, 3, 100), (3, 100, 100))
    assert s["total_parameters"] == 1_093_665
    spatial = [(r["op"], r["output_shape"], r["receptive_field"], r["stride"]) for r in s["layers"] if r["op"] in ("conv2d", "max_pool2d")]
    # conv3: r=3 j=1 -> pool2: r=3+1*1=4 j=2 -> conv3: r=4+2*2=8 j=2 -> pool2: r=8+1*2=10 j=4
    assert spatial == [("conv2d", [32, 98, 98], 3, 1), ("max_pool2d", [32, 49, 49], 4, 2),
                       ("conv2d", [32, 47, 47], 8, 2), ("max_pool2d", [32, 23, 23], 10, 4)]
    by_name = {r["name"]: r for r in s["layers"]}
    assert by_name["conv1"]["parameters"] == 3 * 32 * 9 + 32 and by_name["conv1"]["macs"] == 98 * 98 * 32 * 27
    assert by_name["conv2"]["parameters"] == 32 * 32 * 9 + 32 and by_name["conv2"]["macs"] == 47 * 47 * 32 * 288
    assert by_name["fc1"]["parameters"] == 23 * 23 * 32 * 64 + 64 and by_name["fc1"]["receptive_field"] == GLOBAL
    assert by_name["fc2"]["output_shape"] == [1] and by_name["fc2"]["part"] == "head"
    assert by_name["conv1"]["activation_bytes"] == 32 * 98 * 98 * 4
    assert s["total_macs"] == 98 * 98 * 32 * 27 + 47 * 47 * 32 * 288 + 16928 * 64 + 64
    assert s["features_shape"] == [32, 23, 23]


def test_dilated_strided_layer_list():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 4, 5, stride=2, padding=2), nn.ReLU(), nn.Conv2d(4, 4, 3, dilation=2, padding=2),
                                      nn.AvgPool2d(3, stride=3))
            self.fc = nn.Linear(4, 2)

        def forward_features(self, x):
            return self.body(x)

        def forward_head(self, f):
            return self.fc(f.mean((2, 3)))

    s = summarize(Net(), (1, 36, 36))
    rf = [(r["name"], r["receptive_field"], r["stride"]) for r in s["layers"]]
    # 5x5 s2: r=5 j=2; 3x3 d2: r=5+2*2*2=13 j=2; avg 3 s3: r=13+2*2=17 j=6
    assert rf == [("body.0", 5, 2), ("body.1", 5, 2), ("body.2", 13, 2), ("body.3", 17, 6), ("fc", GLOBAL, None)]


@pytest.mark.parametrize("name", models.list_models())
def test_every_registry_model_summarizes(name):
    model = models.create_model(name, 3, 3, 32)
    s = summarize(model, (3, 32, 32))
    assert s["total_parameters"] == sum(p.numel() for p in model.parameters())
    assert sum(r["parameters"] for r in s["layers"]) == s["total_parameters"]  # every parameter attributed to a row
    assert s["output_shape"] == [3] and s["total_macs"] > 0
    convs = [r for r in s["layers"] if r["op"] == "conv2d"]
    assert convs and all(isinstance(r["receptive_field"], int) for r in convs)


def test_summary_cli(cli, trained_run):
    run, _ = trained_run
    r = cli("summary", run, "--json")
    assert r.code == 0, r
    s = json.loads(r.out)
    assert s["input_shape"] == [3, 32, 32] and s["model"] == "seed_cnn"
    r = cli("summary", "--model", "seed_cnn", "--image-size", "100")
    assert r.code == 0 and "1,093,665" in r.out and "10x10" in r.out, r
    assert_clean_error(cli("summary"), "--model")
    assert_clean_error(cli("summary", "--model", "nope"), "nope")
    assert_clean_error(cli("summary", "--model", "seed_cnn", "--image-size", "6"), "seed_cnn")
