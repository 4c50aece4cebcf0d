"""The training loop's user-facing controls: gradient accumulation (the update of an N-times larger batch),
callbacks (every hook, in order, able to stop training cleanly), and mid-epoch checkpoints (`--checkpoint-every`)
that a SIGKILL cannot take away: the resumed run ends bit-identical with an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import cnnlab
from cnnlab.engine.checkpoint import load_checkpoint
from conftest import write_seed_csv

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

EXACT = ("--model", "seed_cnn", "--aug", "none", "--precision", "fp32", "--deterministic", "--quiet")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_seed_csv(tmp_path_factory.mktemp("loop") / "d", n_train=120, n_test=20, size=16)


def _weights(run):
    return load_file(run / "model.safetensors")


def test_accumulated_batches_give_the_update_of_one_large_batch(cli, data, tmp_path):
    # 108 training images: one batch of 32 images = 4 batches of 8 (the last step: 12 images = 8 + 4), same order
    sgd = ("--optimizer", "sgd", "--lr", "0.05", "--epochs", "2")  # (SGD: a wrongly weighted loss would show; Adam would hide it)
    big = cli("train", "--data", data, *EXACT, *sgd, "--batch-size", "32", "--out", tmp_path / "big")
    small = cli("train", "--data", data, *EXACT, *sgd, "--batch-size", "8", "--accum-steps", "4", "--out", tmp_path / "acc")
    plain = cli("train", "--data", data, *EXACT, *sgd, "--batch-size", "8", "--out", tmp_path / "small")
    assert big.code == small.code == plain.code == 0, (big, small, plain)
    a, b, c = _weights(tmp_path / "big"), _weights(tmp_path / "acc"), _weights(tmp_path / "small")
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k  # the same update, to float rounding
    assert any(not torch.allclose(a[k], c[k], rtol=1e-3, atol=1e-5) for k in a)  # batches of 8 alone learn differently
    cfg = (tmp_path / "acc" / "config.yaml").read_text()
    assert "accum_steps: 4" in cfg


def test_accumulation_resumes_exactly_after_a_stop(cli, data, tmp_path, monkeypatch):
    from cnnlab.engine import trainer

    args = ("train", "--data", data, *EXACT, "--batch-size", "8", "--accum-steps", "3", "--epochs", "2")
    assert cli(*args, "--out", tmp_path / "full").code == 0
    calls, real = [], trainer.to_input

    def interrupt(*a, **k):  # SIGINT during batch 5 (the middle of the second 3-batch step): the stop waits for batch 7
        calls.append(1)
        if len(calls) == 5:
            signal.raise_signal(signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(trainer, "to_input", interrupt)
    assert cli(*args, "--out", tmp_path / "cut").code == 130
    state = load_checkpoint(tmp_path / "cut")
    assert (state["epoch"], state["step"]) == (1, 6)  # at the next optimizer step: no gradients half added up
    monkeypatch.setattr(trainer, "to_input", real)
    assert cli("train", "--resume", tmp_path / "cut", "--quiet").code == 0
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)


class Recorder(cnnlab.Callback):
    def __init__(self, stop_after_batches=None):
        self.events, self.stop_after = [], stop_after_batches

    def on_train_start(self, run):
        self.events.append(("train_start", run.epoch))

    def on_epoch_start(self, run):
        self.events.append(("epoch_start", run.epoch))

    def on_batch_end(self, run, loss):
        assert loss == loss and loss > 0  # a real, finite loss
        self.events.append(("batch", run.epoch, run.step))
        if self.stop_after and sum(e[0] == "batch" for e in self.events) == self.stop_after:
            run.stop("enough batches")

    def on_epoch_end(self, run, row):
        self.events.append(("epoch_end", row["epoch"], len(run.history)))

    def on_train_end(self, run, test):
        self.events.append(("train_end", test is not None))


def test_callbacks_see_every_point_of_the_run_in_order(data, tmp_path):
    rec = Recorder()
    ds = cnnlab.load_dataset(data)
    result = cnnlab.train("seed_cnn", ds, epochs=2, batch_size=64, out=tmp_path / "run", quiet=True, callbacks=[rec])
    steps = -(-len(ds.train) // 64)
    batches = [("batch", e, s) for e in (1, 2) for s in range(steps)]
    assert rec.events == [("train_start", 1),
                          ("epoch_start", 1), *batches[:steps], ("epoch_end", 1, 1),
                          ("epoch_start", 2), *batches[steps:], ("epoch_end", 2, 2),
                          ("train_end", True)]
    assert len(result.history) == 2


def test_a_callback_stops_training_cleanly_and_the_run_completes(data, tmp_path):
    rec = Recorder(stop_after_batches=1)
    result = cnnlab.train("seed_cnn", data, epochs=5, batch_size=32, out=tmp_path / "run", quiet=True, callbacks=[rec])
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "completed" and info["stopped"] == "enough batches"
    assert len(result.history) == 1 and sum(e[0] == "batch" for e in rec.events) == 1  # the epoch ended at once
    assert (tmp_path / "run" / "model.safetensors").is_file() and (tmp_path / "run" / "report.html").is_file()


def test_a_callback_that_is_not_a_callback_is_a_clear_error(cli, data, tmp_path):
    with pytest.raises(cnnlab.CnnlabError, match="not a cnnlab.Callback"):
        cnnlab.train("seed_cnn", data, epochs=1, out=tmp_path / "run", quiet=True, callbacks=[print])


@pytest.mark.parametrize("value", ["0", "-2", "5x", "0m"])
def test_bad_checkpoint_every_and_accum_steps_are_one_line_errors(cli, data, tmp_path, value):
    r = cli("train", "--data", data, *EXACT, "--epochs", "1", "--checkpoint-every", value, "--out", tmp_path / "a")
    assert r.code == 2 and "checkpoint_every" in r.err and r.err.count("\n") == 1, r
    r = cli("train", "--data", data, *EXACT, "--epochs", "1", "--accum-steps", "0", "--out", tmp_path / "b")
    assert r.code == 2 and "accum_steps" in r.err, r
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_sigkill_mid_epoch_loses_only_the_steps_since_the_last_checkpoint(data, tmp_path):
    """--checkpoint-every 2: last.ckpt is written every 2 optimizer steps inside the epoch; a SIGKILL (which no
    handler can catch) then costs at most 2 steps, and the resumed run matches an uninterrupted one bit for bit."""
    args = ("train", "--data", data, *EXACT, "--batch-size", "8", "--epochs", "2", "--checkpoint-every", "2")
    cmd = [sys.executable, "-m", "cnnlab"]
    full = subprocess.run([*cmd, *args, "--out", tmp_path / "full"], capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr
    run = tmp_path / "cut"
    p = subprocess.Popen([*cmd, *args, "--out", run], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt, deadline = run / "last.ckpt", time.monotonic() + 240
    seen = None
    while p.poll() is None and time.monotonic() < deadline:  # wait for a mid-epoch checkpoint of epoch 1
        if ckpt.exists():
            try:
                state = torch.load(ckpt, weights_only=True)
            except Exception:
                continue  # (replaced while read)
            if state["epoch"] == 1 and state["step"] >= 4:
                seen = (state["epoch"], state["step"])
                break
        time.sleep(0.002)
    if seen is None:
        p.kill()
        pytest.skip("the run finished epoch 1 before a mid-epoch checkpoint was seen (machine too fast for this run)")
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=60)
    state = load_checkpoint(run)
    assert state["step"] % 2 == 0 and (state["epoch"], state["step"]) >= seen  # mid-epoch, at an optimizer step
    r = subprocess.run([*cmd, "train", "--resume", run, "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    a, b = _weights(tmp_path / "full"), _weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ha = (tmp_path / "full" / "metrics.csv").read_text().splitlines()
    hb = (run / "metrics.csv").read_text().splitlines()
    assert [r_.split(",")[:5] for r_ in ha] == [r_.split(",")[:5] for r_ in hb]  # the same losses and accuracies
