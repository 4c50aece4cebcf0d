"""`cnnlab explain`: overlays, feature maps, filters, JSON, and its bad-input messages."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from test_errors import assert_clean_error


def _image(path, size=32, mode="RGB"):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)
    return path


def test_explain_writes_overlays_feature_maps_and_filters(cli, trained_run, tmp_path):
    run, _ = trained_run
    a, b = _image(tmp_path / "a.png"), _image(tmp_path / "b.png", size=50)  # b is resized like predict does
    out = tmp_path / "out"
    r = cli("explain", run, a, b, "--feature-maps", "--filters", "--out", out, "--json")
    assert r.code == 0, r
    recs = json.loads(r.out)
    assert recs[0] == {"filters": str(out / "filters.png"), "layer": "conv1"}
    for rec in recs[1:]:
        assert rec["class"] in ("circle", "square") and 0 <= rec["probability"] <= 1 and rec["layer"] == "conv2"
        for key in ("gradcam", "feature_maps"):
            assert Image.open(rec[key]).size[0] > 200, key
    assert Image.open(out / "filters.png").size[0] > 100
    r = cli("explain", run, a, "--method", "gradcam++", "--layer", "conv1", "--class", "square", "--out", out)
    assert r.code == 0 and "square" in r.out and "conv1" in r.out and (out / "a_gradcam.png").exists(), r


def test_greyscale_image_is_converted_and_said(cli, trained_run, tmp_path):
    run, _ = trained_run
    r = cli("explain", run, _image(tmp_path / "g.png", mode="L"), "--out", tmp_path / "o")
    assert r.code == 0, r
    assert "converted to RGB" in r.err


def test_explain_bad_input(cli, trained_run, tmp_path):
    run, _ = trained_run
    img = _image(tmp_path / "a.png")
    assert_clean_error(cli("explain", run, img, "--layer", "fc1", "--out", tmp_path / "o"), "fc1", "conv1, conv2")
    assert_clean_error(cli("explain", run, img, "--class", "triangle", "--out", tmp_path / "o"), "triangle", "circle, square")
    assert_clean_error(cli("explain", run, tmp_path / "nope.png", "--out", tmp_path / "o"), "nope.png")
    assert_clean_error(cli("explain", tmp_path, img, "--out", tmp_path / "o"), str(tmp_path))
