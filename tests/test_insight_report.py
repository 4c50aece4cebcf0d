"""report.html: written by every training run, self-contained, rebuilt by `cnnlab report`."""

from __future__ import annotations

import json
import re
import shutil

from test_errors import assert_clean_error


# The result a user came for first (numbers, curves, confusion matrix, predictions, mistakes), then how it was made.
SECTIONS = ("Results", "Training", "Evaluation (test, 60 images)", "Predictions", "Top losses", "Grad-CAM", "Dataset",
            "Model: seed_cnn", "Run", "Config")


def _check_page(text: str, run=None) -> None:
    positions = [text.find(f"<h2>{section}") for section in SECTIONS]
    assert all(p >= 0 for p in positions), [s for s, p in zip(SECTIONS, positions) if p < 0]
    assert positions == sorted(positions), "sections out of order"
    srcs = re.findall(r'src="([^"]*)"', text) + re.findall(r"href=\"([^\"]*)\"", text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)  # nothing to fetch: opens offline
    assert "circle" in text and "square" in text and "precision" in text
    results = text[positions[0]:positions[1]]
    for alt, section in (("training curves", "Training"), ("confusion matrix", "Evaluation"), ("sample predictions", "Predictions"),
                         ("training samples", "Dataset")):
        at = text.find(f'alt="{alt}"')
        assert at > text.find(f"<h2>{section}"), alt
    if run is not None:  # the numbers training recorded, in the first table
        info = json.loads((run / "run.json").read_text())
        assert f"{info['test']['accuracy']:.2%}" in results and f"{info['final']['val_accuracy']:.2%}" in results
        assert f"{info['final']['train_accuracy']:.2%}" in results and f"epoch {info['best']['epoch']}" in results
        assert "status" in text[text.find("<h2>Run"):text.find("<h2>Config")]  # the metadata is still there, further down


def test_training_writes_report(trained_run):
    run, _ = trained_run
    _check_page((run / "report.html").read_text(), run)


def test_report_command_rebuilds_and_reports_missing_files(cli, trained_run, tmp_path):
    run, data = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "report.html").unlink()
    r = cli("report", copy, "--data", data)
    assert r.code == 0, r
    _check_page((copy / "report.html").read_text(), copy)
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


def test_report_shows_the_augmented_training_images(tmp_path, one_thread):
    import cnnlab
    from cnnlab.insight.report import build_report

    ds = cnnlab.load_dataset("builtin:shapes?n=120&size=32&classes=2")
    run = cnnlab.train("seed_cnn", ds, epochs=1, batch_size=32, augment="strong", out=tmp_path / "run", quiet=True)
    text = build_report(run.run_dir, ds)
    dataset = text[text.find("<h2>Dataset"):text.find("<h2>Model")]
    assert 'alt="augmented samples"' in dataset and "unavailable" not in dataset
