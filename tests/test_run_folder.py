"""RunFolder (engine/run_dir.py) reads back what training writes; compare and report read through it and show
what the files say; its writers keep the file formats byte for byte."""

from __future__ import annotations

import csv
import html
import json
import re
import shutil

import pytest
import yaml

import cnnlab
from cnnlab.config import TrainConfig
from cnnlab.engine.checkpoint import load_checkpoint
from cnnlab.engine.run_dir import RunFolder, next_run_dir, read_run_json, write_bad_files, write_json, write_metrics_csv
from cnnlab.errors import CnnlabError, ConfigError
from conftest import write_seed_csv


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    """(TrainResult, RunFolder) of a 3-epoch seed_cnn run on generated data, trained through the API."""
    base = tmp_path_factory.mktemp("run_folder")
    ds = cnnlab.load_dataset(write_seed_csv(base / "data", n_train=120, n_test=40), classes="circle,square")
    result = cnnlab.train("seed_cnn", ds, epochs=3, batch_size=32, out=base / "run", quiet=True)
    return result, RunFolder(result.run_dir)


def test_reads_back_what_training_wrote(trained):
    result, run = trained
    cfg = run.config()
    assert isinstance(cfg, TrainConfig) and cfg.model == "seed_cnn" and cfg.epochs == 3 and cfg.batch_size == 32
    assert cfg.classes == ["circle", "square"] and cfg.lr == 0.001
    assert cfg.to_dict() == result.meta["config"] == load_checkpoint(run.last_ckpt)["config"]  # one config, three copies

    rows = run.metrics()
    assert [r["epoch"] for r in rows] == [1, 2, 3] and all(type(r["epoch"]) is int for r in rows)
    assert list(rows[0]) == ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
    for row, trained_row in zip(rows, result.history, strict=True):  # the CSV keeps 6 significant digits
        for key, value in row.items():
            assert type(value) is (int if key == "epoch" else float)
            assert value == pytest.approx(trained_row[key], rel=1e-5), key

    info = run.info()
    assert run.status == "completed" == info["status"]
    assert info["test"]["accuracy"] == result.test["accuracy"] and info["final"]["epoch"] == 3
    assert run.model_file.is_file() and run.last_ckpt.is_file() and run.report_html.is_file()
    assert set(run.plots()) == {"curves.png", "samples.png", "predictions.png"}
    clf = cnnlab.load(run.path)  # the model loaders find the model file through the run folder
    assert clf.source == run.path and clf.class_names == ["circle", "square"]
    assert cnnlab.load(result).meta is result.meta and cnnlab.load(clf) is clf


def _old_cell(text: str) -> str:
    """How report.html showed a metrics.csv cell before RunFolder: its text, as a whole number or to 4 decimals."""
    try:
        f = float(text)
    except ValueError:
        return text
    return str(int(f)) if f.is_integer() and "." not in text else f"{f:.4f}"


def _metrics_table(run: RunFolder) -> str:
    with open(run.metrics_csv, newline="") as f:
        raw = list(csv.reader(f))
    return "<table>" + "<tr>" + "".join(f"<th>{c}</th>" for c in raw[0]) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{_old_cell(c)}</td>" for c in r) + "</tr>" for r in raw[1:]) + "</table>"


def test_report_shows_the_files_as_written(trained, tmp_path):
    from cnnlab.insight.report import build_report

    _, run = trained
    page = build_report(run.path)
    assert "<h2>Training</h2>" in page and _metrics_table(run) in page
    assert f"<pre>{html.escape(run.config_yaml.read_text())}</pre>" in page
    info = json.loads(run.run_json.read_text())
    assert "<tr><td>status</td><td>completed</td></tr>" in page
    assert f"<tr><td>cnnlab_version</td><td>{info['cnnlab_version']}</td></tr>" in page

    # whole-number floats, exponents, nan and empty cells; no curves.png (drawn from the parsed rows instead);
    # no config.yaml (no dataset to evaluate on: the page still has every other section)
    copy = RunFolder(shutil.copytree(run.path, tmp_path / "copy"))
    copy.config_yaml.unlink()
    copy.curves_png.unlink()
    copy.write_metrics([{"epoch": 1, "train_loss": 0.5, "train_accuracy": 1.0, "val_loss": None, "val_accuracy": float("nan"),
                         "lr": 1e-05, "seconds": 1500000.0}, {"epoch": 2, "train_loss": 2.0, "train_accuracy": 0.123456789,
                                                               "val_loss": 1e6, "val_accuracy": 0.5, "lr": 0.1, "seconds": 3.0}])
    page = build_report(copy.path)
    assert _metrics_table(copy) in page and page.count("data:image/png;base64,") >= 2  # samples + curves
    assert "<td>1500000.0000</td>" in page and "<td>1000000</td>" in page and "<td>nan</td>" in page


def test_compare_reports_what_the_files_say(trained, tmp_path):
    from cnnlab.insight.compare import compare_runs, public

    _, run = trained
    other = tmp_path / "other"
    shutil.copytree(run.path, other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    (other / "config.yaml").write_text(yaml.safe_dump({**cfg, "lr": 0.01, "batch_size": 8}))
    res = public(compare_runs([run.path, other]))
    assert res["differing_keys"] == ["batch_size", "lr"] and res["warnings"] == []
    with open(run.metrics_csv, newline="") as f:
        raw = list(csv.DictReader(f))
    info = json.loads(run.run_json.read_text())
    first = res["runs"][0]
    assert first["epochs"] == len(raw) == 3 and first["status"] == "completed" and first["model"] == "seed_cnn"
    assert first["final"] == {k: float(raw[-1][k]) for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")}
    assert first["best_val_accuracy"] == max(float(r["val_accuracy"]) for r in raw)
    assert first["test_accuracy"] == info["test"]["accuracy"] and first["train_seconds"] == info["seconds"]["train"]
    assert res["runs"][1]["config"] == {"batch_size": 8, "lr": 0.01}


def test_writers_keep_the_file_formats(tmp_path):
    rows = [{"epoch": 1, "train_loss": 0.6931471805599453, "train_accuracy": 0.5, "val_loss": None, "val_accuracy": None,
             "lr": 0.001, "seconds": 12.0, "phase": "frozen"},
            {"epoch": 2, "train_loss": 1e-7, "train_accuracy": 1.0, "val_loss": float("nan"), "val_accuracy": 0.25,
             "lr": 3e-4, "seconds": 1500000.0}]
    write_metrics_csv(tmp_path / "metrics.csv", rows)
    assert (tmp_path / "metrics.csv").read_text() == (
        "epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr,seconds\n"
        "1,0.693147,0.5,,,0.001,12\n"
        "2,1e-07,1,nan,0.25,0.0003,1.5e+06\n")
    run = RunFolder(tmp_path)
    back = run.metrics()
    assert back[0] == {"epoch": 1, "train_loss": 0.693147, "train_accuracy": 0.5, "val_loss": None, "val_accuracy": None,
                       "lr": 0.001, "seconds": 12.0}
    assert back[1]["seconds"] == 1.5e6 and back[1]["val_loss"] != back[1]["val_loss"]  # nan survives
    run.write_metrics(rows)  # the method and trainer.py's function write the same bytes
    assert (tmp_path / "metrics.csv").read_text().endswith("1.5e+06\n")

    write_json(tmp_path / "run.json", {"status": "running", "seconds": {"load": 0.5}, "path": tmp_path})
    assert (tmp_path / "run.json").read_text() == json.dumps({"status": "running", "seconds": {"load": 0.5}, "path": str(tmp_path)}, indent=2) + "\n"
    assert run.status == "running" and run.info()["seconds"] == {"load": 0.5}

    write_bad_files(tmp_path / "bad_files.txt", [("a.jpg", "truncated")])
    run.write_bad_files([("b.png", "not an image"), ("a.jpg", "again")])  # a resumed run keeps the earlier entries
    assert (tmp_path / "bad_files.txt").read_text() == "a.jpg\ttruncated\nb.png\tnot an image\n"

    run.write_config(TrainConfig(data="builtin:shapes", model="resnet9", lr=0.01))
    assert run.config_yaml.read_text() == TrainConfig(data="builtin:shapes", model="resnet9", lr=0.01).to_yaml()
    assert run.config().lr == 0.01 and run.config().model == "resnet9"


def test_unreadable_files_are_named(tmp_path):
    run = RunFolder(tmp_path)
    (tmp_path / "metrics.csv").write_text("epoch,train_loss\n1,0.5\n2,lots\n")
    with pytest.raises(CnnlabError, match=r"metrics.csv line 3, column train_loss: 'lots' is not a number"):
        run.metrics()
    (tmp_path / "metrics.csv").write_text("epoch,train_loss\n1\n")
    with pytest.raises(CnnlabError, match=r"metrics.csv line 2: the row does not have one cell per column"):
        run.metrics()
    (tmp_path / "config.yaml").write_text("data: x\nepoch: 3\n")
    with pytest.raises(ConfigError, match=r"config.yaml: unknown key 'epoch'.*epochs"):
        run.config()
    (tmp_path / "config.yaml").write_text("data: [x\n")
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path}/config.yaml line 2: not valid YAML")):
        run.config()
    (tmp_path / "run.json").write_text("{not json")
    assert run.status is None and read_run_json(tmp_path) == {}  # a status check never fails
    with pytest.raises(CnnlabError, match="run.json: not valid JSON"):
        run.info()
    empty = RunFolder(tmp_path / "empty")
    with pytest.raises(CnnlabError, match="missing metrics.csv"):
        empty.metrics()
    with pytest.raises(CnnlabError, match="missing config.yaml"):
        empty.config()
    assert empty.info() == {} and empty.status is None and empty.plots() == {}
    with pytest.raises(CnnlabError, match="not a run folder"):
        RunFolder.open(tmp_path / "empty")
    with pytest.raises(CnnlabError, match="missing last.ckpt"):
        RunFolder.open(tmp_path, need=("config.yaml", "last.ckpt"))


def test_create_refuses_to_mix_runs_and_overwrite_clears_the_old_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert RunFolder.create().path == tmp_path.joinpath("runs", "train").relative_to(tmp_path)
    assert next_run_dir() == next_run_dir("runs", "train") == tmp_path.joinpath("runs", "train2").relative_to(tmp_path)
    run = RunFolder.create(tmp_path / "r")
    for name in ("run.json", "metrics.csv", "best.safetensors", "report.html", "curves.png", "notes.txt"):
        (run.path / name).write_text("old")
    with pytest.raises(CnnlabError, match="already holds a run — pass --overwrite"):
        RunFolder.create(run.path)
    again = RunFolder.create(run.path, overwrite=True)
    assert sorted(p.name for p in again.path.iterdir()) == [".lock", "notes.txt"]  # the user's own files stay (.lock: this process owns it)
    (tmp_path / "file").write_text("")
    with pytest.raises(CnnlabError, match="exists and is a file"):
        RunFolder.create(tmp_path / "file")
