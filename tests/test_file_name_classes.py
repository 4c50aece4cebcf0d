"""Image folders without class subfolders: classes from numbered file names (Kaggle's cat.0.jpg, dog.0.jpg)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


from cnnlab.data.builtin import make_shapes
from cnnlab.data.sources import class_from_file_name, load_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name, label", [
    ("cat.0.jpg", "cat"), ("dog.12499.jpg", "dog"),  # Kaggle dogs-vs-cats
    ("american_bulldog_10.png", "american_bulldog"), ("Abyssinian_1.jpg", "Abyssinian"),  # Oxford-IIIT pets
    ("dog (2).jpg", "dog"), ("tabby-cat-07.webp", "tabby-cat"), ("cat12.png", "cat"),
    ("0001.jpg", None), ("cat.jpg", None), ("12.5.png", None),
])
def test_class_from_file_name(name, label):
    assert class_from_file_name(name) == label


def write_flat(folder: Path, n_per_class: int, size: int = 24, names=("cat", "dog"), start: int = 0) -> Path:
    """Two shape classes saved as cat.<i>.png / dog.<i>.png in one folder; returns the folder."""
    x, y, _ = make_shapes(n=2 * n_per_class, size=size, classes=2, seed=start + 1)
    folder.mkdir(parents=True, exist_ok=True)
    for i, (img, label) in enumerate(zip(x, y)):
        Image.fromarray(img).save(folder / f"{names[label]}.{start + i}.png")
    return folder


def test_a_flat_folder_trains_on_classes_from_its_file_names(cli, tmp_path):
    root = tmp_path / "kaggle"
    write_flat(root / "train", 10)
    write_flat(root / "test", 4, start=100)
    (root / "train" / "sample_submission.csv").write_text("id,label\n")
    ds = load_dataset(root, val_split=0)
    expected = sorted(p.name.split(".")[0] for p in (root / "train").glob("*.png"))
    assert ds.class_names == ["cat", "dog"] and len(ds.splits["train"]) == 20 and len(ds.splits["test"]) == 8
    assert [ds.class_names[i] for i in ds.splits["train"].y] == expected  # labels follow the names, in sorted order
    run = tmp_path / "run"
    r = cli("train", "--model", "seed_cnn", "--data", root, "--image-size", "24", "--epochs", "1", "--out", run)
    assert r.code == 0, r
    counts = {c: expected.count(c) for c in ("cat", "dog")}
    assert f"classes from the file names (no class subfolders): cat {counts['cat']}, dog {counts['dog']}" in r.out
    assert "left out 1 file(s) that are not images (1 .csv)" in r.out
    meta = json.loads((run / "run.json").read_text())
    assert meta["dataset"]["classes"] == ["cat", "dog"] and meta["dataset"]["splits"]["test"] == 8
    rep = json.loads(cli("data", "check", root, "--json").out)
    assert rep["classes"] == ["cat", "dog"] and rep["splits"] == {"train": 20, "test": 8} and rep["bad"] == []


def test_flat_folders_the_names_cannot_label_are_one_line_errors(cli, tmp_path):
    one = tmp_path / "phone"
    one.mkdir()
    for i in range(4):
        Image.fromarray(np.full((24, 24, 3), 60 * i, np.uint8)).save(one / f"IMG_{i:04d}.jpg")
    r = cli("train", "--data", one, "--epochs", "1", "--out", tmp_path / "r1")
    assert r.code == 2 and r.err.count("\n") == 1 and "one class ('IMG')" in r.err and "cats/ and dogs/" in r.err, r
    mixed = write_flat(tmp_path / "mixed", 3)
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(mixed / "holiday.jpg")
    r = cli("train", "--data", mixed, "--epochs", "1", "--out", tmp_path / "r2")
    assert r.code == 2 and r.err.count("\n") == 1 and "holiday.jpg" in r.err and "cat.0.jpg" in r.err, r
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()
    rep = json.loads(cli("data", "check", mixed, "--json").out)
    assert [Path(b["path"]).name for b in rep["bad"]] == ["holiday.jpg"] and "does not start with its class" in rep["bad"][0]["reason"]
