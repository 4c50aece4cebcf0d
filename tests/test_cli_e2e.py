"""End-to-end: the seed tutorial's steps through the CLI on small generated data."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from sklearn.metrics import accuracy_score, log_loss

from cnnlab.engine.model_file import load_model_file, read_metadata

from conftest import run_subprocess, write_image_folder, write_seed_csv


def test_train_writes_complete_run_folder(trained_run):
    run, _ = trained_run
    for name in ("config.yaml", "metrics.csv", "model.safetensors", "last.ckpt", "curves.png", "samples.png", "predictions.png", "run.json"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert set(rows[0]) >= {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"}
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["seed"] == 0
    assert set(info["seconds"]) >= {"load", "train", "evaluate"}
    assert info["test"]["n"] == 60
    meta = read_metadata(run)
    assert meta["class_names"] == ["circle", "square"] and meta["input_shape"] == [3, 32, 32]
    assert meta["model"] == "seed_cnn"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["epochs"] == 3 and cfg["batch_size"] == 32 and cfg["classes"] == ["circle", "square"]


def test_train_prints_epochs_run_folder_and_test_accuracy(cli, tmp_path):
    data = write_seed_csv(tmp_path / "d", n_train=100, n_test=30)
    r = cli("train", "--model", "seed_cnn", "--data", data, "--epochs", "2", "--batch-size", "16", "--out", tmp_path / "r")
    assert r.code == 0, r
    assert "epoch 1/2" in r.out and "epoch 2/2" in r.out and "val_acc" in r.out
    assert f"run folder: {tmp_path / 'r'}" in r.out
    assert f"report: {tmp_path / 'r' / 'report.html'}" in r.out
    assert "test accuracy:" in r.out


def test_evaluate_json_matches_sklearn_on_predicted_probabilities(cli, trained_run):
    run, data = trained_run
    r = cli("evaluate", run, "--data", data, "--json")
    assert r.code == 0, r
    res = json.loads(r.out)
    assert {"loss", "accuracy", "n", "split"} <= set(res) and res["split"] == "test" and res["n"] == 60
    # independent computation: rebuild the model from the file, run it by hand, score with scikit-learn
    model, meta = load_model_file(run)
    x = np.loadtxt(data / "input_test.csv", delimiter=",").reshape(-1, 32, 32, 3) / 255.0
    y = np.loadtxt(data / "labels_test.csv").astype(int)
    with torch.no_grad():
        p1 = torch.sigmoid(model(torch.tensor(x, dtype=torch.float32).permute(0, 3, 1, 2))[:, 0]).numpy()
    assert res["accuracy"] == pytest.approx(accuracy_score(y, p1 > 0.5), abs=1e-9)
    assert res["loss"] == pytest.approx(log_loss(y, p1, labels=[0, 1]), rel=1e-4)


def test_evaluate_other_splits_and_plain_output(cli, trained_run):
    run, data = trained_run
    r = cli("evaluate", run, "--data", data, "--split", "val")
    assert r.code == 0 and r.out.startswith("val: loss")
    r = cli("evaluate", run / "model.safetensors", "--data", data, "--split", "train", "--json")
    assert json.loads(r.out)["n"] == 180  # 200 minus the 10% validation split


def test_predict_files_and_folders_json(cli, trained_run, tmp_path):
    run, _ = trained_run
    imgs = write_image_folder(tmp_path / "new", n_per_class=3, size=57)  # other size: resized to the model's input
    one_square = sorted((imgs / "square").iterdir())[0]
    r = cli("predict", run, imgs / "circle", one_square, "--json", "--top-k", "2")
    assert r.code == 0, r
    res = json.loads(r.out)
    assert len(res) == 4
    for item in res:
        assert item["class"] in ("circle", "square")
        assert 0.5 <= item["probability"] <= 1
        assert [t["class"] for t in item["top_k"]][0] == item["class"] and len(item["top_k"]) == 2
        assert sum(t["probability"] for t in item["top_k"]) == pytest.approx(1, abs=1e-5)


def test_predict_random_saves_png_with_prediction_and_truth(cli, trained_run, tmp_path):
    run, data = trained_run
    out = tmp_path / "pred.png"
    r = cli("predict", run, "--data", data, "--random", "--seed", "3", "--out", out, "--json")
    assert r.code == 0, r
    res = json.loads(r.out)
    assert res["split"] == "test" and res["truth"] in ("circle", "square") and res["correct"] == (res["class"] == res["truth"])
    assert Image.open(out).size[0] > 100


def test_show_random_and_grid(cli, seed_dir, tmp_path):
    r = cli("show", "--data", seed_dir, "--random", "--out", tmp_path / "one.png")
    assert r.code == 0 and (tmp_path / "one.png").is_file() and str(tmp_path / "one.png") in r.out
    r = cli("show", "--data", seed_dir, "--grid", "9", "--out", tmp_path / "grid.png")
    assert r.code == 0 and Image.open(tmp_path / "grid.png").size[0] > 300


def test_train_from_image_folder_npz_and_builtin(cli, tmp_path, image_folder):
    r = cli("train", "--model", "seed_cnn", "--data", image_folder, "--image-size", "32", "--epochs", "1", "--out", tmp_path / "a", "--quiet")
    assert r.code == 0, r
    assert read_metadata(tmp_path / "a")["class_names"] == ["circle", "square"]
    x = np.random.default_rng(0).integers(0, 256, (60, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(60) % 3)
    r = cli("train", "--model", "seed_cnn", "--data", tmp_path / "d.npz", "--epochs", "1", "--out", tmp_path / "b", "--quiet")
    assert r.code == 0, r
    assert read_metadata(tmp_path / "b")["input_shape"] == [1, 28, 28]
    r = cli("train", "--model", "seed_cnn", "--data", "builtin:digits?size=28", "--epochs", "1", "--out", tmp_path / "c", "--quiet")
    assert r.code == 0, r
    assert len(read_metadata(tmp_path / "c")["class_names"]) == 10


def test_image_folder_with_split_subfolders(cli, tmp_path):
    root = tmp_path / "split"
    write_image_folder(root / "train", n_per_class=10, size=32)
    write_image_folder(root / "val", n_per_class=3, size=32)
    write_image_folder(root / "test", n_per_class=4, size=32)
    r = cli("train", "--model", "seed_cnn", "--data", root, "--image-size", "32", "--epochs", "1", "--out", tmp_path / "r", "--quiet")
    assert r.code == 0, r
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["dataset"]["splits"] == {"train": 20, "val": 6, "test": 8}


def test_config_yaml_repeats_the_run(cli, tmp_path, seed_dir):
    r = cli("train", "--model", "seed_cnn", "--data", seed_dir, "--epochs", "2", "--batch-size", "32", "--seed", "5", "--deterministic", "--out", tmp_path / "a", "--quiet")
    assert r.code == 0, r
    r = cli("train", "--config", tmp_path / "a" / "config.yaml", "--out", tmp_path / "b", "--quiet")
    assert r.code == 0, r
    cols = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"]
    rows = [[{k: row[k] for k in cols} for row in csv.DictReader(open(tmp_path / d / "metrics.csv"))] for d in "ab"]
    assert rows[0] == rows[1]
    # a flag overrides the file
    r = cli("train", "--config", tmp_path / "a" / "config.yaml", "--epochs", "1", "--out", tmp_path / "c", "--quiet")
    assert r.code == 0 and len(list(csv.DictReader(open(tmp_path / "c" / "metrics.csv")))) == 1


def test_data_convert_round_trip(cli, tmp_path, image_folder):
    r = cli("data", "convert", image_folder, tmp_path / "csv", "--to", "csv", "--image-size", "24")
    assert r.code == 0, r
    assert (tmp_path / "csv" / "classes.txt").read_text().split() == ["circle", "square"]
    r = cli("data", "convert", tmp_path / "csv", tmp_path / "back", "--to", "folder")
    assert r.code == 0, r
    from cnnlab import load_dataset

    a = load_dataset(tmp_path / "csv", val_split=0)
    b = load_dataset(tmp_path / "back", image_size=24, val_split=0)
    assert a.class_names == b.class_names == ["circle", "square"]
    order_a, order_b = np.lexsort(a.train.x.reshape(len(a.train.x), -1).T), np.lexsort(b.train.x.reshape(len(b.train.x), -1).T)
    assert np.array_equal(a.train.x[order_a], b.train.x[order_b]) and np.array_equal(a.train.y[order_a], b.train.y[order_b])


def test_models_command_lists_parameter_counts(cli):
    r = cli("models", "--json")
    rows = {m["name"]: m["parameters"] for m in json.loads(r.out)}
    assert rows["seed_cnn"] == 1_093_665


def test_real_process_entry_point(tmp_path):
    data = write_seed_csv(tmp_path / "d", n_train=60, n_test=20, size=24)
    r = run_subprocess("train", "--model", "seed_cnn", "--data", data, "--epochs", "1", "--out", tmp_path / "r")
    assert r.code == 0, r
    assert "run folder:" in r.out and "Traceback" not in r.err


def test_run_files_get_normal_permissions(trained_run):
    """Atomic writes go through mkstemp (0600); results must be readable like any other file the user writes."""
    import os
    import stat

    run, _ = trained_run
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "metrics.csv", "run.json"):
        mode = stat.S_IMODE(os.stat(run / name).st_mode)
        assert mode == 0o666 & ~umask, (name, oct(mode))


def test_evaluate_and_predict_with_flip_tta_match_a_hand_computation(cli, trained_run, tmp_path):
    run, data = trained_run
    model, _ = load_model_file(run)
    x = np.loadtxt(data / "input_test.csv", delimiter=",").reshape(-1, 32, 32, 3) / 255.0
    y = np.loadtxt(data / "labels_test.csv").astype(int)
    xt = torch.tensor(x, dtype=torch.float32).permute(0, 3, 1, 2)
    with torch.no_grad():
        logit = (model(xt) + model(torch.flip(xt, dims=[3]))) / 2  # mirror = flip the width axis
    p1 = torch.sigmoid(logit[:, 0]).numpy()
    res = json.loads(cli("evaluate", run, "--data", data, "--json", "--tta").out)
    assert res["accuracy"] == pytest.approx(accuracy_score(y, p1 > 0.5), abs=1e-9)
    assert res["loss"] == pytest.approx(log_loss(y, p1, labels=[0, 1]), rel=1e-4)
    Image.fromarray((x[0] * 255).round().astype(np.uint8)).save(tmp_path / "one.png")
    pred = json.loads(cli("predict", run, tmp_path / "one.png", "--json", "--tta").out)[0]
    assert pred["probability"] == pytest.approx(max(p1[0], 1 - p1[0]), abs=1e-5)


def test_output_piped_into_a_reader_that_leaves_early_is_not_an_error(trained_run, tmp_path):
    """`cnnlab predict RUN FOLDER | head -1`: the reader closes the pipe after one line; cnnlab stops quietly with
    128 + SIGPIPE, as `cat` does, instead of an "internal error: BrokenPipeError"."""
    import subprocess
    import sys

    run, data = trained_run
    p = subprocess.Popen([sys.executable, "-m", "cnnlab", "predict", str(run), "--data", str(data), "--random", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)  # (--random also saves prediction.png here)
    p.stdout.close()  # the reader is gone before the first line
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141, err
    assert "internal error" not in err and "Traceback" not in err and "Exception ignored" not in err, err
