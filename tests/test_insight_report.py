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
