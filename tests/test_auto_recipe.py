"""The default recipe (no --model): model, image size and augmentation chosen from the data and the budget.

The speed probe is replaced by a fixed speed table, so the expected choice is computed by hand here.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from cnnlab.config import TrainConfig
from cnnlab.engine import auto
from conftest import write_image_folder, write_seed_csv

pytestmark = pytest.mark.usefixtures("one_thread")


def fake_speed(at_64: float):
    """images/s proportional to 1/pixels, `at_64` images/s at 64 px."""
    return lambda size, *a, **k: at_64 * (64 / size) ** 2


def test_size_is_the_largest_that_fits_min_epochs(monkeypatch):
    monkeypatch.setattr(auto, "images_per_second", fake_speed(400.0))
    cfg = TrainConfig(data="x", pretrained=False, time_budget=600)
    # 1440 images, 600 s: epochs(s) = 600 * 400 * (64/s)^2 / (1.15 * 1440) -> 96: 64.4 (< 80), 80: 92.7
    assert auto.MIN_EPOCHS == 80
    p = auto.plan(cfg, 1440, None, 2, 3)
    assert (p.cfg.model, p.cfg.image_size, p.cfg.augment, p.cfg.train_size) == ("resnet9", 80, "standard", None)
    assert "80 px" in p.note and "~93 epochs" in p.note
    # a small training set gets batches of 32 (twice the steps), a larger one the zoo recipe's 64
    assert p.cfg.batch_size == 32 and "batch 32" in p.note
    # a 10x larger folder gets smaller images; when no size fits, the one with the most epochs
    big = auto.plan(cfg, 14400, None, 2, 3)
    assert (big.cfg.image_size, big.cfg.batch_size) == (32, 64) and "batch 64" in big.note
    monkeypatch.setattr(auto, "images_per_second", lambda size, *a, **k: {64: 50.0, 48: 20.0, 32: 30.0}.get(size, 10.0))
    assert auto.plan(cfg, 14400, None, 2, 3).cfg.image_size == 64
    assert auto.plan(TrainConfig(data="x", pretrained=False, time_budget=1), 14400, None, 2, 3).cfg.image_size == 64


def test_fixed_size_data_keeps_its_size_unless_too_slow(monkeypatch):
    monkeypatch.setattr(auto, "images_per_second", fake_speed(400.0))
    cfg = TrainConfig(data="x", pretrained=False, time_budget=600)
    keep = auto.plan(cfg, 1000, (100, 100), 2, 3)
    assert keep.cfg.image_size is None and keep.cfg.augment == "standard" and "100 px" in keep.note
    # 20000 images of 100 px: ~4 epochs at 100 px -> scaled down; no size gives 80 epochs, so the smallest
    down = auto.plan(cfg, 20000, (100, 100), 2, 3)
    # epochs(s) = 600 * 400 * (64/s)^2 / (1.15 * 20000): 48 -> 18.6, 32 -> 41.7
    assert down.cfg.image_size == 32 and "scaled down from 100 px" in down.note
    tiny = auto.plan(cfg, 500, (8, 8), 10, 1)
    assert tiny.cfg.image_size == 32 and tiny.cfg.augment == "light" and "upscaled from 8 px" in tiny.note


def test_explicit_choices_are_kept(monkeypatch):
    monkeypatch.setattr(auto, "images_per_second", fake_speed(400.0))
    p = auto.plan(TrainConfig(data="x", pretrained=False, image_size=48, augment="strong", batch_size=64), 1440, None, 2, 3)
    assert (p.cfg.image_size, p.cfg.augment, p.cfg.batch_size) == (48, "strong", 64)
    # outside the default recipe an unset batch size is 64, for the seed and the zoo recipe alike
    assert TrainConfig(data="x", model="resnet9").resolved().batch_size == 64
    assert TrainConfig(data="x", model="seed_cnn").resolved().batch_size == 64


def test_the_size_is_chosen_from_the_speed_at_batch_64_unless_the_user_asks_for_less(monkeypatch):
    seen = []
    monkeypatch.setattr(auto, "images_per_second", lambda size, k, c, cfg, *a: seen.append(cfg.batch_size) or 1e6)
    assert auto.plan(TrainConfig(data="x", pretrained=False), 1440, None, 2, 3).cfg.batch_size == 32
    auto.plan(TrainConfig(data="x", pretrained=False, batch_size=16), 1440, None, 2, 3)
    assert seen == [None, 16]  # images_per_second probes min(batch_size or 64, 64) images per step


def test_the_probe_measures_real_steps_and_leaves_the_random_state_alone():
    state = torch.get_rng_state()
    ips = auto.images_per_second(32, 3, 3, TrainConfig(data="x", pretrained=False, batch_size=8, precision="fp32"), steps=1)
    assert ips > 0 and torch.equal(state, torch.get_rng_state())


def test_train_with_no_model_on_an_image_folder_end_to_end(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(auto, "images_per_second", fake_speed(1e6))  # fast enough for the largest size
    root = write_image_folder(tmp_path / "pets", n_per_class=12, size=150)
    run = tmp_path / "run"
    r = cli("train", "--data", root, "--no-pretrained", "--epochs", "1", "--batch-size", "8", "--model-arg", "width=4", "--out", run)
    assert r.code == 0, r
    assert "auto: resnet9 at 128 px" in r.out
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert (cfg["model"], cfg["image_size"], cfg["augment"], cfg["optimizer"]) == ("resnet9", 128, "standard", "adamw")
    assert cfg["test_scale"] == 160 / 128  # 128 / sqrt(0.6) = 165 -> 160 px in eval mode
    meta = json.loads((run / "run.json").read_text())
    assert meta["dataset"]["image_shape"] == [128, 128, 3]
    # the recorded config repeats the run without choosing again
    r = cli("train", "--config", run / "config.yaml", "--out", tmp_path / "again", "--quiet")
    assert r.code == 0 and "auto:" not in r.out


def test_train_with_no_model_on_seed_csv_resizes_when_too_slow(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(auto, "images_per_second", lambda size, *a, **k: 1.0 if size > 32 else 1e6)
    data = write_seed_csv(tmp_path / "d", n_train=60, n_test=20, size=40)
    run = tmp_path / "run"
    r = cli("train", "--data", data, "--no-pretrained", "--epochs", "1", "--model-arg", "width=4", "--out", run)
    assert r.code == 0, r
    assert "scaled down from 40 px" in r.out
    assert json.loads((run / "run.json").read_text())["dataset"]["image_shape"] == [32, 32, 3]
    r = cli("evaluate", run, "--data", data, "--json")  # evaluation resizes the data the same way
    assert r.code == 0, r
    assert json.loads(r.out)["n"] == 20
