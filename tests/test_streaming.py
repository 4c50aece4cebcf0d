"""Image folders streamed from disk (`--stream`): same pixels, same data order, same weights as in memory.

Small generated folders, worker processes for real (workers=1), no timing assertions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cnnlab import api
from cnnlab.data import stream as stream_mod
from cnnlab.data.loader import BatchReader
from cnnlab.data.stream import LazyImages, StreamSplit
from cnnlab.engine import session, trainer
from cnnlab.errors import DataError

from conftest import write_image_folder
from test_reliability_images import zoo  # noqa: F401  (the bad image zoo fixture)

TRAIN = ("--model", "seed_cnn", "--epochs", "2", "--batch-size", "16", "--image-size", "32", "--seed", "7", "--deterministic",
         "--quiet", "--workers", "1")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """60 images (PNG and JPEG, 40 px) in two class folders."""
    return write_image_folder(tmp_path_factory.mktemp("stream") / "imgs", n_per_class=30, size=40)


def _truncate(path: Path) -> None:
    """A JPEG whose header is intact but whose pixel data stops early (passes the header scan, fails to decode)."""
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"\xff\xda") + 40])  # a few bytes past the start-of-scan marker


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _metrics(run: Path) -> list[list[str]]:
    """metrics.csv without the seconds column."""
    rows = [ln.split(",") for ln in (run / "metrics.csv").read_text().splitlines()]
    return [r[:-1] for r in rows]


@pytest.fixture(scope="module")
def in_memory_run(folder, tmp_path_factory) -> Path:
    from cnnlab.cli import main

    run = tmp_path_factory.mktemp("mem") / "run"
    assert main(["train", "--data", str(folder), *TRAIN, "--no-stream", "--out", str(run)]) == 0
    return run


# ------------------------------------------------------------------ the lazy split


def test_streamed_pixels_labels_and_splits_equal_the_in_memory_ones(folder):
    mem = api.load_dataset(folder, image_size=32, stream=False)
    lazy = api.load_dataset(folder, image_size=32, stream=True, workers=1)
    assert type(mem.train) is not StreamSplit and isinstance(lazy.train, StreamSplit)
    assert lazy.image_shape == mem.image_shape == (32, 32, 3) and lazy.summary()["stream"] and not mem.summary()["stream"]
    for name in ("train", "val"):
        m, s = mem.split(name), lazy.split(name)
        assert list(s.paths) == list(m.paths)
        np.testing.assert_array_equal(s.y, m.y)
        np.testing.assert_array_equal(s.x[np.arange(len(s))], m.x)  # fancy indexing decodes those files
        np.testing.assert_array_equal(s.x[3], m.x[3])
        np.testing.assert_array_equal(s.x[1:4], m.x[1:4])
        got = list(BatchReader(s, workers=1).batches(7, order=torch.randperm(len(s), generator=torch.Generator().manual_seed(1))))
        order = torch.randperm(len(s), generator=torch.Generator().manual_seed(1))
        np.testing.assert_array_equal(torch.cat([b.x for b in got]).numpy(), m.x[order.numpy()])
        np.testing.assert_array_equal(torch.cat([b.index for b in got]).numpy(), order.numpy())


def test_a_lazy_split_refuses_to_become_one_big_array(folder):
    ds = api.load_dataset(folder, stream=True)
    with pytest.raises(DataError, match="stream from disk and are not held in memory"):
        np.asarray(ds.train.x)


def test_auto_streams_only_when_the_decoded_folder_exceeds_the_memory_threshold(folder, monkeypatch):
    decoded = 60 * 100 * 100 * 3
    monkeypatch.setattr(stream_mod, "available_memory_bytes", lambda: int(decoded / stream_mod.STREAM_MEMORY_FRACTION) - 1)
    assert api.load_dataset(folder).streamed
    monkeypatch.setattr(stream_mod, "available_memory_bytes", lambda: int(decoded / stream_mod.STREAM_MEMORY_FRACTION) + 1)
    assert not api.load_dataset(folder).streamed
    assert not api.load_dataset(folder, stream=False).streamed
    assert api.load_dataset(folder, stream=True).streamed


def test_decoding_workers_get_their_cores_back(folder, monkeypatch):
    from cnnlab.data import loader

    ds = api.load_dataset(folder, stream=True, workers=1)
    monkeypatch.setattr(loader, "available_cores", lambda: 2)
    deterministic, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(2)
    try:
        seen = [torch.get_num_threads() for _ in BatchReader(ds.train, workers=1).batches(16)]
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    assert seen == [1] * (len(seen) - 1) + [2] and after == 2  # 1 worker + 1 thread on 2 cores; both back for the last batch


def test_stream_is_for_image_folders_only(cli, seed_dir):
    r = cli("train", "--data", "builtin:shapes?n=40&size=16", "--stream", "--quiet")
    assert r.code == 2 and "built-in dataset" in r.err and "drop --stream" in r.err and "Traceback" not in r.err
    r = cli("train", "--data", seed_dir, "--stream", "--quiet")
    assert r.code == 2 and "seed CSV folder" in r.err
    r = cli("train", "--data", seed_dir, "--workers", "-1", "--quiet")
    assert r.code == 2 and "workers" in r.err


# ------------------------------------------------------------------ training


def test_streamed_training_ends_bit_identical_to_in_memory(cli, folder, in_memory_run, tmp_path):
    run = tmp_path / "run"
    r = cli("train", "--data", folder, *TRAIN, "--stream", "--out", run)
    assert r.code == 0, r
    assert _same_weights(run, in_memory_run)
    assert _metrics(run) == _metrics(in_memory_run)
    assert "stream: true" in (run / "config.yaml").read_text() and "workers: 1" in (run / "config.yaml").read_text()
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["dataset"]["stream"] is True
    for f in ("samples.png", "predictions.png", "report.html"):
        assert (run / f).is_file(), f


def test_streamed_run_interrupted_mid_epoch_resumes_bit_identical(cli, folder, in_memory_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_to_input, calls = trainer.to_input, []

    def to_input(*args, **kwargs):  # Ctrl-C during epoch 2's first batch (4 batches per epoch): saved before its second
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return real_to_input(*args, **kwargs)

    monkeypatch.setattr(trainer, "to_input", to_input)
    r = cli("train", "--data", folder, *TRAIN, "--stream", "--out", run)
    assert r.code == 130 and f"cnnlab train --resume {run}" in r.err and "Traceback" not in r.err, r
    state = torch.load(run / "last.ckpt", weights_only=True)
    assert (state["epoch"], state["step"]) == (2, 1)
    monkeypatch.setattr(trainer, "to_input", real_to_input)
    r = cli("train", "--resume", run, "--quiet")
    assert r.code == 0, r
    assert _same_weights(run, in_memory_run) and _metrics(run) == _metrics(in_memory_run)


def test_evaluate_and_predict_on_a_streamed_run(cli, folder, tmp_path):
    run = tmp_path / "run"
    assert cli("train", "--data", folder, *TRAIN, "--stream", "--out", run).code == 0
    mem = cli("evaluate", run, "--data", folder, "--split", "val", "--json", "--no-stream")
    r = cli("evaluate", run, "--data", folder, "--split", "val", "--json", "--stream", "--workers", "1")
    assert r.code == 0 and mem.code == 0, (r, mem)
    streamed, in_memory = json.loads(r.out), json.loads(mem.out)
    assert streamed["n"] == in_memory["n"] == 6 and streamed["accuracy"] == in_memory["accuracy"]
    assert streamed["loss"] == pytest.approx(in_memory["loss"], rel=1e-6)
    assert all(Path(t["path"]).is_file() for t in streamed["top_losses"])
    r = cli("predict", run, "--data", folder, "--stream", "--random", "--seed", "1", "--json", "--out", tmp_path / "p.png")
    assert r.code == 0, r
    rec = json.loads(r.out)
    assert rec["split"] == "val" and Path(rec["path"]).is_file() and (tmp_path / "p.png").is_file()
    r = cli("predict", run, rec["path"], "--json")
    assert r.code == 0 and json.loads(r.out)[0]["class"] == rec["class"]


# ------------------------------------------------------------------ bad files


@pytest.fixture
def bad_folder(tmp_path) -> Path:
    """60 good images, one file that is no image (caught by the header scan), one truncated JPEG (caught only on decoding)."""
    root = write_image_folder(tmp_path / "imgs", n_per_class=30, size=40, exts=(".jpg",))
    (root / "circle" / "notes.jpg").write_text("not a picture")
    _truncate(next(iter(sorted((root / "square").glob("*.jpg")))))
    return root


def test_bad_files_are_skipped_and_recorded_while_streaming(cli, bad_folder, tmp_path):
    run = tmp_path / "run"
    r = cli("train", "--data", bad_folder, *TRAIN, "--stream", "--max-bad-fraction", "0.05", "--out", run)
    assert r.code == 0 and "Traceback" not in r.err, r
    lines = (run / "bad_files.txt").read_text().splitlines()
    reasons = dict(ln.split("\t", 1) for ln in lines)
    assert len(lines) == 2, lines  # each file once, though the truncated one is met every epoch
    assert any(p.endswith("notes.jpg") and "not an image" in why for p, why in reasons.items())
    assert any("square" in p and "truncated" in why for p, why in reasons.items())
    assert json.loads((run / "run.json").read_text())["dataset"]["bad_files"] == 2
    assert (run / "report.html").is_file()  # its evaluation leaves the truncated file out, like training


def test_too_many_bad_files_mid_stream_is_one_line_naming_the_file(cli, bad_folder, tmp_path):
    run = tmp_path / "run"
    r = cli("train", "--data", bad_folder, *TRAIN, "--stream", "--max-bad-fraction", "0.02", "--out", run)
    assert r.code == 2 and "Traceback" not in r.err, r
    msg = r.err.strip()
    assert msg.count("\n") == 0 and "max_bad_fraction=0.02" in msg and "truncated" in msg and "--max-bad-fraction" in msg, msg
    assert json.loads((run / "run.json").read_text())["status"] == "failed"


def test_reading_a_bad_streamed_file_directly_names_it(bad_folder):
    ds = api.load_dataset(bad_folder, stream=True, val_split=0, max_bad_fraction=0.5)
    i = next(i for i, p in enumerate(ds.train.paths) if "square" in p)
    with pytest.raises(DataError, match=r"cannot load image .*square.*truncated"):
        ds.train.x[i]
    assert isinstance(ds.train.x, LazyImages)


def test_lr_find_reads_a_streamed_folder_like_memory(folder):
    from cnnlab.config import TrainConfig
    from cnnlab.engine.lr_find import lr_range_test

    results = []
    for stream in (False, True):
        ds = api.load_dataset(folder, image_size=32, stream=stream, workers=1)
        cfg = TrainConfig(data=str(folder), batch_size=16, seed=3)
        results.append(lr_range_test(api.create_model("seed_cnn", ds, seed=3), ds, cfg, steps=6))
    assert results[0]["losses"] == results[1]["losses"] and results[0]["steps"] == 6


def test_bad_image_zoo_streamed_ends_with_the_in_memory_bad_list_and_pixels(zoo):
    from test_reliability_images import BAD

    def names(bad):
        return {(Path(p).name, why) for p, why in bad}

    mem = api.load_dataset(zoo, stream=False, val_split=0, max_bad_fraction=0.5)
    lazy = api.load_dataset(zoo, stream=True, val_split=0, max_bad_fraction=0.5, workers=1)
    assert {Path(p).name for p, _ in lazy.bad_files} == set(BAD) - {"truncated.jpg"}  # the header scan
    assert names(lazy.bad_files) < names(mem.bad_files)  # same reasons as the full decode
    x = torch.cat([b.x for b in BatchReader(lazy.train).batches(16)]).numpy()  # one pass meets the truncated file
    assert names(lazy.bad_files) == names(mem.bad_files)
    np.testing.assert_array_equal(x, mem.train.x)  # CMYK, 16-bit, palette+alpha, EXIF-rotated, GIF: same pixels


def test_the_default_recipe_resizes_a_streamed_dataset_by_decoding_at_the_new_size(folder, monkeypatch):
    from cnnlab.config import TrainConfig
    from cnnlab.engine import auto

    def plan(cfg, *args, **kwargs):  # the recipe's choice, without its speed probe
        return auto.Plan(dataclasses.replace(cfg, model="resnet9", image_size=24), "auto: resnet9 at 24 px", 0.0)

    monkeypatch.setattr(auto, "plan", plan)
    lazy = api.load_dataset(folder, image_size=32, stream=True, workers=1)
    cfg, ds = session.auto_recipe(TrainConfig(data=str(folder)), lazy, quiet=True)
    assert cfg.image_size == 24 and ds.streamed and ds.image_shape == (24, 24, 3)
    mem = api.load_dataset(folder, image_size=24, stream=False)
    np.testing.assert_array_equal(ds.train.x[np.arange(len(ds.train))], mem.train.x)
