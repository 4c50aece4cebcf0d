"""Eval-time enlargement matched to random resized crops (`--test-scale`, models/layers.test_resize)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from cnnlab.data.augment import matched_test_scale, matched_test_size, resolve_ops
from cnnlab.engine.model_file import model_metadata, read_metadata, save_model_file
from cnnlab.engine.predictor import Classifier
from cnnlab.errors import ModelError
from cnnlab.models import create_model, list_models
from tests.conftest import write_image_folder

GLOBAL_POOL = [m for m in list_models() if m not in ("seed_cnn", "layer_list")]


def test_scale_matches_the_strongest_crop_magnification():
    """Hand-computed: size / sqrt(crop_scale), to the nearest multiple of 16 px (8 px below 64 px)."""
    assert matched_test_size(resolve_ops("standard"), 96) == 128  # 96 / sqrt(0.6) = 123.9 -> 128
    assert matched_test_scale(resolve_ops("standard"), 96) == 128 / 96
    assert matched_test_size({"crop_scale": 0.6}, 64) == 80  # 82.6 -> 80
    assert matched_test_size({"crop_scale": 0.6}, 48) == 64  # 62.0 -> 64 (8 px steps below 64 px)
    assert matched_test_size({"crop_scale": 0.3}, 128) == 240  # 233.7 -> 240
    assert matched_test_size(resolve_ops("light"), 96) == 96  # no crops, no enlargement
    assert matched_test_scale(resolve_ops("light"), 96) == 1.0
    assert matched_test_size({"crop_scale": 0.99}, 32) == 32  # rounds back to the same size
    for c in (0.1, 0.3, 0.6, 0.9):  # never smaller, and within half a step of the exact enlargement
        for size in (28, 32, 64, 96, 100, 224):
            got, align = matched_test_size({"crop_scale": c}, size), 16 if size >= 64 else 8
            assert got >= size and got % align == 0 or got == size
            assert got == size or abs(got - size / c**0.5) <= align / 2


@pytest.mark.parametrize("name", GLOBAL_POOL)
def test_eval_mode_equals_the_net_on_a_bicubic_enlarged_input(name):
    torch.manual_seed(0)
    model = create_model(name, 3, 3, (48, 40), test_scale=1.5).eval()
    x = torch.rand(2, 3, 48, 40)
    big = F.interpolate(x, size=(72, 60), mode="bicubic", align_corners=False)
    plain = create_model(name, 3, 3, (48, 40)).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(big), rtol=1e-4, atol=1e-5)
        assert model.forward_features(x).shape == plain.forward_features(big).shape != plain.forward_features(x).shape
    model.train()
    plain.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(1)
    torch.testing.assert_close(a, plain(x))  # training sees the images as they are


def test_model_file_keeps_the_scale(tmp_path):
    model = create_model("resnet9", 2, 3, (64, 64), test_scale=72 / 64).eval()
    save_model_file(tmp_path / "m.safetensors", model, model_metadata(model, ["a", "b"], (3, 64, 64)))
    assert read_metadata(tmp_path / "m.safetensors")["model_args"]["test_scale"] == 72 / 64
    clf = Classifier.load(tmp_path / "m.safetensors")
    assert clf.model.test_scale == 72 / 64
    x = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    from cnnlab.engine.inference import predict_logits

    ref = predict_logits(model, x, clf.meta["normalization"], torch.device("cpu"))
    torch.testing.assert_close(predict_logits(clf.model, x, clf.meta["normalization"], torch.device("cpu")), ref)


def test_onnx_export_includes_the_enlargement(tmp_path):
    from cnnlab.export import export_onnx

    model = create_model("resnet9", 2, 3, (64, 64), test_scale=72 / 64).eval()
    save_model_file(tmp_path / "m.safetensors", model, model_metadata(model, ["a", "b"], (3, 64, 64)))
    res = export_onnx(tmp_path / "m.safetensors")
    assert res["max_abs_diff"] <= 1e-4


def test_bad_scales_and_fixed_size_heads_are_errors():
    with pytest.raises(ModelError, match="fixed-size head"):
        create_model("seed_cnn", 2, 3, (100, 100), test_scale=1.2)
    for bad in (0.5, 5.0, True, "big"):
        with pytest.raises(ModelError, match="test_scale"):
            create_model("resnet9", 2, 3, (64, 64), test_scale=bad)


def test_train_records_the_auto_scale_and_cli_flag(cli, tmp_path):
    data = write_image_folder(tmp_path / "imgs", n_per_class=12, size=40)
    common = ["--model", "resnet9", "--image-size", "32", "--epochs", "1", "--batch-size", "16", "--quiet"]
    r = cli("train", "--data", data, *common, "--aug", "standard", "--out", tmp_path / "auto")
    assert r.code == 0, r
    cfg = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())
    assert cfg["test_scale"] == 40 / 32  # 32 px * 1.127 = 36 px -> 40 px (a multiple of 8)
    meta = read_metadata(tmp_path / "auto" / "model.safetensors")
    assert meta["model_args"]["test_scale"] == 40 / 32
    r = cli("train", "--data", data, *common, "--aug", "light", "--out", tmp_path / "light")
    assert r.code == 0, r
    assert yaml.safe_load((tmp_path / "light" / "config.yaml").read_text())["test_scale"] == 1.0
    assert "test_scale" not in read_metadata(tmp_path / "light" / "model.safetensors")["model_args"]
    r = cli("train", "--data", data, *common, "--test-scale", "1.5", "--out", tmp_path / "flag")
    assert r.code == 0, r
    assert json.loads(json.dumps(read_metadata(tmp_path / "flag" / "model.safetensors")["model_args"]))["test_scale"] == 1.5
    r = cli("train", "--data", data, "--model", "seed_cnn", "--image-size", "32", "--epochs", "1", "--quiet",
            "--test-scale", "1.2", "--out", tmp_path / "seed")
    assert r.code == 2 and "fixed-size head" in r.err and "Traceback" not in r.err
    assert not (tmp_path / "seed" / "model.safetensors").exists()
    r = cli("train", "--data", data, *common, "--test-scale", "0.5", "--out", tmp_path / "small")
    assert r.code == 2 and "test_scale" in r.err


def test_tta_averages_mirrors_at_the_trained_size_and_the_test_scale(cli, tmp_path):
    from PIL import Image

    from cnnlab.engine.model_file import load_model_file

    data = tmp_path / "imgs"
    write_image_folder(data / "train", n_per_class=8, size=32)
    write_image_folder(data / "test", n_per_class=3, size=32)
    r = cli("train", "--data", data, "--model", "resnet9", "--model-arg", "width=8", "--image-size", "32", "--epochs", "1",
            "--batch-size", "16", "--test-scale", "1.5", "--out", tmp_path / "run")
    assert r.code == 0, r
    assert "flip TTA at 2 scales" in r.out
    model, meta = load_model_file(tmp_path / "run")
    img = next((data / "test" / "circle").glob("*.png"))
    u8 = np.asarray(Image.open(img).convert("RGB"))
    norm = meta["normalization"]
    x = torch.tensor(u8, dtype=torch.float32).permute(2, 0, 1)[None] * norm["scale"]
    x = (x - torch.tensor(norm["mean"]).view(1, -1, 1, 1)) / torch.tensor(norm["std"]).view(1, -1, 1, 1)
    model.eval()
    with torch.no_grad():  # by hand: the plain net at 32 px and on a bicubic 48 px enlargement, each with its mirror
        views = [v for v in (x, F.interpolate(x, size=(48, 48), mode="bicubic", align_corners=False)) for v in (v, v.flip(3))]
        model.test_scale = 1.0
        logits = torch.stack([model(v) for v in views]).mean(0)
    p = torch.softmax(logits, 1)[0] if logits.shape[1] > 1 else torch.sigmoid(logits[0, 0]).reshape(1)
    want = float(p.max()) if p.numel() > 1 else max(float(p[0]), 1 - float(p[0]))
    r = cli("predict", tmp_path / "run", img, "--json", "--tta")
    assert r.code == 0, r
    assert json.loads(r.out)[0]["probability"] == pytest.approx(want, abs=1e-5)
    plain = json.loads(cli("predict", tmp_path / "run", img, "--json").out)[0]["probability"]
    assert plain != pytest.approx(want, abs=1e-5)  # the scales matter: without --tta it is one view at 48 px
