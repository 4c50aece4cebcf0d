"""Training under stress: non-finite loss, full or read-only disks, occupied run folders, determinism."""

from __future__ import annotations

import csv
import errno
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_seed_csv
from test_errors import assert_clean_error

from cnnlab.engine.checkpoint import load_checkpoint
from cnnlab.engine.run_dir import read_run_json


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_seed_csv(tmp_path_factory.mktemp("rel") / "d", n_train=96, n_test=16, size=24)


def train_args(data: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "--model", "seed_cnn", "--data", str(data), "--epochs", "2", "--batch-size", "32", "--out", str(run), "--quiet", *extra]


def assert_no_partial_files(run: Path) -> None:
    """Nothing half-written: no temp files left, and every checkpoint/model file present loads."""
    assert not [p.name for p in run.glob(".*.tmp")], list(run.iterdir())
    if (run / "last.ckpt").exists():
        load_checkpoint(run)
    if (run / "model.safetensors").exists():
        load_file(run / "model.safetensors")


# ------------------------------------------------------------------ numerics


def test_huge_learning_rate_stops_with_a_clear_message(cli, data, tmp_path):
    run = tmp_path / "run"
    r = cli(*train_args(data, run, "--lr", "1e12"))
    assert_clean_error(r, "loss became", "--lr", "no checkpoint was saved yet", code=1)
    assert not (run / "model.safetensors").exists()
    assert read_run_json(run)["status"] == "failed"
    assert_no_partial_files(run)


def test_divergence_after_a_good_epoch_keeps_the_last_good_checkpoint(cli, data, tmp_path, monkeypatch):
    from cnnlab.engine import trainer

    run = tmp_path / "run"
    real_loss = trainer.loss_fn

    def loss_fn(logits, y):  # from the first checkpoint on, the loss is NaN (as after a blow-up)
        loss = real_loss(logits, y)
        return loss * float("nan") if (run / "last.ckpt").exists() else loss

    monkeypatch.setattr(trainer, "loss_fn", loss_fn)
    r = cli(*train_args(data, run, "--epochs", "3"))
    assert_clean_error(r, "loss became nan at epoch 2, batch 1", str(run / "last.ckpt"), code=1)
    state = load_checkpoint(run)
    assert state["epoch"] == 2 and state["step"] == 0 and len(state["history"]) == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (run / "model.safetensors").exists() and read_run_json(run)["status"] == "failed"
    monkeypatch.setattr(trainer, "loss_fn", real_loss)
    r = cli("train", "--resume", run, "--quiet")  # the good state really resumes
    assert r.code == 0, r
    assert (run / "model.safetensors").is_file()


# ------------------------------------------------------------------ disks


def _partial_then_enospc(real_write, fail_on_call: int):
    calls = []

    def write(obj, path, *a, **kw):
        calls.append(path)
        if len(calls) == fail_on_call:
            Path(path).write_bytes(b"PK\x03\x04 half a file")  # a partial write first, as a real full disk does
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(obj, path, *a, **kw)

    return write


def test_disk_full_while_writing_a_checkpoint(cli, data, tmp_path, monkeypatch):
    from cnnlab.engine import checkpoint

    run = tmp_path / "run"
    monkeypatch.setattr(checkpoint.torch, "save", _partial_then_enospc(torch.save, fail_on_call=2))
    r = cli(*train_args(data, run))
    assert_clean_error(r, "last.ckpt", "No space left on device", "free some disk space", code=1)
    state = load_checkpoint(run)  # the epoch-1 checkpoint, untouched
    assert state["epoch"] == 2 and len(state["history"]) == 1
    assert not (run / "model.safetensors").exists()
    assert_no_partial_files(run)


def test_disk_full_while_writing_the_model_file(cli, data, tmp_path, monkeypatch):
    from cnnlab.engine import model_file

    run = tmp_path / "run"
    real = model_file.save_file

    def save_file(tensors, path, *a, **kw):
        Path(path).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(model_file, "save_file", save_file)
    r = cli(*train_args(data, run))
    assert_clean_error(r, "model.safetensors", "No space left on device", code=1)
    assert not (run / "model.safetensors").exists()
    assert_no_partial_files(run)
    monkeypatch.setattr(model_file, "save_file", real)
    r = cli("train", "--resume", run, "--quiet")  # space freed: the finished state is still there
    assert r.code == 0, r
    assert_no_partial_files(run)
    assert (run / "model.safetensors").is_file()


@contextmanager
def tmpfs(path: Path, options: str):
    """A real small or read-only filesystem (needs root and mount rights; skipped otherwise)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_really_full_disk(cli, data, tmp_path):
    with tmpfs(tmp_path / "small", "size=256k") as small:
        run = small / "run"
        r = cli(*train_args(data, run))
        assert r.code == 1 and "Traceback" not in r.err and "internal error" not in r.err, r
        assert "No space left on device" in r.err, r
        assert_no_partial_files(run)
        assert not (run / "model.safetensors").exists()


def test_read_only_output_folder(cli, data, tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        r = cli(*train_args(data, ro / "run"))
        assert_clean_error(r, str(ro / "run"), "cannot write the run folder", "Read-only file system")


def test_output_folder_under_a_file(cli, data, tmp_path):
    (tmp_path / "afile").write_text("x")
    assert_clean_error(cli(*train_args(data, tmp_path / "afile" / "run")), "cannot write the run folder", "--out")
    assert_clean_error(cli(*train_args(data, tmp_path / "afile")), "exists and is a file")


def test_unwritable_output_folder(cli, data, tmp_path, monkeypatch):
    """Root writes through mode bits, so a chmod-ed folder proves nothing here: simulate EACCES on the probe."""
    real = Path.write_text

    def write_text(self, *a, **kw):
        if self.name == ".cnnlab-write-test":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "write_text", write_text)
    run = tmp_path / "locked"
    assert_clean_error(cli(*train_args(data, run)), "locked", "Permission denied", "writable --out")
    assert not (run / "config.yaml").exists()


@pytest.mark.parametrize("markers", [("run.json", "model.safetensors"), ("last.ckpt",), ("config.yaml",)])
def test_existing_run_is_never_touched(cli, data, tmp_path, markers):
    run = tmp_path / "run"
    run.mkdir()
    for m in markers:
        (run / m).write_bytes(b"precious " + m.encode())
    assert_clean_error(cli(*train_args(data, run)), "already holds a run", "--overwrite")
    assert sorted(p.name for p in run.iterdir()) == sorted(markers)
    assert all((run / m).read_bytes() == b"precious " + m.encode() for m in markers)


# ------------------------------------------------------------------ determinism


def metrics_without_seconds(run: Path) -> list[dict]:
    """metrics.csv rows minus the `seconds` column (wall time differs between any two runs)."""
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_same_seed_same_metrics_and_weights(cli, data, tmp_path):
    runs = {}
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        r = cli(*train_args(data, tmp_path / name, "--seed", seed, "--deterministic", "--device", "cpu"))
        assert r.code == 0, r
        runs[name] = (metrics_without_seconds(tmp_path / name), load_file(tmp_path / name / "model.safetensors"))
    (ma, wa), (mb, wb), (mc, wc) = runs["a"], runs["b"], runs["c"]
    assert len(ma) == 2 and ma == mb
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # the oracle can tell runs apart: another seed gives other numbers
    assert ma != mc and not all(torch.equal(wa[k], wc[k]) for k in wa)
