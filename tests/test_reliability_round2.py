"""Reliability, round two (issue #21): the probes that used to end in "internal error", in a silently wrong model,
or in `data check` saying ok where `train` refuses — each now one clear line and the right exit code."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from cnnlab.cli._common import run as run_handler

TINY = ("--model", "seed_cnn", "--epochs", "1", "--quiet")


def _png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 12), (value, value, value)).save(path)


@pytest.mark.parametrize("layout", ["single class", "empty class"])
def test_data_check_refuses_what_train_refuses(cli, tmp_path, layout):
    root = tmp_path / "d"
    for i in range(4):
        _png(root / "cats" / f"{i}.png")
    if layout == "empty class":
        (root / "dogs").mkdir()
    check = cli("data", "check", root)
    train = cli("train", "--data", root, *TINY, "--out", tmp_path / "run")
    assert check.code == train.code == 2, (check, train)
    assert check.err == train.err and check.err.count("\n") == 1, (check.err, train.err)


def test_a_seed_csv_whose_labels_are_all_zero_is_refused_like_a_folder(cli, tmp_path):
    d = tmp_path / "csv"
    d.mkdir()
    np.savetxt(d / "input.csv", np.random.default_rng(0).integers(0, 255, (20, 12 * 12 * 3)), fmt="%d", delimiter=",")
    np.savetxt(d / "labels.csv", np.zeros(20), fmt="%d")
    for r in (cli("train", "--data", d, *TINY, "--out", tmp_path / "run"), cli("data", "check", d)):
        assert r.code == 2 and "every training image has the label '0'" in r.err, r
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["file", "/proc/x"])
def test_evaluate_plots_into_an_unwritable_place_is_refused_before_the_work(cli, tmp_path, where):
    run = tmp_path / "run"
    assert cli("train", "--data", "builtin:digits", "--image-size", "16", *TINY, "--out", run).code == 0
    target = tmp_path / "a-file" if where == "file" else where
    if where == "file":
        target.write_text("x")
    r = cli("evaluate", run, "--data", "builtin:digits", "--plots", target)
    assert r.code == 2 and r.err.startswith(f"error: --plots {target}: cannot write there") and r.err.count("\n") == 1, r


def test_an_image_size_beyond_memory_is_refused_before_allocating(cli, tmp_path):
    r = cli("train", "--data", "builtin:digits", "--image-size", "20000", *TINY, "--out", tmp_path / "run")
    assert r.code == 2 and "GiB in memory" in r.err and "--image-size" in r.err, r


def test_out_of_memory_anywhere_is_one_line_not_an_internal_error(capsys):
    def handler(args):
        raise MemoryError()

    assert run_handler(handler, argparse.Namespace(command="train")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory") and "internal error" not in err


@pytest.mark.parametrize("attempt", range(2))
def test_several_ctrl_c_in_quick_succession_leave_a_clean_interrupted_run(tmp_path, attempt):
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "cnnlab", "train", "--data", "builtin:digits", "--image-size", "16", "--model",
                          "seed_cnn", "--epochs", "50", "--batch-size", "16", "--out", str(run), "--quiet"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "last.ckpt").exists() and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.01)
    for _ in range(3 + attempt):  # a burst of Ctrl-C
        p.send_signal(signal.SIGINT)
        time.sleep(0.002 * attempt)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, (p.returncode, err)  # interrupted (128 + SIGINT), wherever the burst lands
    assert "internal error" not in err and "Traceback" not in err, err
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    assert not list(run.glob(".*.tmp")), list(run.iterdir())
