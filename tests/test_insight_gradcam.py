"""Grad-CAM / Grad-CAM++: registry-wide shapes and ranges, no NaN, layer discovery, and the peak test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from cnnlab import models
from cnnlab.engine.inference import loss_fn
from cnnlab.engine.predictor import Classifier
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.insight.gradcam import conv_layers, explain_image, gradcam, overlay


class LayerListNet(nn.Module):
    """A layer-list model (nn.Sequential body, in-place ReLUs) with the uniform interface."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True))
        self.fc = nn.Linear(8, num_classes)
        self.unused_conv = nn.Conv2d(3, 3, 1)  # defined but never run: must not be offered as a layer

    def forward_features(self, x):
        return self.body(x)

    def forward_head(self, f):
        return self.fc(f.mean((2, 3)))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _check_heatmap(h: np.ndarray, size: tuple[int, int]) -> None:
    assert h.shape == size and h.dtype == np.float32
    assert np.isfinite(h).all() and h.min() >= 0 and h.max() <= 1


@pytest.mark.parametrize("name", models.list_models())
def test_gradcam_every_registry_model(name):
    torch.manual_seed(0)
    model = models.create_model(name, 3, 3, 32)
    x = torch.randn(1, 3, 32, 32)
    layers = conv_layers(model, x)
    assert layers, name
    _check_heatmap(gradcam(model, x), (32, 32))
    _check_heatmap(gradcam(model, x, class_idx=2, layer=layers[0][0], method="gradcam++"), (32, 32))
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind


def test_layer_list_model_and_execution_order():
    model = LayerListNet()
    x = torch.randn(1, 3, 16, 16)
    assert [n for n, _ in conv_layers(model, x)] == ["body.0", "body.3"]
    for method in ("gradcam", "gradcam++"):
        _check_heatmap(gradcam(model, x, layer="body.0", method=method), (16, 16))


def test_binary_head_explains_both_classes():
    model = models.create_model("seed_cnn", 2, 3, 32)
    x = torch.randn(1, 3, 32, 32)
    for cls in (0, 1):
        for method in ("gradcam", "gradcam++"):
            _check_heatmap(gradcam(model, x, class_idx=cls, method=method), (32, 32))
    with pytest.raises(ConfigError, match="out of range"):
        gradcam(model, x, class_idx=2)


def test_flat_gradients_give_zeros_not_nan():
    model = LayerListNet()
    for p in model.parameters():
        nn.init.zeros_(p)
    for method in ("gradcam", "gradcam++"):
        h = gradcam(model, torch.randn(1, 3, 16, 16), method=method)
        assert np.isfinite(h).all() and h.max() == 0


def test_unknown_layer_lists_valid_ones():
    model = models.create_model("seed_cnn", 2, 3, 32)
    with pytest.raises(ConfigError, match=r"no conv layer 'fc1'.*conv1, conv2"):
        gradcam(model, torch.randn(1, 3, 32, 32), layer="fc1")
    with pytest.raises(ConfigError, match="gradcam\\+\\+"):
        gradcam(model, torch.randn(1, 3, 32, 32), method="cam")


def test_overlay_shapes():
    heat = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    for c in (1, 3):
        out = overlay(np.full((8, 8, c), 100, np.uint8), heat)
        assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert overlay(np.zeros((16, 16, 3), np.uint8), heat).shape == (16, 16, 3)  # heatmap resized


# ---------------------------------------------------------------- the peak-in-region test


class TinyGapNet(nn.Module):
    """conv-relu-pool-conv-relu, global average pool, one logit: the classic Grad-CAM setting."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(inplace=True))
        self.fc = nn.Linear(32, 1)

    def forward_features(self, x):
        return self.features(x)

    def forward_head(self, f):
        return self.fc(f.mean((2, 3)))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _region_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Faint noise everywhere; class 1 has an 8x8 high-contrast checkerboard at a random place (its
    top-left corner is returned), class 0 a flat bright 8x8 square there (same mean, no texture)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(100, 140, size=(n, 32, 32, 3), dtype=np.uint8)
    y = (np.arange(n) % 2).astype(np.int64)
    corners = rng.integers(0, 32 - 8, size=(n, 2))
    rows, cols = np.indices((8, 8))
    checker = np.where((rows // 2 + cols // 2) % 2 == 0, 250, 5).astype(np.uint8)[:, :, None]
    for i, (r, c) in enumerate(corners):
        x[i, r : r + 8, c : c + 8, :] = checker if y[i] == 1 else 128
    return x, y, corners


def test_gradcam_peak_lies_in_the_deciding_region():
    torch.manual_seed(0)
    model = TinyGapNet()
    x, y, _ = _region_data(256, seed=0)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    yt = torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(8):
        for i in range(0, len(xt), 32):
            opt.zero_grad()
            loss_fn(model(xt[i : i + 32]), yt[i : i + 32]).backward()
            opt.step()
    model.eval()
    xs, ys, corners = _region_data(20, seed=1)
    test = torch.from_numpy(xs).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        assert ((model(test)[:, 0] > 0).long() == torch.from_numpy(ys)).float().mean() == 1.0
    margin = 2  # bilinear upsampling of the 16x16 map blurs by a pixel or two
    for method in ("gradcam", "gradcam++"):
        for img, (r0, c0) in zip(test[ys == 1], corners[ys == 1]):
            h = gradcam(model, img[None], class_idx=1, method=method)
            r, c = np.unravel_index(np.argmax(h), h.shape)
            assert r0 - margin <= r < r0 + 8 + margin and c0 - margin <= c < c0 + 8 + margin, (method, r, c, r0, c0)


# ---------------------------------------------------------------- explain_image on a trained run


def test_explain_image_contract(trained_run):
    run, _ = trained_run
    clf = Classifier.load(run)
    c, h, w = clf.input_shape
    img = np.random.default_rng(0).integers(0, 255, size=(h, w, c), dtype=np.uint8)
    res = explain_image(clf, img)
    assert set(res) == {"class", "probability", "heatmap", "overlay", "layer"}
    assert res["class"] in clf.class_names and 0 <= res["probability"] <= 1
    _check_heatmap(res["heatmap"], (h, w))
    assert res["overlay"].shape == (h, w, 3) and res["overlay"].dtype == np.uint8
    assert res["layer"] == "conv2"
    probs = clf.predict_proba(img[None])[0]
    other = explain_image(clf, img, class_name="square", layer="conv1", method="gradcam++")
    assert other["class"] == "square" and other["layer"] == "conv1"
    assert other["probability"] == pytest.approx(float(probs[1]), abs=1e-6)
    grey = explain_image(clf, img[:, :, :1])  # wrong channel count: converted
    assert grey["overlay"].shape == (h, w, 3)
    with pytest.raises(CnnlabError, match="circle, square"):
        explain_image(clf, img, class_name="triangle")
    with pytest.raises(CnnlabError, match=f"expects {h}x{w}"):
        explain_image(clf, np.zeros((h + 1, w, c), np.uint8))


def test_gradcam_inside_inference_mode_and_with_other_threads():
    import threading

    model = models.create_model("seed_cnn", 3, 3, 32)
    x = torch.randn(1, 3, 32, 32)
    expected = gradcam(model, x)
    with torch.inference_mode():  # a server's request handler may hold inference mode
        xi = torch.randn(1, 3, 32, 32) + 0 * x
        _check_heatmap(gradcam(model, xi), (32, 32))
    stop = threading.Event()

    def other_requests():  # the same model serving other images meanwhile
        while not stop.is_set():
            with torch.no_grad():
                model(torch.randn(4, 3, 32, 32))

    t = threading.Thread(target=other_requests)
    t.start()
    try:
        for _ in range(5):
            assert np.allclose(gradcam(model, x), expected, atol=1e-5)
    finally:
        stop.set()
        t.join()
