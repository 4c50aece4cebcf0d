"""The training recipe: optimizers, schedules, weight-decay groups, EMA, early stopping, best/last
checkpoints, time budget (with a fake clock, never wall time), exact resume, class balance."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cnnlab import models
from cnnlab.config import TrainConfig
from cnnlab.engine import optim, trainer
from cnnlab.engine.schedule import LrSchedule
from conftest import write_seed_csv

TINY = ("--model", "resnet9", "--model-arg", "width=4", "--batch-size", "32", "--quiet")


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_seed_csv(tmp_path_factory.mktemp("recipe") / "d", n_train=160, n_test=40, size=32)


def test_schedules_have_their_shapes():
    one = LrSchedule("onecycle", 100)
    assert one.factor(0) == pytest.approx(0.04) and one.factor(25) == pytest.approx(1.0) and one.factor(100) < 0.01
    cos = LrSchedule("cosine", 100)
    assert cos.factor(0) < 0.1 and cos.factor(5) == pytest.approx(1.0, abs=0.01) and cos.factor(100) == pytest.approx(0.0, abs=1e-6)
    assert LrSchedule("constant", 100).factor(70) == 1.0
    plateau = LrSchedule("plateau", 100, plateau_patience=2)
    for loss in (1.0, 0.9, 0.95, 0.95):
        plateau.epoch_end(loss)
    assert plateau.factor(50) == pytest.approx(0.2)
    state = plateau.state_dict()
    again = LrSchedule("plateau", 1)
    again.load_state_dict(state)
    assert again.factor(3) == pytest.approx(0.2) and again.total_steps == 100


def test_weight_decay_skips_norms_and_biases():
    m = models.create_model("resnet9", 2, 3, 32, width=4)
    decay, no_decay = optim.param_groups(m, 0.05)
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0 and len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))


@pytest.mark.parametrize("name, cls", [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD), ("adam", torch.optim.Adam)])
def test_optimizers(name, cls):
    m = models.create_model("resnet9", 2, 3, 32, width=4)
    opt = trainer.build_optimizer(m, TrainConfig(data="x", model="resnet9", optimizer=name, lr=0.01))
    assert isinstance(opt, cls)
    if name == "sgd":
        assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.9


def test_recipe_defaults_differ_for_seed_cnn_and_zoo_models():
    seed = TrainConfig(data="x", model="seed_cnn").resolved()
    assert (seed.optimizer, seed.schedule, seed.epochs, seed.lr, seed.augment, seed.time_budget) == ("adam", "constant", 5, 1e-3, "none", None)
    zoo = TrainConfig(data="x", model="resnet9").resolved()
    assert (zoo.optimizer, zoo.schedule, zoo.augment, zoo.label_smoothing, zoo.time_budget) == ("adamw", "onecycle", "light", 0.1, 600.0)
    assert TrainConfig(data="x", model="resnet9", epochs=3).resolved().time_budget is None


def test_soft_target_loss_matches_the_plain_loss_without_smoothing():
    from cnnlab.data.augment import soft_targets
    from cnnlab.engine.inference import loss_fn

    y = torch.tensor([0, 1, 1, 0])
    logits = torch.randn(4, 1)
    assert torch.allclose(trainer.train_loss(logits, soft_targets(y, 2)), loss_fn(logits, y))
    y3, logits3 = torch.tensor([0, 2, 1]), torch.randn(3, 3)
    assert torch.allclose(trainer.train_loss(logits3, soft_targets(y3, 3)), loss_fn(logits3, y3))
    w = trainer.class_weights(torch.tensor([0, 0, 0, 1]), 2)
    assert torch.allclose(w, torch.tensor([4 / 6, 2.0]))


def test_full_recipe_run_writes_best_and_last(cli, data, tmp_path):
    run = tmp_path / "run"
    r = cli("train", "--data", data, *TINY, "--epochs", "3", "--optimizer", "sgd", "--schedule", "cosine", "--ema",
            "--grad-clip", "1.0", "--balance", "--aug", "strong", "--label-smoothing", "0.1", "--out", run)
    assert r.code == 0, r
    assert (run / "best.safetensors").is_file() and (run / "model.safetensors").is_file()
    state = torch.load(run / "last.ckpt", weights_only=True)
    assert state["ema"]["updates"] == 3 * 5 and state["schedule"]["kind"] == "cosine"
    lrs = [float(line.split(",")[5]) for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert lrs[0] > lrs[-1]
    info = json.loads((run / "run.json").read_text())
    assert info["test"]["tta"] is True and info["best"]["epoch"] >= 1
    r = cli("predict", run / "best.safetensors", "--data", data, "--random", "--json", "--out", tmp_path / "p.png")
    assert r.code == 0, r


def test_patience_stops_early(cli, data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setattr(trainer, "evaluate_on_split", lambda *a, **k: {"loss": 1.0, "accuracy": 0.5, "n": 1, "logits": torch.zeros(40, 1),
                                                                       "index": np.arange(40)})
    r = cli("train", "--data", data, *TINY, "--epochs", "10", "--patience", "2", "--out", run)
    assert r.code == 0, r
    info = json.loads((run / "run.json").read_text())
    assert len(info["final"]) and info["stopped"].startswith("early stopping") and info["final"]["epoch"] == 3


class FakeClock:
    """perf_counter that advances `tick` seconds per call: the budget logic sees time pass, tests never wait."""

    def __init__(self, tick):
        self.now, self.tick = 0.0, tick

    def __call__(self):
        self.now += self.tick
        return self.now


def test_time_budget_plans_epochs_to_fit(cli, data, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer.time, "perf_counter", FakeClock(0.5))
    run = tmp_path / "run"
    r = cli("train", "--data", data, *TINY, "--time-budget", "20", "--out", run)
    assert r.code == 0, r
    info = json.loads((run / "run.json").read_text())
    assert 1 < info["final"]["epoch"] < 1000
    assert info["seconds"]["train"] <= 20 * 1.1
    assert "time budget" in info["stopped"]


def test_whole_command_ends_within_the_time_budget(data, tmp_path):
    """A real `python -m cnnlab train` process: start-up, loading, training, the test score and the report
    all fit in --time-budget (within 10%), as the wall clock outside the process sees it."""
    import time

    from conftest import run_subprocess

    t0 = time.perf_counter()
    r = run_subprocess("train", "--data", data, *TINY, "--time-budget", "25", "--out", tmp_path / "run")
    wall = time.perf_counter() - t0
    assert r.code == 0, r
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert "time budget" in info["stopped"] and info["final"]["epoch"] > 1
    assert wall <= 25 * 1.1, f"{wall:.1f}s for a 25s budget"


def test_time_budget_too_short_for_one_epoch_is_a_clear_error(cli, data, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer.time, "perf_counter", FakeClock(10.0))
    r = cli("train", "--data", data, *TINY, "--time-budget", "1", "--out", tmp_path / "run")
    assert r.code == 2 and "too short for one epoch" in r.err, r


def test_resume_is_bit_identical_with_the_full_recipe(cli, data, tmp_path, monkeypatch):
    args = ("train", "--data", data, *TINY, "--epochs", "2", "--deterministic", "--precision", "fp32", "--ema", "--aug", "strong")
    r = cli(*args, "--out", tmp_path / "full")
    assert r.code == 0, r
    calls = []
    real = trainer.batch_generator

    def interrupt_at_batch_7(*a):  # SIGINT in epoch 2, batch 2: the loop saves and stops at the next batch
        calls.append(a)
        if len(calls) == 7:
            signal.raise_signal(signal.SIGINT)
        return real(*a)

    monkeypatch.setattr(trainer, "batch_generator", interrupt_at_batch_7)
    r = cli(*args, "--out", tmp_path / "cut")
    assert r.code == 130 and "--resume" in r.err, r
    state = torch.load(tmp_path / "cut" / "last.ckpt", weights_only=True)
    assert (state["epoch"], state["step"]) == (2, 2) and state["ema"] is not None
    monkeypatch.setattr(trainer, "batch_generator", real)
    r = cli("train", "--resume", tmp_path / "cut", "--quiet")
    assert r.code == 0, r
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_recipe_values_are_errors(cli, data, tmp_path):
    r = cli("train", "--data", data, *TINY, "--aug-arg", "blur=1", "--epochs", "1", "--out", tmp_path / "a")
    assert r.code == 2 and "blur" in r.err
    r = cli("train", "--data", data, *TINY, "--time-budget", "-5", "--out", tmp_path / "b")
    assert r.code == 2 and "time_budget" in r.err
    r = cli("train", "--data", data, *TINY, "--label-smoothing", "1.5", "--out", tmp_path / "c")
    assert r.code == 2 and "label_smoothing" in r.err


def test_lr_find_suggests_an_lr_and_saves_a_plot(cli, data, tmp_path):
    out = tmp_path / "lr.png"
    r = cli("lr-find", "--data", data, "--model", "resnet9", "--model-arg", "width=4", "--batch-size", "32",
            "--steps", "30", "--end-lr", "10", "--out", out, "--json")
    assert r.code == 0, r
    res = json.loads(r.out)
    assert 5 <= res["steps"] <= 30 and 1e-6 <= res["suggested_lr"] <= 10
    assert res["lrs"] == sorted(res["lrs"]) and out.stat().st_size > 1000
    r = cli("lr-find", "--data", data, "--start-lr", "1", "--end-lr", "0.1", "--out", out)
    assert r.code == 2 and "--start-lr" in r.err


def test_lr_find_suggestion_ignores_the_noise_of_the_first_batches():
    """A curve like the cats/dogs photos' (flat and noisy to 1e-5, falling to a minimum at ~1e-2, then diverging):
    the suggestion is a tenth of the minimum's LR, not the first LR, whose noise looks like the steepest fall."""
    from cnnlab.engine.lr_find import _steepest

    lrs = np.logspace(-6, 0, 100)
    x = np.log10(lrs)
    loss = np.where(x < -5, 0.7, np.where(x < -2, 0.7 - 0.4 * (x + 5) / 3, 0.3 + 3 * (x + 2) ** 2))
    loss = loss + np.random.default_rng(0).normal(0, 0.01, 100)
    loss[:2] = (0.72, 0.60)  # the first batches: a steep, meaningless drop
    stop = int(np.argmin(loss)) + 5  # the test ends soon after the minimum (divergence)
    suggested = _steepest(list(lrs[:stop]), list(loss[:stop]))
    assert suggested == pytest.approx(lrs[int(np.argmin(loss))] / 10)
    assert 3e-4 < suggested < 3e-3
