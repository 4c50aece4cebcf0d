"""Safe model files: damaged, foreign or malicious files give one clear line (exit 2) and never run code."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import run_subprocess
from test_errors import assert_clean_error

from cnnlab.engine.model_file import model_metadata, save_model_file
from cnnlab.models import create_model


class Payload:
    """Unpickling this creates `marker`: the proof that a loader executed code from a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def model_file(tmp_path) -> Path:
    """A valid, untrained 24x24 seed_cnn model file (no training needed to test loading)."""
    model = create_model("seed_cnn", 2, 3, (24, 24), filters=8, hidden=16)
    path = tmp_path / "good.safetensors"
    save_model_file(path, model, model_metadata(model, ["a", "b"], (3, 24, 24)))
    return path


@pytest.fixture
def image(tmp_path) -> Path:
    p = tmp_path / "x.png"
    Image.new("RGB", (24, 24), (100, 50, 20)).save(p)
    return p


def test_good_file_predicts(cli, model_file, image):
    r = cli("predict", model_file, image, "--json")
    assert r.code == 0 and json.loads(r.out)[0]["class"] in ("a", "b"), r


def test_pickle_payload_model_file_is_never_executed(tmp_path, image):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.safetensors"
    torch.save({"weights": Payload(marker)}, evil)  # a pickle (zip) file with a .safetensors name
    for args in (("predict", evil, image), ("evaluate", evil, "--data", "builtin:digits")):
        r = run_subprocess(*args)
        assert r.code == 2 and "Traceback" not in r.err, (args, r)
    assert not marker.exists()


def test_pickle_payload_checkpoint_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": "cnnlab-ckpt-1", "model": Payload(marker)}, run / "last.ckpt")
    r = run_subprocess("train", "--resume", run)
    assert_clean_error(r, "last.ckpt", "unreadable checkpoint")
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0, 7, 40, 0.5, -100])
def test_truncated_model_file(cli, model_file, image, keep):
    data = model_file.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) + keep)
    model_file.write_bytes(data[:n])
    assert_clean_error(cli("predict", model_file, image), model_file.name)


def _rewrite_metadata(path: Path, fn) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    save_file(tensors, str(path), metadata=fn(meta))


def _edit_cnnlab(fn):
    def edit(meta):
        m = json.loads(meta["cnnlab"])
        fn(m)
        return {"cnnlab": json.dumps(m)}
    return edit


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda m: {}, "without cnnlab metadata"),
        (lambda m: {"cnnlab": "{not json"}, "not valid JSON"),
        (lambda m: {"cnnlab": "[1, 2]"}, "not a cnnlab model"),
        (_edit_cnnlab(lambda m: m.update(format="other-tool")), "not a cnnlab model"),
        (_edit_cnnlab(lambda m: m.pop("class_names")), "class_names"),
        (_edit_cnnlab(lambda m: m.pop("input_shape")), "input_shape"),
        (_edit_cnnlab(lambda m: m.update(model="evilnet")), "evilnet"),
        (_edit_cnnlab(lambda m: m.update(input_shape="3x24x24")), "input_shape"),
        (_edit_cnnlab(lambda m: m.update(input_shape=[3, -24, 24])), "input_shape"),
        (_edit_cnnlab(lambda m: m.update(class_names="ab")), "class_names"),
        (_edit_cnnlab(lambda m: m.update(model_args={"os.system": 1})), "no argument 'os.system'"),
        (_edit_cnnlab(lambda m: m.update(model_args=[1])), "model_args"),
        (_edit_cnnlab(lambda m: m.update(normalization=None)), "normalization"),
    ],
    ids=["none", "not-json", "not-object", "other-format", "no-classes", "no-shape", "unknown-model",
         "shape-text", "shape-negative", "classes-text", "unknown-arg", "args-list", "no-normalization"],
)
def test_wrong_or_missing_metadata(cli, model_file, image, edit, needle):
    _rewrite_metadata(model_file, edit)
    assert_clean_error(cli("predict", model_file, image), model_file.name, needle)


def test_weights_of_another_architecture(cli, model_file, image, tmp_path):
    other = create_model("seed_cnn", 2, 3, (24, 24), filters=4, hidden=16)  # same family, other shapes
    foreign = tmp_path / "foreign.safetensors"
    meta = json.loads(__import__("safetensors").safe_open(str(model_file), "pt").metadata()["cnnlab"])
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(foreign), metadata={"cnnlab": json.dumps(meta)})
    assert_clean_error(cli("predict", foreign, image), "foreign.safetensors", "do not match")
    # extra and missing tensors
    state = dict(create_model("seed_cnn", 2, 3, (24, 24), filters=8, hidden=16).state_dict())
    state.pop(next(iter(state)))
    state = {k: v.contiguous() for k, v in state.items()}
    save_file({**state, "backdoor.weight": torch.zeros(1)}, str(foreign), metadata={"cnnlab": json.dumps(meta)})
    assert_clean_error(cli("predict", foreign, image), "foreign.safetensors", "do not match")


def test_header_length_lie(cli, model_file, image):
    """A safetensors header length pointing far past the end of the file."""
    data = bytearray(model_file.read_bytes())
    data[:8] = struct.pack("<Q", 2**40)
    model_file.write_bytes(bytes(data))
    assert_clean_error(cli("predict", model_file, image), model_file.name)
