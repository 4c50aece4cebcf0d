"""Experiment tracking (cnnlab/track/): what TensorBoard and MLflow hold after a run, read back with their own
readers (TensorBoard's EventAccumulator, a local MLflow store through MlflowClient) and checked against the run
folder (metrics.csv, run.json, the PNGs, `cnnlab evaluate --json`); and the bad inputs: --tensorboard or --mlflow
without the package, a TensorBoard folder that cannot be written, an MLflow server that cannot be reached or fails
mid-run."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cnnlab
from conftest import write_seed_csv

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

mlflow = pytest.importorskip("mlflow")  # `make test` installs both (the track extra)
pytest.importorskip("tensorboard")
from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

from cnnlab.track import MlflowTracker, log_report  # noqa: E402

BATCH = 32
TRAIN = ("--model", "seed_cnn", "--batch-size", str(BATCH), "--quiet")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 96 training rows, less a tenth for validation: 3 batches of 32 per epoch; 30 test images
    return write_seed_csv(tmp_path_factory.mktemp("track") / "d", n_train=96, n_test=30, size=16)


@pytest.fixture(autouse=True)
def no_tracking_env(monkeypatch):
    """Each test decides MLflow's environment itself."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def file_store(tmp_path, monkeypatch) -> str:
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3.x keeps the file store behind this switch
    return uri


def metrics_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: float(v) if v else None for k, v in row.items()} for row in csv.DictReader(f)]


def events(run: Path) -> EventAccumulator:
    ea = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea


def scalars(ea: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in ea.Scalars(tag)]


def stderr_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


def hide_module(monkeypatch, name: str) -> None:
    """Make `import name` (and its submodules) fail as if the package were not installed."""
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, name, None)


# ---------------------------------------------------------------------------- TensorBoard


def test_tensorboard_holds_the_runs_scalars_hparams_and_images(cli, data, tmp_path):
    run = tmp_path / "run"
    r = cli("train", "--data", data, *TRAIN, "--epochs", "2", "--out", run)  # no flag: on because tensorboard is installed
    assert r.code == 0, r
    assert stderr_lines(r.err) == []
    ea, rows = events(run), metrics_rows(run)
    assert [row["epoch"] for row in rows] == [1, 2]

    # per epoch, at the epoch number: the same numbers as metrics.csv (CSV keeps 6 significant digits)
    for tag, column in [("train/loss", "train_loss"), ("train/accuracy", "train_accuracy"), ("val/loss", "val_loss"),
                        ("val/accuracy", "val_accuracy"), ("lr", "lr"), ("time/epoch_seconds", "seconds")]:
        got = scalars(ea, tag)
        assert [s for s, _ in got] == [1, 2], tag
        assert [v for _, v in got] == pytest.approx([row[column] for row in rows], rel=1e-4), tag

    # per batch, at the global batch number: 3 batches an epoch (32, 32 and the rest), whose image-weighted mean is
    # the epoch's train loss
    batch = scalars(ea, "train/batch_loss")
    assert [s for s, _ in batch] == list(range(1, 7))
    sizes = np.array([32, 32, len(cnnlab.load_dataset(data).train) - 64])
    assert 0 < sizes[-1] <= 32
    for epoch, row in enumerate(rows):
        losses = np.array([v for _, v in batch[3 * epoch: 3 * epoch + 3]])
        assert float((losses * sizes).sum() / sizes.sum()) == pytest.approx(row["train_loss"], rel=1e-4)

    # hyperparameters (the config) with the final metrics
    info = json.loads((run / "run.json").read_text())
    content = ea.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    hp = {k: v.string_value or v.number_value or v.bool_value for k, v in start.hparams.items()}
    assert hp["model"] == "seed_cnn" and hp["epochs"] == 2 and hp["batch_size"] == BATCH and hp["optimizer"] == "adam"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {"final/val_accuracy", "final/val_loss", "final/test_accuracy", "final/test_loss"}
    assert scalars(ea, "final/test_accuracy") == [(2, pytest.approx(info["test"]["accuracy"]))]
    assert scalars(ea, "final/test_loss") == [(2, pytest.approx(info["test"]["loss"], rel=1e-6))]
    assert scalars(ea, "final/val_accuracy") == [(2, pytest.approx(rows[-1]["val_accuracy"], rel=1e-5))]

    # images: the run folder's sample and prediction grids, pixel for pixel, and the confusion matrix
    for tag, name in [("samples", "samples.png"), ("predictions", "predictions.png")]:
        (image,) = ea.Images(tag)
        logged = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"))
        assert np.array_equal(logged, np.asarray(Image.open(run / name).convert("RGB"))), tag
        assert image.step == 2
    (cm_image,) = ea.Images("confusion_matrix")
    assert cm_image.width > 100 and cm_image.height > 100
    # ... whose counts (the text table) are what `cnnlab evaluate` counts on the test split
    (text,) = ea.Tensors("confusion_matrix/text_summary")
    table = text.tensor_proto.string_val[0].decode()
    counts = [[int(c) for c in line.strip("|").split("|")[1:]] for line in table.splitlines() if line.startswith("| ") and "predicted" not in line]
    ev = cli("evaluate", run, "--data", data, "--json")
    assert ev.code == 0, ev
    assert counts == json.loads(ev.out)["confusion_matrix"]["counts"]
    assert sum(map(sum, counts)) == 30

    # --overwrite: the folder holds the new run's events only
    assert cli("train", "--data", data, *TRAIN, "--epochs", "1", "--out", run, "--overwrite").code == 0
    ea = events(run)
    assert [s for s, _ in scalars(ea, "train/loss")] == [1] and [s for s, _ in scalars(ea, "train/batch_loss")] == [1, 2, 3]


def test_no_tensorboard_writes_nothing_and_tensorboard_without_the_package_says_how_to_install_it(cli, data, tmp_path, monkeypatch):
    r = cli("train", "--data", data, *TRAIN, "--epochs", "1", "--out", tmp_path / "off", "--no-tensorboard")
    assert r.code == 0, r
    assert not (tmp_path / "off" / "tensorboard").exists()

    hide_module(monkeypatch, "tensorboard")
    hide_module(monkeypatch, "torch.utils.tensorboard")
    r = cli("train", "--data", data, *TRAIN, "--epochs", "1", "--out", tmp_path / "insist", "--tensorboard")
    assert r.code == 2
    (line,) = stderr_lines(r.err)
    assert line.startswith("error: --tensorboard needs the tensorboard package") and "pip install tensorboard" in line
    assert not (tmp_path / "insist").exists()  # refused before any run folder or training

    # auto (no flag) without the package: trains without TensorBoard, silently
    r = cli("train", "--data", data, *TRAIN, "--epochs", "1", "--out", tmp_path / "auto")
    assert r.code == 0, r
    assert stderr_lines(r.err) == []
    assert (tmp_path / "auto" / "model.safetensors").is_file() and not (tmp_path / "auto" / "tensorboard").exists()


def test_an_unwritable_tensorboard_folder_fails_before_training_with_tensorboard_and_warns_without(cli, data, tmp_path):
    # RUN/tensorboard is taken by a file (permission bits would not stop root, which CI runs as)
    for name in ("insist", "auto"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "tensorboard").write_text("not a folder")

    r = cli("train", "--data", data, *TRAIN, "--epochs", "1", "--out", tmp_path / "insist", "--tensorboard")
    assert r.code == 2
    (line,) = stderr_lines(r.err)
    assert line.startswith(f"error: {tmp_path / 'insist' / 'tensorboard'}: cannot write TensorBoard logs there") and "--no-tensorboard" in line
    assert json.loads((tmp_path / "insist" / "run.json").read_text())["status"] == "failed"
    assert not (tmp_path / "insist" / "metrics.csv").exists()  # no epoch was trained

    r = cli("train", "--data", data, *TRAIN, "--epochs", "1", "--out", tmp_path / "auto")
    assert r.code == 0, r
    (line,) = stderr_lines(r.err)
    assert line.startswith("warning: ") and "cannot write TensorBoard logs there" in line and "training goes on without TensorBoard" in line
    assert (tmp_path / "auto" / "model.safetensors").is_file() and (tmp_path / "auto" / "report.html").is_file()


class StopAfterFirstEpoch(cnnlab.Callback):
    def on_epoch_end(self, run, row):
        from cnnlab.engine.trainer import StopTraining

        raise StopTraining("stopped for the test")


def test_a_resumed_run_continues_the_same_tensorboard_and_mlflow_runs(data, tmp_path, file_store):
    run = tmp_path / "run"
    with pytest.raises(cnnlab.StopTraining):
        cnnlab.train("seed_cnn", str(data), epochs=3, batch_size=BATCH, out=run, quiet=True, callbacks=[StopAfterFirstEpoch()])
    first = json.loads((run / "mlflow.json").read_text())
    cnnlab.train(resume=run, quiet=True)
    assert json.loads((run / "mlflow.json").read_text()) == {**first, "finished": True}  # the same MLflow run, finished

    rows = metrics_rows(run)
    ea = events(run)
    assert [s for s, _ in scalars(ea, "train/loss")] == [1, 2, 3]  # each epoch once, across two event files
    assert [v for _, v in scalars(ea, "train/loss")] == pytest.approx([r["train_loss"] for r in rows], rel=1e-4)
    assert [s for s, _ in scalars(ea, "train/batch_loss")] == list(range(1, 10))

    client = MlflowClient(file_store)
    history = client.get_metric_history(first["run_id"], "val_loss")
    assert [(m.step, m.value) for m in history] == [(r["epoch"], pytest.approx(r["val_loss"], rel=1e-5)) for r in rows]
    assert client.get_run(first["run_id"]).info.status == "FINISHED"
    assert len(client.search_runs([first["experiment_id"]])) == 1


# ---------------------------------------------------------------------------- MLflow


def test_mlflow_file_store_holds_params_metrics_and_the_model_file(cli, data, tmp_path, file_store):
    run = tmp_path / "run"
    r = cli("train", "--data", data, *TRAIN, "--epochs", "2", "--lr", "0.002", "--out", run, "--no-tensorboard")  # on by MLFLOW_TRACKING_URI
    assert r.code == 0, r
    assert stderr_lines(r.err) == []
    assert not (run / "tensorboard").exists()
    record = json.loads((run / "mlflow.json").read_text())
    assert record["tracking_uri"] == file_store and record["finished"] is True
    client = MlflowClient(file_store)
    logged = client.get_run(record["run_id"])
    assert logged.info.status == "FINISHED" and logged.info.run_name == "run"
    assert client.get_experiment(logged.info.experiment_id).name == "cnnlab"

    params = logged.data.params
    assert (params["model"], params["epochs"], params["batch_size"], params["lr"], params["seed"]) == ("seed_cnn", "2", str(BATCH), "0.002", "0")
    assert "image_size" not in params  # unset (None) values are left out

    rows = metrics_rows(run)
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"):
        history = client.get_metric_history(record["run_id"], key)
        assert [m.step for m in history] == [1, 2], key
        assert [m.value for m in history] == pytest.approx([row[key] for row in rows], rel=1e-5), key
    info = json.loads((run / "run.json").read_text())
    assert logged.data.metrics["test_accuracy"] == pytest.approx(info["test"]["accuracy"])
    assert logged.data.metrics["best_val_accuracy"] == pytest.approx(info["best"]["accuracy"])

    artifacts = {a.path for a in client.list_artifacts(record["run_id"])}
    assert {"model.safetensors", "config.yaml", "metrics.csv", "run.json", "curves.png"} <= artifacts
    local = Path(client.download_artifacts(record["run_id"], "model.safetensors", str(tmp_path / "dl")))
    assert hashlib.sha256(local.read_bytes()).digest() == hashlib.sha256((run / "model.safetensors").read_bytes()).digest()

    # report.html is written after training ends; log_report adds it (cnnlab.train calls it after the report)
    log_report(run)
    assert "report.html" in {a.path for a in client.list_artifacts(record["run_id"])}
    logged_report = Path(client.download_artifacts(record["run_id"], "report.html", str(tmp_path / "dl2"))).read_bytes()
    assert logged_report == (run / "report.html").read_bytes()

    # a later run in this folder (--overwrite, without MLflow) leaves the record behind: its report is not this run's
    info["started"] = "2099-01-01T00:00:00+0000"
    (run / "run.json").write_text(json.dumps(info))
    (run / "report.html").write_text("<html>another run</html>")
    log_report(run)
    assert Path(client.download_artifacts(record["run_id"], "report.html", str(tmp_path / "dl3"))).read_bytes() == logged_report


def test_an_unreachable_mlflow_server_is_one_warning_and_the_run_completes(cli, data, tmp_path, monkeypatch, capsys):
    port = closed_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # were MLflow's own HTTP calls reached: no minutes of retries
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    warning = (f"warning: MLflow server http://127.0.0.1:{port} cannot be reached (Connection refused) — training goes on "
               "without MLflow; the run folder has everything")
    t0 = time.perf_counter()
    tracker = MlflowTracker(required=True)
    assert time.perf_counter() - t0 < 10 and tracker.client is None  # decided at once, before training
    assert stderr_lines(capsys.readouterr().err) == [warning]

    run = tmp_path / "run"
    r = cli("train", "--data", data, *TRAIN, "--epochs", "2", "--out", run, "--mlflow", "--no-tensorboard")
    assert r.code == 0, r
    assert stderr_lines(r.err) == [warning]
    assert len(metrics_rows(run)) == 2 and (run / "model.safetensors").is_file() and (run / "report.html").is_file()
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    assert not (run / "mlflow.json").exists()


def test_an_mlflow_server_failing_mid_run_is_one_warning_and_the_run_completes(cli, data, tmp_path, file_store, monkeypatch):
    from mlflow.exceptions import MlflowException

    real, calls = MlflowClient.log_batch, []

    def failing(self, *a, **k):  # params and epoch 1 arrive, then the server goes away
        calls.append(1)
        if len(calls) > 2:
            raise MlflowException("API request to endpoint /api/2.0/mlflow/runs/log-batch failed with error: Connection refused\n(details)")
        return real(self, *a, **k)

    monkeypatch.setattr(MlflowClient, "log_batch", failing)
    run = tmp_path / "run"
    r = cli("train", "--data", data, *TRAIN, "--epochs", "3", "--out", run, "--mlflow", "--no-tensorboard")
    assert r.code == 0, r
    (line,) = stderr_lines(r.err)  # once, not once per epoch
    assert line.startswith(f"warning: MLflow logging to {file_store} failed (API request to endpoint") and line.endswith(
        "— training goes on without MLflow; the run folder has everything")
    assert len(metrics_rows(run)) == 3 and (run / "model.safetensors").is_file()
    record = json.loads((run / "mlflow.json").read_text())
    assert record["finished"] is False
    assert [m.step for m in MlflowClient(file_store).get_metric_history(record["run_id"], "train_loss")] == [1]


def test_mlflow_without_the_package(cli, data, tmp_path, monkeypatch):
    hide_module(monkeypatch, "mlflow")
    r = cli("train", "--data", data, *TRAIN, "--epochs", "1", "--out", tmp_path / "insist", "--mlflow", "--no-tensorboard")
    assert r.code == 2
    (line,) = stderr_lines(r.err)
    assert line.startswith("error: --mlflow needs the mlflow package") and "pip install mlflow" in line
    assert not (tmp_path / "insist").exists()

    # MLFLOW_TRACKING_URI alone: one warning, and the run trains
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    r = cli("train", "--data", data, *TRAIN, "--epochs", "1", "--out", tmp_path / "env", "--no-tensorboard")
    assert r.code == 0, r
    (line,) = stderr_lines(r.err)
    assert line.startswith("warning: MLFLOW_TRACKING_URI is set but the mlflow package is not installed") and "--no-mlflow" in line
    assert (tmp_path / "env" / "model.safetensors").is_file()

    # --no-mlflow: MLFLOW_TRACKING_URI is not looked at
    r = cli("train", "--data", data, *TRAIN, "--epochs", "1", "--out", tmp_path / "off", "--no-tensorboard", "--no-mlflow")
    assert r.code == 0 and stderr_lines(r.err) == [], r


def test_config_values_become_flat_params():
    from cnnlab.config import TrainConfig
    from cnnlab.track.params import MAX_PARAM_CHARS, flat_params

    cfg = TrainConfig(data="d", model="resnet9", model_args={"width": 48, "layers": [{"Conv2D": {"filters": 8}}] * 100},
                      classes=["cat", "dog"], tensorboard=None)
    flat = flat_params(cfg)
    assert flat["model_args.width"] == 48 and flat["classes"] == "cat,dog" and flat["model"] == "resnet9"
    assert flat["model_args.layers"].startswith('[{"Conv2D":{"filters":8}}') and len(flat["model_args.layers"]) == MAX_PARAM_CHARS
    assert "tensorboard" not in flat and all(isinstance(v, (bool, int, float, str)) for v in flat.values())
