"""`cnnlab export --format ... --calibration N`: the run's own data by default, text and JSON reports, one-line errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from cnnlab.engine.model_file import model_metadata, save_model_file
from cnnlab.engine.predictor import Classifier
from test_errors import assert_clean_error
from test_export_formats import HAVE_OPENVINO, STRIPES, train_stripes_model


@pytest.fixture(scope="module")
def stripes_run(tmp_path_factory):
    """A run-like folder whose model records its training data (config `data`), as `cnnlab train` writes it."""
    base = tmp_path_factory.mktemp("cli")
    run, ds = train_stripes_model(base / "trained")
    x = np.concatenate([ds.split("train").x, ds.split("test").x])
    y = np.concatenate([ds.split("train").y, ds.split("test").y])
    np.savez(base / "stripes.npz", x=x, y=y)
    clf = Classifier.load(run)
    meta = {**clf.meta, "config": {"data": str(base / "stripes.npz"), "classes": STRIPES, "val_split": 0.25, "seed": 0}}
    save_model_file(run / "model.safetensors", clf.model, meta)
    return run


@pytest.mark.parametrize("fmt", ["onnx-int8", "onnx-fp16", "torchscript"] + (["openvino"] if HAVE_OPENVINO else []))
def test_cli_export_formats(stripes_run, cli, fmt):
    r = cli("export", stripes_run, "--format", fmt, "--calibration", "40", "--json")
    assert r.code == 0, r
    res = json.loads(r.out)
    assert res["format"] == fmt and res["path"].startswith(str(stripes_run))
    if fmt == "onnx-int8":
        assert res["calibration_images"] == 40 and res["holdout_from"] == "val split" and res["agreement"] >= 0.95
    text = cli("export", stripes_run, "--format", fmt, "--calibration", "40")
    assert text.code == 0, text
    assert ("top-1 agreement with PyTorch" if fmt.startswith("onnx-") else "max abs diff") in text.out


def test_cli_export_errors(stripes_run, cli, tmp_path, monkeypatch):
    assert_clean_error(cli("export", stripes_run, "--format", "tflite"), "unknown export format", "onnx-int8", "openvino")
    assert_clean_error(cli("export", stripes_run, "--format", "onnx-int8", "--calibration", "100000"),
                       "--calibration 100000", "the train split has")
    bare = tmp_path / "bare.safetensors"  # a model file that records no training data
    clf = Classifier.load(stripes_run)
    save_model_file(bare, clf.model, model_metadata(clf.model, STRIPES, (3, 32, 32)))
    assert_clean_error(cli("export", bare, "--format", "onnx-fp16"), "records no training data", "--data SPEC")
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert_clean_error(cli("export", stripes_run, "--format", "openvino", "--out", tmp_path / "ov"), "pip install openvino")
    assert not (tmp_path / "ov").exists()


def test_cli_int8_under_the_floor_prints_the_figure_and_writes_nothing(stripes_run, cli, tmp_path, monkeypatch):
    import cnnlab.export.checks as checks

    real = checks.images_from_dataset

    def dark_calibration(ds, calibration, holdout, seed=0):  # images unlike the data: the ranges fit no real image
        got = real(ds, calibration, holdout, seed)
        got.calibration = np.random.default_rng(0).integers(0, 20, got.calibration.shape).astype(np.uint8)
        return got

    monkeypatch.setattr(checks, "images_from_dataset", dark_calibration)
    out = tmp_path / "m.int8.onnx"
    r = cli("export", stripes_run, "--format", "onnx-int8", "--calibration", "16", "--out", out)
    assert_clean_error(r, "agrees with PyTorch on the top class of", "under the floor of 95%", "nothing was written")
    assert not out.exists() and list(tmp_path.iterdir()) == []
