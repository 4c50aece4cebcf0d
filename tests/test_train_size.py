"""Training on smaller random crops of larger images (`--train-size`), evaluating the whole images ("FixRes")."""

from __future__ import annotations

import json
import signal

import pytest
import torch
import torch.nn.functional as F
import yaml

from cnnlab.data.augment import Augmenter, batch_generator, matched_test_size, resolve_ops
from cnnlab.engine.model_file import model_metadata, read_metadata, save_model_file
from cnnlab.engine.predictor import Classifier
from cnnlab.errors import ModelError
from cnnlab.models import create_model
from tests.conftest import write_image_folder

pytestmark = pytest.mark.usefixtures("one_thread")


def test_crops_come_out_at_the_training_size_and_are_seeded():
    x = torch.rand(6, 3, 40, 40)
    y = torch.arange(6) % 2
    aug = Augmenter(resolve_ops("standard"), size=32)
    a, _, _ = aug(x, y, batch_generator(0, 1, 0))
    b, _, _ = aug(x, y, batch_generator(0, 1, 0))
    assert a.shape == (6, 3, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a, aug(x, y, batch_generator(0, 1, 1))[0])


def test_without_other_ops_the_crop_is_a_plain_bilinear_resize():
    """Independent check: no augmentation + a training size = F.interpolate(bilinear) of the whole image."""
    x = torch.rand(4, 3, 48, 48)
    aug = Augmenter(resolve_ops("none"), size=32)
    assert aug.enabled
    out, y2, lam = aug(x, torch.zeros(4, dtype=torch.long), batch_generator(0, 1, 0))
    ref = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    assert y2 is None and lam == 1.0
    assert not Augmenter(resolve_ops("none")).enabled  # no size, no ops: batches pass untouched


def test_the_model_is_built_for_its_training_size_and_reloads_the_same(tmp_path):
    # convnext's 'auto' stem patches by 2 below 128 px and by 4 from 128 px: a net trained on 96 px crops
    # of 128 px images must keep the 96 px layers, in training and when its model file is loaded again
    torch.manual_seed(0)
    model = create_model("convnext", 2, 3, (128, 128), train_size=96, width=16)
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes(model) == shapes(create_model("convnext", 2, 3, (96, 96), width=16))
    assert shapes(model) != shapes(create_model("convnext", 2, 3, (128, 128), width=16))
    assert model.cnnlab_args["train_size"] == 96
    model.eval()
    save_model_file(tmp_path / "m.safetensors", model, model_metadata(model, ["a", "b"], (3, 128, 128)))
    meta = read_metadata(tmp_path / "m.safetensors")
    assert meta["input_shape"] == [3, 128, 128] and meta["model_args"]["train_size"] == 96
    clf = Classifier.load(tmp_path / "m.safetensors")
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(clf.model(x), model(x))
    # the same size as the images is no training size at all
    assert "train_size" not in create_model("resnet9", 2, 3, (64, 64), train_size=64).cnnlab_args


def test_fixed_size_heads_and_bad_sizes_are_errors():
    with pytest.raises(ModelError, match="fixed-size head"):
        create_model("seed_cnn", 2, 3, (100, 100), train_size=80)
    for bad in (4, True, 40.5):
        with pytest.raises(ModelError, match="train_size"):
            create_model("resnet9", 2, 3, (64, 64), train_size=bad)


def test_train_on_crops_then_evaluate_predict_and_export_the_whole_images(cli, tmp_path):
    data = write_image_folder(tmp_path / "imgs", n_per_class=12, size=60)
    run = tmp_path / "run"
    r = cli("train", "--data", data, "--model", "resnet9", "--model-arg", "width=8", "--image-size", "48", "--train-size", "32",
            "--epochs", "1", "--batch-size", "8", "--quiet", "--out", run)
    assert r.code == 0, r
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert (cfg["image_size"], cfg["train_size"], cfg["test_scale"]) == (48, 32, 1.0)  # evaluates the 48 px images as they are
    meta = read_metadata(run / "model.safetensors")
    assert meta["input_shape"] == [3, 48, 48] and meta["model_args"]["train_size"] == 32
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    r = cli("evaluate", run, "--data", data, "--split", "val", "--json")
    assert r.code == 0, r
    assert json.loads(r.out)["n"] > 0
    img = next(next(data.iterdir()).iterdir())
    r = cli("predict", run, img)
    assert r.code == 0, r
    r = cli("export", run, "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert r.code == 0, r
    # seed_cnn's Dense head cannot take crops of another size: exit 2, no model file
    r = cli("train", "--data", data, "--model", "seed_cnn", "--image-size", "48", "--train-size", "32", "--epochs", "1",
            "--quiet", "--out", tmp_path / "seed")
    assert r.code == 2 and "fixed-size head" in r.err and "Traceback" not in r.err
    assert not (tmp_path / "seed" / "model.safetensors").exists()
    r = cli("train", "--data", data, "--model", "resnet9", "--train-size", "4", "--epochs", "1", "--quiet", "--out", tmp_path / "tiny")
    assert r.code == 2 and "train_size" in r.err


def test_resume_keeps_the_training_size_and_ends_bit_identical(cli, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from cnnlab.engine import trainer

    data = write_image_folder(tmp_path / "imgs", n_per_class=10, size=48)
    args = ("train", "--data", data, "--model", "convnext", "--model-arg", "width=8", "--image-size", "48", "--train-size", "32",
            "--batch-size", "8", "--epochs", "2", "--deterministic", "--precision", "fp32", "--quiet")
    r = cli(*args, "--out", tmp_path / "full")
    assert r.code == 0, r
    calls, real = [], trainer.batch_generator

    def interrupt_at_batch_4(*a):  # SIGINT in epoch 2: the loop saves and stops at the next batch
        calls.append(a)
        if len(calls) == 4:
            signal.raise_signal(signal.SIGINT)
        return real(*a)

    monkeypatch.setattr(trainer, "batch_generator", interrupt_at_batch_4)
    r = cli(*args, "--out", tmp_path / "cut")
    assert r.code == 130 and "--resume" in r.err, r
    monkeypatch.setattr(trainer, "batch_generator", real)
    r = cli("train", "--resume", tmp_path / "cut", "--quiet")
    assert r.code == 0, r
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_metadata(tmp_path / "cut" / "model.safetensors")["model_args"]["train_size"] == 32


def test_auto_plan_matches_the_image_size_to_the_crops(monkeypatch):
    from cnnlab.config import TrainConfig
    from cnnlab.engine import auto

    def no_probe(*a, **k):
        raise AssertionError("an asked-for training size needs no speed probe")

    monkeypatch.setattr(auto, "images_per_second", no_probe)
    # image folders: --train-size 80 loads the images at the size matched to the crops, 80 / sqrt(0.6) = 103 -> 96 px
    p = auto.plan(TrainConfig(data="x", pretrained=False, train_size=80), 1440, None, 2, 3)
    assert (p.cfg.train_size, p.cfg.image_size, p.cfg.augment) == (80, 96, "standard")
    assert p.cfg.image_size == matched_test_size(resolve_ops("standard"), 80)
    assert "80 px crops of 96 px images" in p.note
    # light augmentation (no crops) keeps one size
    p = auto.plan(TrainConfig(data="x", pretrained=False, train_size=80, augment="light"), 1440, None, 2, 3)
    assert (p.cfg.train_size, p.cfg.image_size) == (None, 80)
    # an asked-for image size is kept as it is, and fixed-size data keeps its size
    monkeypatch.setattr(auto, "images_per_second", lambda size, *a, **k: 400.0 * (64 / size) ** 2)
    assert auto.plan(TrainConfig(data="x", pretrained=False, image_size=48), 1440, None, 2, 3).cfg.train_size is None
    assert auto.plan(TrainConfig(data="x", pretrained=False), 1000, (100, 100), 2, 3).cfg.train_size is None
