"""Layer-list models (--model-file): build, errors that name the layer, round trip through the model file."""

from __future__ import annotations

import json

import pytest
import torch

from cnnlab import models
from cnnlab.errors import ModelError

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


YAML = """\
layers:
  - Conv2D: {filters: 8, kernel: 3}
  - BatchNorm: {}
  - ReLU: {}
  - MaxPool: {size: 2}
  - Residual:
      - DepthwiseConv2D: {kernel: 3}
      - BatchNorm: {}
      - SiLU: {}
  - AvgPool: {size: 2}
  - Flatten: {}
  - Dropout: {rate: 0.1}
  - Dense: {units: 16}
  - GELU: {}
"""


def test_layer_list_builds_every_layer_type():
    import yaml

    layers = yaml.safe_load(YAML)["layers"]
    m = models.create_model("layer_list", 3, 1, 32, layers=layers)
    assert m(torch.rand(2, 1, 32, 32)).shape == (2, 3)
    assert m.forward_features(torch.rand(2, 1, 32, 32)).shape == (2, 8, 8, 8)


@pytest.mark.parametrize("layers, needles", [
    ([{"Conv2D": {"filters": 8}}, {"Dense": {"units": 4}}], ["layer 1", "Dense", "GlobalAvgPool"]),
    ([{"Conv2D": {"kernel": 3}}], ["layer 0", "filters", "required"]),
    ([{"Conv2D": {"filters": 4}}, {"Blur": {}}], ["layer 1", "unknown layer type 'Blur'"]),
    ([{"Conv2D": {"filters": 4}}, {"Residual": [{"Conv2D": {"filters": 8}}]}, {"GlobalAvgPool": {}}], ["layer 1", "Residual", "differs"]),
    ([{"MaxPool": {"size": 64}}, {"GlobalAvgPool": {}}], ["layer 0", "MaxPool"]),
    ([{"Conv2D": {"filters": 4}}], ["GlobalAvgPool or Flatten"]),
])
def test_shape_and_spec_errors_name_the_layer(layers, needles):
    with pytest.raises(ModelError) as e:
        models.create_model("layer_list", 2, 3, 32, layers=layers)
    for n in needles:
        assert n in str(e.value)


def test_model_file_trains_predicts_and_round_trips(cli, tmp_path, seed_dir):
    spec = tmp_path / "net.yaml"
    spec.write_text(YAML)
    run = tmp_path / "run"
    r = cli("train", "--data", seed_dir, "--model-file", spec, "--epochs", "1", "--out", run, "--quiet")
    assert r.code == 0, r
    from cnnlab.engine.model_file import load_model_file, read_metadata

    meta = read_metadata(run)
    assert meta["model"] == "layer_list" and meta["model_args"]["layers"][4]["Residual"][0] == {"DepthwiseConv2D": {"kernel": 3}}
    model, _ = load_model_file(run)
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 1)
    r = cli("predict", run, "--data", seed_dir, "--random", "--json", "--out", tmp_path / "p.png")
    assert r.code == 0 and json.loads(r.out)["class"], r


def test_bad_model_file_is_a_clear_error(cli, tmp_path, seed_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text("layers:\n  - Conv2D: {filters: 8}\n  - Dense: {units: 3}\n")
    r = cli("train", "--data", seed_dir, "--model-file", bad, "--epochs", "1", "--out", tmp_path / "r")
    assert r.code == 2 and "layer 1" in r.err, r
    r = cli("train", "--data", seed_dir, "--model-file", tmp_path / "missing.yaml", "--out", tmp_path / "r2")
    assert r.code == 2 and "does not exist" in r.err, r
