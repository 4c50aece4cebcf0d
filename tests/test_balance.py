"""Imbalanced classes: `--balance sampler` (class-balanced draws, seeded and resumable), `--balance loss` and
`--class-weights NAME=W`. On a generated 10:1 folder the minority class's recall rises (scikit-learn's recall)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import recall_score

import cnnlab
from cnnlab.config import TrainConfig, config_from_dict
from cnnlab.engine import trainer

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread
ARGS = ("--model", "seed_cnn", "--image-size", "12", "--channels", "1", "--epochs", "4", "--batch-size", "32", "--quiet")


def _write(root, split, counts, rng):
    for cls, n, shift in (("major", counts[0], 0), ("minor", counts[1], 14)):  # a weak brightness signal
        (root / split / cls).mkdir(parents=True)
        for i in range(n):
            px = np.clip(rng.normal(128 + shift, 40, (12, 12)), 0, 255).astype(np.uint8)
            Image.fromarray(px, "L").save(root / split / cls / f"{i}.png")


@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    root, rng = tmp_path_factory.mktemp("skew") / "d", np.random.default_rng(0)
    _write(root, "train", (400, 40), rng)
    _write(root, "val", (40, 40), rng)
    _write(root, "test", (100, 100), rng)
    return root


def _minority_recall(run, root) -> float:
    clf = cnnlab.load(run)
    ds = cnnlab.api.dataset_for_model(clf, str(root))
    test = ds.splits["test"]
    pred = clf.predict_proba(test.x).argmax(1)
    return recall_score(test.y, pred, pos_label=ds.class_names.index("minor"))


def test_a_balanced_sampler_raises_the_minority_recall(cli, skewed, tmp_path):
    assert cli("train", "--data", skewed, *ARGS, "--out", tmp_path / "plain").code == 0
    r = cli("train", "--data", skewed, *ARGS, "--balance", "sampler", "--out", tmp_path / "sampler")
    assert r.code == 0, r
    plain, balanced = _minority_recall(tmp_path / "plain", skewed), _minority_recall(tmp_path / "sampler", skewed)
    assert balanced >= plain + 0.3, (plain, balanced)  # measured: 0.0 -> ~0.9
    assert "balance: sampler" in (tmp_path / "sampler" / "config.yaml").read_text()


def test_the_sampler_draws_classes_equally_and_is_a_function_of_seed_and_epoch():
    y = torch.tensor([0] * 900 + [1] * 100)
    w = trainer.balanced_sample_weights(y, 2)
    a, b = trainer.epoch_order(1000, 3, 2, w), trainer.epoch_order(1000, 3, 2, w)
    assert torch.equal(a, b) and not torch.equal(a, trainer.epoch_order(1000, 3, 3, w))  # resumable: no hidden state
    share = float((y[a] == 1).float().mean())
    assert 0.45 < share < 0.55  # the minority is 10% of the data but half of the draws


def test_class_weights_by_name_weight_the_loss(skewed):
    cfg = TrainConfig(data="x", class_weights={"minor": 4.0})
    w = trainer.loss_weights(cfg, torch.tensor([0, 0, 1]), ["major", "minor"])
    assert w.tolist() == [1.0, 4.0]
    auto = trainer.loss_weights(TrainConfig(data="x", balance="loss"), torch.tensor([0, 0, 0, 1]), ["a", "b"])
    assert torch.allclose(auto, torch.tensor([4 / 6, 2.0]))  # n / (K * count)


def test_class_weights_from_the_command_line_reach_the_loss(cli, skewed, tmp_path, monkeypatch):
    seen = []
    real = trainer.train_loss
    monkeypatch.setattr(trainer, "train_loss", lambda logits, t, w=None, **kw: seen.append(w) or real(logits, t, w, **kw))
    r = cli("train", "--data", skewed, *ARGS[:-3], "--epochs", "1", "--class-weights", "minor=5,major=0.5", "--out", tmp_path / "r")
    assert r.code == 0, r
    labels = {round(float(v), 3) for w in seen for v in w}
    assert labels <= {0.5, 5.0} and 5.0 in labels
    assert "minor: 5" in (tmp_path / "r" / "config.yaml").read_text()


@pytest.mark.parametrize("args, message", [
    (("--class-weights", "tiger=2"), "'tiger' not among the classes"),
    (("--class-weights", "minor=0"), "class_weights"),
    (("--class-weights", "minor=2", "--balance"), "choose one"),
    (("--balance", "oversample"), "invalid choice"),
])
def test_bad_balance_options_are_one_line_errors(cli, skewed, tmp_path, args, message):
    r = cli("train", "--data", skewed, *ARGS, *args, "--out", tmp_path / "r")
    assert r.code == 2 and message in r.err and r.err.count("\n") == 1, r


def test_old_config_files_with_a_balance_switch_still_load():
    assert config_from_dict({"data": "x", "balance": True}).balance == "loss"
    assert config_from_dict({"data": "x", "balance": False}).balance == "none"
