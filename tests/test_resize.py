"""Photos that are not square: `--resize squash|crop|pad` (data/images.fit_image), the same in every path.

Generated 40x20 (wide) and 20x40 (tall) images with a known pattern: a left (top) quarter in one colour, the centre
half in another, the right (bottom) quarter in a third. Fitted to 10x10, squash keeps all three stretched, crop keeps
the centre, pad keeps all three at their aspect ratio between bars of images.PAD_RGB.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from cnnlab import api
from cnnlab.data import images
from cnnlab.data.loader import BatchReader, read_images
from cnnlab.data.stream import StreamSplit
from cnnlab.engine.model_file import model_metadata, read_metadata, save_model_file
from cnnlab.engine.predictor import Classifier, dataset_for_model
from cnnlab.errors import ConfigError, ModelError
from cnnlab.export.onnx import sidecar_info
from cnnlab.export.runtime import ExportedModel
from cnnlab.models import create_model
from cnnlab.serve.app import decode_upload, model_resize

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
MODES = ("squash", "crop", "pad")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


def banded(width: int = 40, height: int = 20, ends=(RED, BLUE), centre=GREEN) -> Image.Image:
    """Quarter / half / quarter bands along the long side: ends[0], centre, ends[1]."""
    a = np.zeros((height, width, 3), np.uint8)
    if width >= height:
        q = width // 4
        a[:, :q], a[:, q : width - q], a[:, width - q :] = ends[0], centre, ends[1]
    else:
        q = height // 4
        a[:q], a[q : height - q], a[height - q :] = ends[0], centre, ends[1]
    return Image.fromarray(a)


def fitted(im: Image.Image, mode: str, size: int = 10) -> np.ndarray:
    return np.asarray(images.fit_image(im, (size, size), mode))


# ------------------------------------------------------------------ the geometry


def test_squash_stretches_the_whole_image():
    out = fitted(banded(), "squash")
    assert out.shape == (10, 10, 3)
    assert (out[:, 0] == RED).all() and (out[:, 5] == GREEN).all() and (out[:, 9] == BLUE).all()
    np.testing.assert_array_equal(out, np.asarray(banded().resize((10, 10), Image.BILINEAR, reducing_gap=2.0)))


@pytest.mark.parametrize("width,height", [(40, 20), (20, 40)])
def test_crop_keeps_the_centre_square(width, height):
    out = fitted(banded(width, height), "crop")
    inner = out[1:-1, 1:-1]  # the bilinear filter reads a little past the box's edge
    assert out.shape == (10, 10, 3) and (inner == GREEN).all()
    assert not (out == RED).all(axis=-1).any() and not (out == BLUE).all(axis=-1).any()  # the ends are cut off


@pytest.mark.parametrize("width,height", [(40, 20), (20, 40)])
def test_pad_letterboxes_with_bars_of_the_pad_value(width, height):
    out = fitted(banded(width, height), "pad")
    wide = width > height
    img = out if wide else out.transpose(1, 0, 2)  # rows across the long side
    # 40x20 -> 10x5, centred: rows 0-1 and 7-9 are bars (offset round(2.5) = 2, as PIL.ImageOps.pad)
    for bar in (0, 1, 7, 8, 9):
        assert (img[bar] == images.PAD_RGB).all()
    assert (img[2:7, 0] == RED).all() and (img[2:7, 5] == GREEN).all() and (img[2:7, 9] == BLUE).all()
    ref = Image.new("RGB", (10, 10), images.PAD_RGB)
    ref.paste(banded(width, height).resize((10, 5) if wide else (5, 10), Image.BILINEAR, reducing_gap=2.0), (0, 2) if wide else (2, 0))
    np.testing.assert_array_equal(out, np.asarray(ref))


def test_pad_value_of_a_grey_image_is_the_pad_colours_luma():
    out = np.asarray(images.fit_image(banded().convert("L"), (10, 10), "pad"))
    assert out.shape == (10, 10) and (out[0] == images.PAD_GREY).all()
    assert images.PAD_GREY == np.asarray(Image.new("RGB", (1, 1), images.PAD_RGB).convert("L"))[0, 0]


def test_an_image_of_the_target_aspect_is_resized_the_same_in_every_mode():
    im = banded(40, 40)
    outs = [fitted(im, m) for m in MODES]
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


def test_load_image_fits_as_asked_and_a_bad_mode_is_one_line(tmp_path):
    p = tmp_path / "wide.png"
    banded().save(p)
    for mode in MODES:
        np.testing.assert_array_equal(images.load_image(p, (10, 10), resize=mode), fitted(banded(), mode))
    np.testing.assert_array_equal(images.load_image(p, (10, 10)), fitted(banded(), "squash"))  # the default
    with pytest.raises(ConfigError, match=r"^resize = 'stretch' is invalid — expected one of squash, crop, pad") as e:
        images.load_image(p, (10, 10), resize="stretch")
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ datasets: folders, streamed, tables, arrays


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Two classes of wide 40x20 photos (centre green or white), PNG, 8 each: the centre is what tells them apart."""
    root = tmp_path_factory.mktemp("resize") / "photos"
    rng = np.random.default_rng(0)
    for cls, centre in (("green", GREEN), ("white", WHITE)):
        (root / cls).mkdir(parents=True)
        for i in range(8):
            ends = tuple(tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(2))
            banded(40, 20, ends, centre).save(root / cls / f"{cls}{i}.png")
    return root


def _expected(paths, mode: str) -> np.ndarray:
    return np.stack([images.load_image(p, (10, 10), resize=mode) for p in paths])


@pytest.mark.parametrize("mode", MODES)
def test_a_folder_in_memory_and_streamed_is_fitted_as_asked(photos, mode):
    mem = api.load_dataset(photos, image_size=10, resize=mode, stream=False, val_split=0)
    np.testing.assert_array_equal(mem.train.x, _expected(mem.train.paths, mode))
    assert mem.load_options["resize"] == mode
    lazy = api.load_dataset(photos, image_size=10, resize=mode, stream=True, workers=0, val_split=0)
    assert isinstance(lazy.train, StreamSplit) and lazy.train.x.resize == mode
    np.testing.assert_array_equal(lazy.train.x[2], mem.train.x[2])
    np.testing.assert_array_equal(lazy.train.x[:5], mem.train.x[:5])
    np.testing.assert_array_equal(lazy.train.resized(10).x[:5], mem.train.x[:5])  # the default recipe's re-size keeps it


@pytest.mark.parametrize("mode", ("crop", "pad"))
def test_streamed_training_batches_are_fitted_as_asked(photos, mode):
    mem = api.load_dataset(photos, image_size=10, resize=mode, stream=False, val_split=0)
    lazy = api.load_dataset(photos, image_size=10, resize=mode, stream=True, workers=1, val_split=0)
    for workers in (0, 1):  # in this process, and in a decoding worker process
        got = torch.cat([b.x for b in BatchReader(lazy.train, workers=workers).batches(5)]).numpy()
        np.testing.assert_array_equal(got, mem.train.x)
    np.testing.assert_array_equal(read_images(lazy.train, [3, 1])[0], mem.train.x[[3, 1]])  # sample grids (`cnnlab show`)


def test_the_modes_give_different_pixels_for_wide_photos(photos):
    x = {m: api.load_dataset(photos, image_size=10, resize=m, stream=False, val_split=0).train.x for m in MODES}
    assert not np.array_equal(x["squash"], x["crop"]) and not np.array_equal(x["squash"], x["pad"])
    assert (x["pad"][:, 0] == images.PAD_RGB).all()


def test_a_labels_table_is_fitted_as_asked(photos, tmp_path):
    files = sorted(photos.rglob("*.png"))
    table = tmp_path / "labels.csv"
    table.write_text("file,label\n" + "".join(f"{p.relative_to(photos)},{p.parent.name}\n" for p in files))
    ds = api.load_dataset(photos, labels=table, image_size=10, resize="crop", stream=False, val_split=0)
    np.testing.assert_array_equal(ds.train.x, _expected(ds.train.paths, "crop"))


def test_arrays_of_another_shape_are_fitted_as_asked(tmp_path):
    x = np.stack([np.asarray(banded()), np.asarray(banded(40, 20, (BLUE, RED), WHITE))] * 3)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1] * 3))
    for mode in MODES:
        ds = api.load_dataset(tmp_path / "d.npz", image_size=10, resize=mode, val_split=0)
        if mode == "squash":  # one antialiased batch resize, as before
            assert ds.train.x.shape == (6, 10, 10, 3) and (ds.train.x[0, :, 5] == GREEN).all()
        else:
            np.testing.assert_array_equal(ds.train.x[0], fitted(banded(), mode))


def test_load_dataset_with_a_bad_mode_is_one_line(photos):
    with pytest.raises(ConfigError, match=r"^resize = 'fit' is invalid — expected one of squash, crop, pad"):
        api.load_dataset(photos, image_size=10, resize="fit")


# ------------------------------------------------------------------ training records it; predict, evaluate, serve, export use it


@pytest.fixture(scope="module")
def crop_run(photos, tmp_path_factory) -> Path:
    from cnnlab.cli import main

    run = tmp_path_factory.mktemp("crop") / "run"
    assert main(["train", "--data", str(photos), "--model", "seed_cnn", "--epochs", "1", "--batch-size", "8", "--image-size", "16",
                 "--resize", "crop", "--quiet", "--no-stream", "--out", str(run)]) == 0
    return run


def test_training_records_the_mode_in_config_yaml_and_the_model_file(crop_run):
    assert yaml.safe_load((crop_run / "config.yaml").read_text())["resize"] == "crop"
    meta = read_metadata(crop_run)
    assert meta["resize"] == "crop" and meta["config"]["resize"] == "crop"


def test_predict_evaluate_serve_and_export_fit_as_trained(crop_run, photos):
    clf = Classifier.load(crop_run)
    assert clf.resize == "crop"
    path = sorted(photos.rglob("*.png"))[0]
    cropped = images.load_image(path, (16, 16), resize="crop")
    np.testing.assert_array_equal(clf.load_image(path), cropped)
    # predict: the probabilities of the cropped image, not of the squashed one
    got = clf.predict_files([path], top_k=2)[0]
    want = clf.predict_proba(cropped[None].copy())[0]
    assert got["probability"] == pytest.approx(float(want.max()), abs=1e-6)
    # the server decodes uploads with the model's mode
    np.testing.assert_array_equal(decode_upload(path.read_bytes(), "up.png", clf, 10_000_000), cropped)
    assert model_resize(clf) == "crop"
    # evaluate reloads the data as trained; an explicit --resize still wins
    ds = dataset_for_model(clf, str(photos))
    assert ds.load_options["resize"] == "crop"
    val = ds.splits["val"]
    np.testing.assert_array_equal(val.x, np.stack([images.load_image(p, (16, 16), resize="crop") for p in val.paths]))
    assert dataset_for_model(clf, str(photos), resize="pad").load_options["resize"] == "pad"
    # the exported model's description says how to fit images
    assert sidecar_info(clf)["input"]["resize"] == "crop"


def test_an_exported_models_description_sets_how_the_server_fits_uploads(tmp_path):
    buf = io.BytesIO()
    banded().save(buf, format="PNG")
    info = {"class_names": ["a", "b"], "model": "seed_cnn", "input": {"shape": ["batch", 10, 10, 3], "resize": "pad"}}
    exported = ExportedModel(runner=lambda x: (x, x), info=info, source=tmp_path / "m.onnx")
    assert model_resize(exported) == "pad"
    np.testing.assert_array_equal(decode_upload(buf.getvalue(), "up.png", exported, 10_000_000), fitted(banded(), "pad"))
    del info["input"]["resize"]  # exported before --resize: squash
    assert model_resize(exported) == "squash"


def test_predict_cli_uses_the_trained_mode(crop_run, photos, cli):
    path = sorted(photos.rglob("*.png"))[0]
    r = cli("predict", crop_run, path, "--json")
    assert r.code == 0, r
    clf = Classifier.load(crop_run)
    probs = clf.predict_proba(images.load_image(path, (16, 16), resize="crop")[None].copy())[0]
    assert json.loads(r.out)[0]["probability"] == pytest.approx(float(probs.max()), abs=1e-5)


# ------------------------------------------------------------------ model files: old ones squash, damaged ones say so


def _model():
    return create_model("seed_cnn", 2, 3, (16, 16))


def test_model_files_without_a_mode_squash(tmp_path, photos):
    model = _model()
    meta = model_metadata(model, ["green", "white"], (3, 16, 16))
    assert "resize" not in meta  # nothing recorded yet: the training config, or squash, decides
    path = tmp_path / "old.safetensors"
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"cnnlab": json.dumps(meta)})  # as files written before --resize
    clf = Classifier.load(path)
    assert clf.resize == "squash"
    png = sorted(photos.rglob("*.png"))[0]
    np.testing.assert_array_equal(clf.load_image(png), images.load_image(png, (16, 16), resize="squash"))
    assert sidecar_info(clf)["input"]["resize"] == "squash"


def test_save_model_file_writes_the_mode_from_the_argument_or_the_training_config(tmp_path):
    model = _model()
    save_model_file(tmp_path / "a.safetensors", model, model_metadata(model, ["a", "b"], (3, 16, 16), resize="pad"))
    assert read_metadata(tmp_path / "a.safetensors")["resize"] == "pad"
    meta = {**model_metadata(model, ["a", "b"], (3, 16, 16)), "config": {"resize": "crop"}}
    save_model_file(tmp_path / "b.safetensors", model, meta)
    assert read_metadata(tmp_path / "b.safetensors")["resize"] == "crop"
    save_model_file(tmp_path / "c.safetensors", model, model_metadata(model, ["a", "b"], (3, 16, 16)))
    assert read_metadata(tmp_path / "c.safetensors")["resize"] == "squash"


def test_a_model_file_with_an_unknown_mode_is_one_line(tmp_path):
    model = _model()
    meta = {**model_metadata(model, ["a", "b"], (3, 16, 16)), "resize": "zoom"}
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata={"cnnlab": json.dumps(meta)})
    with pytest.raises(ModelError, match=r"metadata resize 'zoom' is not one of squash, crop, pad") as e:
        Classifier.load(path)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ bad values from the command line and config files


def test_a_bad_mode_on_the_command_line_is_one_line_and_exit_2(cli, photos):
    r = cli("train", "--data", photos, "--resize", "stretch")
    assert r.code == 2 and "invalid choice: 'stretch'" in r.err and len(r.err.strip().splitlines()) == 1


def test_a_bad_mode_in_a_config_file_is_one_line_and_exit_2(cli, photos, tmp_path):
    (tmp_path / "c.yaml").write_text("resize: stretch\n")
    r = cli("train", "--data", photos, "--config", tmp_path / "c.yaml", "--epochs", "1", "--out", tmp_path / "run")
    assert r.code == 2 and r.err.strip() == "error: resize = 'stretch' is invalid — expected one of squash, crop, pad"
    assert not (tmp_path / "run").exists()
