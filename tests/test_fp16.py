"""fp16 training scales the loss (torch.amp.GradScaler), as on a GPU without bf16: small gradients survive, the
scaler's state is in last.ckpt and a resumed fp16 run is bit-identical. CPU autocast supports fp16, so it runs here."""

from __future__ import annotations

import signal

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from cnnlab.config import TrainConfig
from cnnlab.engine import trainer
from cnnlab.engine.model_file import default_normalization
from conftest import write_seed_csv

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


class Quiet(nn.Module):
    """A net whose logits are tiny, so its conv gradients are ~1e-8: below fp16's smallest subnormal (6e-8)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3))) * 1e-6


def _step(scaled: bool) -> torch.Tensor:
    torch.manual_seed(0)
    model = Quiet()
    before = model.conv.weight.detach().clone()
    cfg = TrainConfig(data="x", model="seed_cnn", precision="fp16", grad_clip=0.0)
    ctx = trainer.StepContext(model, torch.optim.SGD(model.parameters(), lr=1e6), cfg, default_normalization(3),
                              torch.device("cpu"), "fp16", 2)
    assert isinstance(ctx.scaler, torch.amp.GradScaler)
    if not scaled:
        ctx.scaler = None  # what fp16 training did before: no loss scaling
    x = torch.randint(0, 256, (8, 8, 8, 3), dtype=torch.uint8)
    trainer.train_step(ctx, x, torch.arange(8) % 2)
    return (model.conv.weight.detach() - before).abs().max()


def test_fp16_loss_scaling_keeps_gradients_that_fp16_flushes_to_zero():
    assert _step(scaled=False) == 0  # the fault: every conv gradient underflowed, the layer never learns
    assert _step(scaled=True) > 0


def test_an_fp16_run_resumes_bit_identical_with_the_scaler_state(cli, tmp_path, monkeypatch):
    data = write_seed_csv(tmp_path / "d", n_train=96, n_test=16, size=16)
    args = ("train", "--data", data, "--model", "seed_cnn", "--batch-size", "32", "--epochs", "2", "--precision", "fp16",
            "--deterministic", "--quiet")
    assert cli(*args, "--out", tmp_path / "full").code == 0
    calls, real = [], trainer.to_input

    def interrupt_in_epoch_2(*a, **k):  # 3 batches per epoch (val split: 86 training images): SIGINT in epoch 2
        calls.append(1)
        if len(calls) == 5:
            signal.raise_signal(signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(trainer, "to_input", interrupt_in_epoch_2)
    r = cli(*args, "--out", tmp_path / "cut")
    assert r.code == 130 and "--resume" in r.err, r
    state = torch.load(tmp_path / "cut" / "last.ckpt", weights_only=True)
    assert state["epoch"] == 2 and state["grad_scaler"]["scale"] > 1  # the loss scale travels with the checkpoint
    monkeypatch.setattr(trainer, "to_input", real)
    assert cli("train", "--resume", tmp_path / "cut", "--quiet").code == 0
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
