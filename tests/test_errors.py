"""Bad input: one clear line naming what/where/fix, exit code 2, no traceback, no finished-looking run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_subprocess, write_image_folder, write_seed_csv

def assert_clean_error(r, *needles: str, code: int = 2) -> None:
    assert r.code == code, r
    assert "Traceback" not in r.err and "Traceback" not in r.out
    lines = [ln for ln in r.err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.err
    for n in needles:
        assert n in lines[0], (n, lines[0])

def assert_no_finished_run(run: Path) -> None:
    assert not (run / "model.safetensors").exists()

def _rewrite_line(path: Path, line_no: int, fn) -> None:
    lines = path.read_text().splitlines()
    lines[line_no - 1] = fn(lines[line_no - 1])
    path.write_text("\n".join(lines) + "\n")

@pytest.mark.parametrize(
    "damage, needles",
    [
        (lambda d: _rewrite_line(d / "input.csv", 7, lambda s: s.rsplit(",", 1)[0]), ["input.csv", "line 7"]),
        (lambda d: _rewrite_line(d / "input.csv", 3, lambda s: "12,abc," + s.split(",", 2)[2]), ["input.csv", "line 3", "column 2", "abc"]),
        (lambda d: _rewrite_line(d / "input.csv", 4, lambda s: "300," + s.split(",", 1)[1]), ["input.csv", "line 4", "column 1", "300"]),
        (lambda d: _rewrite_line(d / "labels.csv", 2, lambda s: ""), ["labels.csv"]),
        (lambda d: (d / "labels.csv").write_text("\n".join(["1"] * 150) + "\n"), ["labels.csv", "150", "160"]),
        (lambda d: (d / "labels.csv").unlink(), ["labels.csv", "missing"]),
    ],
    ids=["ragged-row", "non-numeric", "out-of-range", "blank-label", "label-count", "missing-labels"],
)
def test_bad_seed_csv(cli, seed_dir, tmp_path, damage, needles):
    damage(seed_dir)
    r = cli("train", "--model", "seed_cnn", "--data", seed_dir, "--epochs", "1", "--out", tmp_path / "run")
    assert_clean_error(r, *needles)
    assert not (tmp_path / "run").exists()

def test_column_count_that_fits_no_shape(cli, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    np.savetxt(d / "input.csv", np.ones((10, 50)), delimiter=",", fmt="%d")
    np.savetxt(d / "labels.csv", np.arange(10) % 2, fmt="%d")
    assert_clean_error(cli("train", "--data", d), "50", "--image-shape")
    assert_clean_error(cli("train", "--data", d, "--image-shape", "5,5,3"), "50")

def test_missing_dataset(cli, tmp_path):
    assert_clean_error(cli("train", "--data", tmp_path / "nope"), "nope", "no such file")

def test_empty_class_folder(cli, tmp_path, image_folder):
    (image_folder / "empty").mkdir()
    assert_clean_error(cli("train", "--data", image_folder, "--out", tmp_path / "r"), "empty", "no images")
    assert not (tmp_path / "r").exists()

def test_unreadable_images_beyond_the_allowed_fraction(cli, tmp_path):
    root = write_image_folder(tmp_path / "imgs", n_per_class=5)
    (root / "circle" / "broken.jpg").write_bytes(b"not a jpeg at all")
    assert_clean_error(cli("train", "--data", root, "--out", tmp_path / "r"), "broken.jpg", "--max-bad-fraction")
    # allowed: skipped and recorded in the run folder
    r = cli("train", "--data", root, "--image-size", "32", "--epochs", "1", "--max-bad-fraction", "0.2", "--out", tmp_path / "r2", "--quiet")
    assert r.code == 0, r
    assert "broken.jpg" in (tmp_path / "r2" / "bad_files.txt").read_text()

@pytest.mark.parametrize(
    "args, needles",
    [
        (["--model", "nonet"], ["nonet", "seed_cnn"]),
        (["--epochs", "abc"], ["--epochs", "abc"]),
        (["--epochs", "0"], ["epochs"]),
        (["--lr", "-1"], ["lr"]),
        (["--precision", "fp8"], ["--precision", "fp8"]),
        (["--model-arg", "depth=3"], ["depth", "filters"]),
        (["--val-split", "1.5"], ["val_split"]),
        (["--image-shape", "ax3"], ["--image-shape"]),
    ],
)
def test_wrong_options(cli, seed_dir, tmp_path, args, needles):
    r = cli("train", "--model", "seed_cnn", "--data", seed_dir, "--out", tmp_path / "r", *args)
    assert_clean_error(r, *needles)
    assert_no_finished_run(tmp_path / "r")

def test_config_file_errors(cli, seed_dir, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {seed_dir}\nepoch: 3\n")
    assert_clean_error(cli("train", "--config", cfg), "epoch", "epochs")
    cfg.write_text(f"data: {seed_dir}\nepochs: many\n")
    assert_clean_error(cli("train", "--config", cfg), "epochs", "int")
    cfg.write_text("data: [unclosed\n")
    assert_clean_error(cli("train", "--config", cfg), "c.yaml", "YAML")

def test_run_folder_already_holding_a_run(cli, trained_run, seed_dir):
    run, _ = trained_run
    assert_clean_error(cli("train", "--data", seed_dir, "--out", run), "already holds a run", "--overwrite")

def test_predict_and_evaluate_bad_inputs(cli, trained_run, tmp_path):
    run, data = trained_run
    (tmp_path / "notes.jpg").write_text("hello")
    r = cli("predict", run, tmp_path / "notes.jpg")
    assert r.code == 2 and "notes.jpg" in r.err and "Traceback" not in r.err
    assert_clean_error(cli("predict", run, tmp_path / "missing.png"), "missing.png")
    assert_clean_error(cli("evaluate", tmp_path, "--data", data), "model.safetensors")
    assert_clean_error(cli("evaluate", run, "--data", "builtin:digits"), "classes")
    assert_clean_error(cli("evaluate", run), "--data")
    (tmp_path / "fake.safetensors").write_bytes(b"\x00" * 64)
    assert_clean_error(cli("evaluate", tmp_path / "fake.safetensors", "--data", data), "fake.safetensors")

def test_model_file_never_unpickles(tmp_path):
    """A pickle payload named model.safetensors is refused without running it."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"x": Evil()}, tmp_path / "model.safetensors")
    r = run_subprocess("evaluate", tmp_path / "model.safetensors", "--data", "builtin:digits")
    assert r.code == 2 and "Traceback" not in r.err
    assert not marker.exists()

def test_ctrl_c_leaves_a_usable_checkpoint_and_resume_finishes(tmp_path):
    data = write_seed_csv(tmp_path / "d", n_train=800, n_test=20, size=32)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "cnnlab", "train", "--model", "seed_cnn", "--data", str(data), "--epochs", "30", "--batch-size", "16", "--out", str(run)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "last.ckpt").exists():
        time.sleep(0.2)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, (out, err)  # 128 + SIGINT: interrupted, not failed
    assert "Traceback" not in err and "cnnlab train --resume" in err
    assert not (run / "model.safetensors").exists()
    state = torch.load(run / "last.ckpt", weights_only=True)
    assert state["epoch"] >= 1
    from cnnlab.engine.run_dir import read_run_json

    assert read_run_json(run)["status"] == "interrupted"
    # shorten the remaining work, then resume to completion

    state["config"]["epochs"] = state["epoch"]
    torch.save(state, run / "last.ckpt")
    r = run_subprocess("train", "--resume", run)
    assert r.code == 0, r
    assert (run / "model.safetensors").is_file() and read_run_json(run)["status"] == "completed"
