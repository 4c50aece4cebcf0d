"""Split folders by any usual name: train/ with val/, valid/, validation/ or eval/ (timm, fastai, Ultralytics), and
test/, in any case. A val folder IS the validation split (no random split of train); what lies beside the split
folders is named in a warning, not left out in silence; class-folder datasets keep working."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.data.check import check_dataset
from cnnlab.data.sources import find_split_folders, image_folder_counts, load_dataset
from cnnlab.errors import DataError

SIZE = 8


def write_split(root: Path, n_per_class: int, classes=("cat", "dog"), start: int = 0) -> Path:
    """n_per_class flat-colour PNGs per class folder under root; file names carry a global index."""
    for c_i, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for k in range(n_per_class):
            i = start + c_i * n_per_class + k
            Image.fromarray(np.full((10, 10, 3), (40 * c_i + 3 * i) % 256, np.uint8)).save(root / c / f"{i:03d}.png")
    return root


def names(split) -> list[str]:
    return sorted(Path(p).name for p in split.paths)


@pytest.mark.parametrize("val_name", ["val", "valid", "validation", "eval", "Valid", "VAL", "Validation"])
def test_a_val_folder_by_any_usual_name_is_the_validation_split(tmp_path, val_name):
    write_split(tmp_path / "train", 10)
    write_split(tmp_path / val_name, 3, start=100)
    ds = load_dataset(tmp_path, image_size=SIZE, val_split=0.2)
    assert set(ds.splits) == {"train", "val"}
    assert len(ds.splits["train"]) == 20  # all of train/: no random 20% taken off
    assert names(ds.splits["val"]) == sorted(p.name for p in (tmp_path / val_name).rglob("*.png"))
    assert ds.class_counts("val") == {"cat": 3, "dog": 3}
    assert not any("warning" in n for n in ds.notes)


@pytest.mark.parametrize("train_name, test_name", [("train", "test"), ("Train", "Test"), ("TRAIN", "TEST"), ("Training", "Testing")])
def test_train_and_test_folders_in_any_case(tmp_path, train_name, test_name):
    write_split(tmp_path / train_name, 10)
    write_split(tmp_path / test_name, 2, start=100)
    ds = load_dataset(tmp_path, image_size=SIZE, val_split=0.1, seed=0)
    assert ds.class_names == ["cat", "dog"]  # not the classes 'Test' and 'Train'
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 18, "val": 2, "test": 4}
    assert image_folder_counts(str(tmp_path)) == (20, 2)


def test_folders_and_images_beside_the_split_folders_are_named_in_a_warning(tmp_path, cli):
    write_split(tmp_path / "train", 4)
    write_split(tmp_path / "valid", 2, start=100)
    write_split(tmp_path / "extra", 2, start=200)
    (tmp_path / "models").mkdir()
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "stray.jpg")
    (tmp_path / "README.txt").write_text("hello")
    (tmp_path / ".cache").mkdir()
    ds = load_dataset(tmp_path, image_size=SIZE)
    assert f"warning: {tmp_path}: left out extra/, models/, stray.jpg beside the split folders — only train/, val/ (or valid/," \
           " validation/, eval/) and test/ are read" in ds.notes
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 8, "val": 4}
    rep = check_dataset(tmp_path)
    assert rep.splits == {"train": 8, "val": 4} and rep.ok
    assert sorted(Path(p).name for p, why in rep.ignored if "beside the split folders" in why) == ["extra", "models", "stray.jpg"]
    r = cli("data", "check", tmp_path, "--json")
    assert r.code == 0 and json.loads(r.out)["splits"] == {"train": 8, "val": 4}


@pytest.mark.usefixtures("one_thread")
def test_training_prints_the_warning_and_uses_the_val_folder(tmp_path, cli):
    write_split(tmp_path / "d" / "train", 8)
    write_split(tmp_path / "d" / "Validation", 3, start=100)
    write_split(tmp_path / "d" / "other", 1, start=200)
    run = tmp_path / "run"
    r = cli("train", "--model", "seed_cnn", "--data", tmp_path / "d", "--image-size", "12", "--epochs", "1", "--out", run)
    assert r.code == 0, r
    assert "warning:" in r.out and "left out other/ beside the split folders" in r.out
    meta = json.loads((run / "run.json").read_text())
    assert meta["dataset"]["splits"]["train"] == 16 and meta["dataset"]["splits"]["val"] == 6


def test_two_folders_for_one_split_is_an_error(tmp_path):
    write_split(tmp_path / "train", 2)
    write_split(tmp_path / "val", 1, start=100)
    write_split(tmp_path / "valid", 1, start=200)
    with pytest.raises(DataError) as e:
        load_dataset(tmp_path, image_size=SIZE)
    msg = str(e.value)
    assert "\n" not in msg and "val/ and valid/ would both be the val split" in msg


def test_val_or_test_without_train_is_still_an_error(tmp_path):
    write_split(tmp_path / "val", 2)
    write_split(tmp_path / "test", 2, start=100)
    with pytest.raises(DataError) as e:
        load_dataset(tmp_path, image_size=SIZE)
    assert "no train/" in str(e.value) and "test/" in str(e.value)


def test_class_folders_named_like_splits_stay_classes(tmp_path):
    """Without train/, valid/ or eval/ beside other folders are classes (a dataset of valid and invalid forms)."""
    write_split(tmp_path, 5, classes=("invalid", "valid"))
    ds = load_dataset(tmp_path, image_size=SIZE, val_split=0)
    assert ds.class_names == ["invalid", "valid"] and len(ds.train) == 10
    assert find_split_folders(tmp_path) == ({}, [])


def test_plain_class_folders_keep_working(tmp_path):
    write_split(tmp_path, 10, classes=("a", "b", "c"))
    ds = load_dataset(tmp_path, image_size=SIZE, val_split=0.2, seed=1)
    assert ds.class_names == ["a", "b", "c"] and len(ds.splits["train"]) == 24 and len(ds.splits["val"]) == 6
    assert image_folder_counts(str(tmp_path)) == (30, 3)
    assert not ds.notes


def test_a_class_in_the_val_folder_that_train_lacks_is_an_error(tmp_path):
    write_split(tmp_path / "train", 2)
    write_split(tmp_path / "eval", 1, classes=("cat", "bird"), start=100)
    with pytest.raises(DataError) as e:
        load_dataset(tmp_path, image_size=SIZE)
    assert "class 'bird' is not in train/" in str(e.value)
