"""Export formats (TorchScript, ONNX fp32/fp16/int8, OpenVINO): each checked against PyTorch before it is
written, loadable by its own runtime, written atomically; every bad input is one clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.data.dataset import Dataset, Split
from cnnlab.engine.model_file import model_metadata, save_model_file
from cnnlab.engine.predictor import Classifier
from cnnlab.errors import ConfigError, DataError, ModelError
from cnnlab.export import FORMATS, ExportError, export_model, load_exported
from cnnlab.export.checks import MIN_AGREEMENT
from cnnlab.models import create_model

pytest.importorskip("onnxruntime")
HAVE_OPENVINO = __import__("importlib").util.find_spec("openvino") is not None
STRIPES = ["left", "middle", "right"]


def stripes_data(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three easy classes: a brighter vertical band on the left, middle or right third, on noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 110, (n, size, size, 3)).astype(np.int32)
    third = np.arange(size) * 3 // size
    for i in range(n):
        x[i][:, third == y[i]] += rng.integers(50, 140)
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)


def train_stripes_model(folder: Path, n_train: int = 240, n_test: int = 90) -> tuple[Path, Dataset]:
    """A seed_cnn that has learnt the stripes (3 classes, softmax head) in a run-like folder, and its Dataset."""
    x, y = stripes_data(n_train + n_test)
    torch.manual_seed(0)
    model = create_model("seed_cnn", 3, 3, (32, 32))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x[:n_train]).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(y[:n_train])
    model.train()
    for _ in range(6):
        for i in range(0, n_train, 32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[i : i + 32]), yt[i : i + 32]).backward()
            opt.step()
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    save_model_file(folder / "model.safetensors", model, model_metadata(model, STRIPES, (3, 32, 32)))
    ds = Dataset("stripes", list(STRIPES), {"train": Split(x[:n_train], y[:n_train]), "test": Split(x[n_train:], y[n_train:])})
    return folder, ds


@pytest.fixture(scope="module")
def stripes(tmp_path_factory):
    run, ds = train_stripes_model(tmp_path_factory.mktemp("stripes") / "run")
    clf = Classifier.load(run)
    acc = float(np.mean(clf.predict_proba(ds.split("test").x).argmax(1) == ds.split("test").y))
    assert acc >= 0.9, f"the fixture model did not learn the stripes ({acc:.1%})"
    return run, ds, clf


def _formats():
    return [pytest.param(f, marks=pytest.mark.skipif(f == "openvino" and not HAVE_OPENVINO, reason="openvino not installed")) for f in FORMATS]


@pytest.mark.parametrize("fmt", _formats())
def test_every_format_is_checked_written_and_runs_in_its_runtime(fmt, stripes, tmp_path):
    run, ds, clf = stripes
    out = tmp_path / ("m_openvino" if fmt == "openvino" else f"m{FORMATS[fmt].tail}")
    res = export_model(run, out, fmt, data=ds, calibration=64)
    assert res["path"] == str(out) and res["format"] == fmt and res["precision"] == FORMATS[fmt].precision
    side = json.loads(Path(res["sidecar"]).read_text())
    assert side["format"] == fmt and side["class_names"] == STRIPES and side["input"]["shape"] == ["batch", 32, 32, 3]
    assert side["check"]["checked_batch_sizes"] == [1, 6]

    model = load_exported(out)  # what `cnnlab serve` runs
    assert (model.format, model.precision, model.class_names, model.input_shape) == (fmt, FORMATS[fmt].precision, STRIPES, (3, 32, 32))
    x_test, y_test = ds.split("test").x, ds.split("test").y
    probs, ref = model.predict_proba(x_test), clf.predict_proba(x_test)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-3)
    if FORMATS[fmt].precision == "fp32":
        assert res["max_abs_diff"] <= 1e-4 and side["check"]["tolerance"] == 1e-4
        np.testing.assert_allclose(probs, ref, atol=1e-4)
    else:
        # The reported figures are what the written file does on the held-out (test) images.
        agreement = float(np.mean(probs.argmax(1) == ref.argmax(1)))
        assert res["agreement"] == pytest.approx(agreement) and agreement >= MIN_AGREEMENT[FORMATS[fmt].precision]
        assert res["holdout_images"] == len(x_test) and res["holdout_from"] == "test split"
        assert res["accuracy"] == pytest.approx(float(np.mean(probs.argmax(1) == y_test)))
        assert side["check"]["agreement"] == res["agreement"] and side["check"]["agreement_floor"] == MIN_AGREEMENT[FORMATS[fmt].precision]
        fp32_size = (run / "model.safetensors").stat().st_size
        assert res["size_bytes"] < (0.6 if fmt == "onnx-fp16" else 0.35) * fp32_size
    if fmt == "onnx-int8":
        assert res["calibration_images"] == 64 and res["calibration_from"] == "train split"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_default_paths_sit_next_to_the_run(stripes):
    run, ds, _ = stripes
    expected = {"onnx": "model.onnx", "onnx-fp16": "model.fp16.onnx", "onnx-int8": "model.int8.onnx",
                "torchscript": "model.torchscript", "openvino": "model_openvino"}
    for fmt, name in expected.items():
        if fmt == "openvino" and not HAVE_OPENVINO:
            continue
        res = export_model(run, format=fmt, data=ds, calibration=32, holdout=40)
        assert res["path"] == str(run / name) and (run / name).exists()
    if HAVE_OPENVINO:
        assert sorted(os.listdir(run / "model_openvino")) == ["model.bin", "model.xml", "model.xml.json"]


def test_torchscript_is_a_zip_archive_that_runs_without_cnnlab(stripes, tmp_path):
    run, ds, clf = stripes
    out = tmp_path / "m.torchscript"
    export_model(run, out, "torchscript")
    assert zipfile.is_zipfile(out)  # TorchScript's archive, not a pickle
    x = ds.split("test").x[:3]
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, numpy as np, torch; m = torch.jit.load(sys.argv[1]); "
            "logits, probs = m(torch.from_numpy(np.load(sys.argv[2]))); print(probs.detach().numpy().tolist()); "
            "print('cnnlab' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "x.npy")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    probs, imported = p.stdout.strip().splitlines()
    assert imported == "False"
    np.testing.assert_allclose(np.array(json.loads(probs)), clf.predict_proba(x), atol=1e-4)


def test_int8_under_the_floor_is_refused_with_the_figure_and_nothing_is_written(stripes, tmp_path):
    """Calibrating on dark noise gives activation ranges that fit no real image: agreement collapses."""
    run, ds, _ = stripes
    out = tmp_path / "m.int8.onnx"
    dark = np.random.default_rng(0).integers(0, 20, (16, 32, 32, 3)).astype(np.uint8)
    with pytest.raises(ExportError) as e:
        export_model(run, out, "onnx-int8", calibration_images=dark, holdout_images=ds.split("test").x, calibration=16)
    msg = str(e.value)
    assert "agrees with PyTorch on the top class of" in msg and "under the floor of 95%" in msg and "nothing was written" in msg
    assert len(msg.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
    # The same images pass when the floor is set below what they reach: the figure is real, not a constant.
    figure = float(msg.split("top class of ")[1].split("%")[0]) / 100
    assert figure < MIN_AGREEMENT["int8"]
    res = export_model(run, out, "onnx-int8", calibration_images=dark, holdout_images=ds.split("test").x, calibration=16,
                       min_agreement=max(0.01, figure - 0.02))
    assert res["agreement"] == pytest.approx(figure, abs=1e-3) and out.is_file()


def test_fp32_check_failure_writes_nothing(stripes, tmp_path):
    run, _, _ = stripes
    for fmt, name in (("torchscript", "m.torchscript"), ("onnx", "m.onnx")):
        with pytest.raises(ModelError, match="differs from PyTorch"):
            export_model(run, tmp_path / name, fmt, tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_are_one_clear_error(stripes, tmp_path, monkeypatch):
    run, ds, _ = stripes
    cases = [
        (dict(format="tflite"), ConfigError, "unknown export format — choose one of: onnx, onnx-fp16, onnx-int8, torchscript, openvino"),
        (dict(format="onnx-int8", data=ds, calibration=500), ConfigError, "--calibration 500 asks for 500 calibration images but the train split has 240"),
        (dict(format="onnx-int8", calibration_images=ds.split("train").x[:10], holdout_images=ds.split("test").x), ConfigError,
         "only 10 calibration images were given"),
        (dict(format="onnx-int8"), ConfigError, "needs calibration and held-out images"),
        (dict(format="onnx-fp16"), ConfigError, "needs held-out images"),
        (dict(format="onnx-int8", data=ds, calibration=0), ConfigError, "at least 1 calibration image"),
        (dict(format="onnx-int8", data=ds, opset=11), ConfigError, "opset 13 or newer"),
        (dict(format="onnx-fp16", holdout_images=ds.split("test").x[:, :16]), ConfigError, "expected uint8 images of shape (N, 32, 32, 3)"),
        (dict(format="onnx-fp16", data=Dataset("other", ["a", "b", "c"], ds.splits)), DataError, "differ from the model's"),
        (dict(format="onnx-fp16", out=tmp_path / "m.onnx.txt", data=ds), ConfigError, "must end in .onnx"),
        (dict(format="torchscript", out=tmp_path / "m.pt"), ConfigError, "must end in .torchscript"),
        (dict(format="onnx", out=tmp_path / "missing" / "m.onnx"), ConfigError, "does not exist"),
    ]
    for kwargs, error, needle in cases:
        with pytest.raises(error) as e:
            export_model(run, **kwargs)
        assert needle in str(e.value) and len(str(e.value).splitlines()) == 1, (kwargs, str(e.value))
    assert list(tmp_path.iterdir()) == []


def test_openvino_missing_says_which_pip_install_fixes_it(stripes, tmp_path, monkeypatch):
    run, _, _ = stripes
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError, as when not installed
    with pytest.raises(ExportError, match=r"OpenVINO is not installed — `pip install openvino`"):
        export_model(run, tmp_path / "m_openvino", "openvino")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino not installed")
def test_openvino_folder_is_replaced_whole_and_never_clobbers_other_folders(stripes, tmp_path):
    run, _, clf = stripes
    out = tmp_path / "ov"
    export_model(run, out, "openvino")
    weights = (out / "model.bin").read_bytes()
    (out / "model.xml.json").write_text("{}")  # a stale sidecar: the new export replaces the folder whole
    res = export_model(run, out, "openvino")
    assert (out / "model.bin").read_bytes() == weights and json.loads((out / "model.xml.json").read_text())["format"] == "openvino"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ov"] and res["max_abs_diff"] <= 1e-4
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"x")
    with pytest.raises(ConfigError, match="is not an OpenVINO export folder"):
        export_model(run, other, "openvino")
    with pytest.raises(ConfigError, match="is a folder"):
        export_model(run, tmp_path / "m.xml", "openvino")
    assert (other / "cat.jpg").read_bytes() == b"x"
    # The IR also runs in plain OpenVINO, without cnnlab's runner (fp32 hint: see runtime.OpenVinoRunner).
    import openvino as ov

    x = np.random.default_rng(5).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    compiled = ov.Core().compile_model(str(out / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_allclose(compiled(x)["probabilities"], clf.predict_proba(x), atol=1e-4)


def test_loading_exports_rejects_what_is_not_one(stripes, tmp_path):
    run, _, _ = stripes
    with pytest.raises(ModelError, match="not an exported model"):
        load_exported(run / "model.safetensors")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="onnxruntime cannot load it"):
        load_exported(tmp_path / "junk.onnx")
    (tmp_path / "junk.torchscript").write_bytes(b"PK not a zip")
    with pytest.raises(ModelError, match="not a TorchScript archive"):
        load_exported(tmp_path / "junk.torchscript")
    with pytest.raises(ModelError, match="no such file"):
        load_exported(tmp_path / "absent.onnx")


@pytest.mark.parametrize("name", ["resnet9", "efficientnet_lite0", "mobilenet_v2", "convnext"])
def test_reduced_precision_and_torchscript_across_architectures(name, tmp_path):
    """Untrained networks of each family (3 classes, 1 channel, non-square, mean/std in the graph): fp16 and
    int8 convert, keep float32 probabilities that sum to 1 and stay near fp32; TorchScript matches PyTorch."""
    torch.manual_seed(0)
    model = create_model(name, 3, 1, (40, 36)).eval()
    meta = model_metadata(model, ["a", "b", "c"], (1, 40, 36))
    meta["normalization"] = {"scale": 1 / 255, "mean": [0.5], "std": [0.25]}
    save_model_file(tmp_path / "m.safetensors", model, meta)
    x = np.random.default_rng(1).integers(0, 256, (24, 40, 36, 1), dtype=np.uint8)
    ref = Classifier.load(tmp_path / "m.safetensors").predict_proba(x)
    # An untrained network's classes are near ties, so top-1 agreement is not the point here: the floor is
    # lowered and the probabilities are compared instead.
    for fmt, atol in (("onnx-fp16", 0.02), ("onnx-int8", 0.15)):
        res = export_model(tmp_path / "m.safetensors", format=fmt, calibration_images=x, holdout_images=x, calibration=24, min_agreement=0.01)
        probs = load_exported(res["path"]).predict_proba(x)
        assert probs.dtype == np.float32 and probs.shape == (24, 3)
        np.testing.assert_allclose(probs.sum(1), 1, atol=1e-3)
        assert np.abs(probs - ref).max() < atol, (fmt, np.abs(probs - ref).max())
    res = export_model(tmp_path / "m.safetensors", format="torchscript")
    np.testing.assert_allclose(load_exported(res["path"]).predict_proba(x), ref, atol=1e-4)
