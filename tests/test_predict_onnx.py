"""`cnnlab predict` answers from the run's ONNX export without importing torch (start-up ~0.3 s instead of ~2 s,
BENCHMARKS.md), with the same predictions as the PyTorch model; a stale or missing export falls back or is a
clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import write_image_folder

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from cnnlab.cli import main

    d = tmp_path_factory.mktemp("onnxpred")
    data = write_image_folder(d / "imgs", n_per_class=8, size=24)
    run = d / "run"
    assert main(["train", "--data", str(data), "--model", "seed_cnn", "--image-size", "24", "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    assert main(["export", str(run), "--format", "onnx"]) == 0
    return run, data


def _predict(*args):
    code = ("import json, sys\nfrom cnnlab.cli import main\ncode = main(sys.argv[1:])\n"
            "print(json.dumps({'torch': 'torch' in sys.modules}), file=sys.stderr)\nsys.exit(code)")
    p = subprocess.run([sys.executable, "-c", code, "predict", *map(str, args)], capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def test_predict_uses_the_export_without_torch_and_agrees_with_pytorch(exported):
    run, data = exported
    code, out, err = _predict(run, data, "--json", "--top-k", "2")
    assert code == 0, err
    assert json.loads(err.strip().splitlines()[-1]) == {"torch": False}
    code2, out2, err2 = _predict(run, data, "--json", "--top-k", "2", "--backend", "torch")
    assert code2 == 0 and json.loads(err2.strip().splitlines()[-1]) == {"torch": True}
    lite, full = json.loads(out), json.loads(out2)
    assert [r["class"] for r in lite] == [r["class"] for r in full] and len(lite) == 16
    assert all(abs(a["probability"] - b["probability"]) < 1e-4 for a, b in zip(lite, full))


def test_a_stale_export_is_not_used(exported, tmp_path):
    run, data = exported
    model = run / "model.safetensors"
    later = time.time() + 5
    os.utime(model, (later, later))  # retrained after the export
    try:
        code, out, err = _predict(run, data, "--json")
        assert code == 0 and json.loads(err.strip().splitlines()[-1]) == {"torch": True}
        code, out, err = _predict(run, data, "--backend", "onnxruntime")
        assert code == 2 and "cnnlab export" in err and "--backend torch" in err, err
    finally:
        os.utime(model, (later - 3600, later - 3600))


def test_tta_needs_the_pytorch_model(exported):
    run, data = exported
    code, out, err = _predict(run, data, "--backend", "onnxruntime", "--tta")
    assert code == 2 and "--tta" in err.splitlines()[0], err
    code, out, err = _predict(run, data, "--tta", "--json")  # auto: TTA quietly takes the PyTorch path
    assert code == 0 and json.loads(err.strip().splitlines()[-1]) == {"torch": True}
