"""ONNX export: oracle test against PyTorch, dynamic batch, sidecar, registry-wide, clean errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cnnlab.engine.model_file import model_metadata, save_model_file
from cnnlab.engine.predictor import Classifier
from cnnlab.models import create_model, list_models
from test_errors import assert_clean_error

ort = pytest.importorskip("onnxruntime")


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_export_run_matches_pytorch(trained_run, cli, tmp_path):
    run, _ = trained_run
    out = tmp_path / "m.onnx"
    r = cli("export", run, "--format", "onnx", "--out", out, "--json")
    assert r.code == 0, r
    res = json.loads(r.out)
    assert res["path"] == str(out) and out.is_file()
    assert res["max_abs_diff"] <= 1e-4 and res["checked_batch_sizes"] == [1, 6]

    side = json.loads(Path(res["sidecar"]).read_text())
    assert side["class_names"] == ["circle", "square"]
    assert side["input"]["shape"] == ["batch", 32, 32, 3] and side["input"]["dtype"] == "uint8"

    # Oracle: the ONNX file alone gives the same probabilities as the PyTorch Classifier, any batch size.
    clf = Classifier.load(run)
    sess = _session(out)
    assert sess.get_inputs()[0].shape[0] == "batch"
    x = np.random.default_rng(3).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    for n in (1, 5):
        logits, probs = sess.run(None, {"images": x[:n]})
        assert probs.shape == (n, 2) and logits.shape == (n, 1)
        np.testing.assert_allclose(probs, clf.predict_proba(x[:n]), atol=1e-5)
    meta = {p.key: p.value for p in __import__("onnx").load(str(out)).metadata_props}
    assert json.loads(meta["class_names"]) == ["circle", "square"]


def test_export_default_path_and_text_output(trained_run, cli, tmp_path):
    run, _ = trained_run
    model_file = tmp_path / "copy.safetensors"
    model_file.write_bytes((run / "model.safetensors").read_bytes())
    r = cli("export", model_file, "--format", "onnx")
    assert r.code == 0, r
    assert (tmp_path / "copy.onnx").is_file() and (tmp_path / "copy.onnx.json").is_file()
    assert "max abs diff" in r.out


@pytest.mark.parametrize("name", list_models())
def test_every_registry_model_exports(name, tmp_path):
    """Registry-wide: 3 classes (K-logit head), 1 channel + non-square input, normalisation in the graph."""
    from cnnlab.export import export_onnx

    model = create_model(name, 3, 1, (40, 36)).eval()
    meta = model_metadata(model, ["a", "b", "c"], (1, 40, 36))
    meta["normalization"] = {"scale": 1 / 255, "mean": [0.5], "std": [0.25]}
    save_model_file(tmp_path / "m.safetensors", model, meta)
    res = export_onnx(tmp_path / "m.safetensors")
    assert res["max_abs_diff"] <= 1e-4
    x = np.random.default_rng(0).integers(0, 256, (3, 40, 36, 1), dtype=np.uint8)
    _, probs = _session(res["path"]).run(None, {"images": x})
    np.testing.assert_allclose(probs, Classifier.load(tmp_path / "m.safetensors").predict_proba(x), atol=1e-5)


def test_export_errors(trained_run, cli, tmp_path):
    run, _ = trained_run
    assert_clean_error(cli("export", tmp_path / "missing", "--format", "onnx"), "missing", "no such model file")
    assert_clean_error(cli("export", run, "--format", "onnx", "--out", tmp_path / "m.txt"), ".onnx")
    assert_clean_error(cli("export", run, "--format", "onnx", "--out", tmp_path / "nope" / "m.onnx"), "does not exist")
    assert_clean_error(cli("export", run, "--format", "onnx", "--opset", "3"), "opset")
    assert_clean_error(cli("export", run, "--format", "tflite"), "unknown export format")


def test_export_refuses_when_outputs_differ(trained_run, tmp_path, monkeypatch):
    """The check is real: a tolerance the fp32 export cannot meet fails and writes nothing."""
    from cnnlab.errors import ModelError
    from cnnlab.export import onnx as exp

    run, _ = trained_run
    out = tmp_path / "m.onnx"
    x = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(ModelError, match="differs from PyTorch"):
        exp.export_onnx(run, out=out, images=x, tolerance=-1.0)
    assert not out.exists() and not exp.sidecar_path(out).exists()


def test_onnx_sidecar_records_format_precision_and_the_check(trained_run, tmp_path):
    """The fp32 ONNX export is `export_model(format="onnx")`: its sidecar and the file itself describe it."""
    from cnnlab.export import export_onnx, load_exported

    run, _ = trained_run
    res = export_onnx(run, out=tmp_path / "m.onnx")
    side = json.loads(Path(res["sidecar"]).read_text())
    assert (side["format"], side["precision"], side["runtime"]) == ("onnx", "fp32", "onnxruntime")
    assert side["check"]["max_abs_diff"] == res["max_abs_diff"] <= side["check"]["tolerance"] == 1e-4
    (tmp_path / "m.onnx.json").unlink()  # the description inside the ONNX file is enough to run it
    model = load_exported(tmp_path / "m.onnx")
    assert (model.format, model.precision, model.class_names) == ("onnx", "fp32", ["circle", "square"])
