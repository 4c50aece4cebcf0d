"""report.html: written by every training run, self-contained, rebuilt by `cnnlab report`."""

from __future__ import annotations

import re
import shutil

from test_errors import assert_clean_error


def _check_page(text: str) -> None:
    for section in ("Run", "Config", "Dataset", "Model: seed_cnn", "Training", "Evaluation (test, 60 images)", "Top losses", "Grad-CAM"):
        assert f"<h2>{section}" in text, section
    srcs = re.findall(r'src="([^"]*)"', text) + re.findall(r"href=\"([^\"]*)\"", text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)  # nothing to fetch: opens offline
    assert "circle" in text and "square" in text and "precision" in text


def test_training_writes_report(trained_run):
    run, _ = trained_run
    _check_page((run / "report.html").read_text())


def test_report_command_rebuilds_and_reports_missing_files(cli, trained_run, tmp_path):
    run, data = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "report.html").unlink()
    r = cli("report", copy, "--data", data)
    assert r.code == 0, r
    _check_page((copy / "report.html").read_text())
    (copy / "model.safetensors").unlink()
    assert_clean_error(cli("report", copy), "model.safetensors", "--resume")
    assert_clean_error(cli("report", tmp_path / "nope"), "not a run folder")


def test_curves_show_learning_rate_when_recorded(tmp_path):
    from PIL import Image

    from cnnlab.insight.plots import save_curves

    hist = [{"epoch": e, "train_loss": 1 / e, "train_accuracy": 0.5, "val_loss": 1 / e, "val_accuracy": 0.5, "lr": 0.01 / e} for e in (1, 2, 3)]
    with_lr = Image.open(save_curves(hist, tmp_path / "a.png")).size[0]
    without = Image.open(save_curves([{k: v for k, v in h.items() if k != "lr"} for h in hist], tmp_path / "b.png")).size[0]
    assert with_lr > 1.3 * without  # a third panel: learning rate per epoch
