"""Images + a labels table (fastai's from_csv, Kaggle's train.csv): `load_dataset(folder, labels=CSV)` and
`load_dataset(CSV)`. Column detection, delimiters, subfolders, names without extension, missing and unlabelled
files listed, duplicate rows, split columns, every bad input as one clean line naming the file and line, and a
hypothesis fuzz: every generated table ends in a clean CnnlabError or the dataset the table describes."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cnnlab.data import labels_table
from cnnlab.data.check import check_dataset
from cnnlab.data.convert import convert
from cnnlab.data.sources import load_dataset
from cnnlab.data.stream import StreamSplit
from cnnlab.errors import CnnlabError, ConfigError, DataError

SIZE = 8  # decode size: tiny and exact (the images are flat colours)


def shade(i: int) -> int:
    return (37 * i + 11) % 256


def write_images(root: Path, names: list[str], size: int = 10) -> Path:
    """Each image a flat colour of its index, so a loaded pixel says which file it came from."""
    for i, name in enumerate(names):
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((size, size, 3), shade(i), np.uint8)).save(p)
    return root


def write_table(path: Path, rows: list[list[str]], delimiter: str = ",", bom: bool = False, crlf: bool = False) -> Path:
    nl = "\r\n" if crlf else "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(delimiter.join(r) + nl for r in rows)
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8", newline="")
    return path


def labelled(ds, split: str = "train") -> dict[str, str]:
    """{file name relative to the data folder: class} of a split."""
    s = ds.splits[split]
    root = Path(ds.spec) if Path(ds.spec).is_dir() else Path(ds.spec).parent
    return {Path(p).relative_to(root).as_posix(): ds.class_names[int(y)] for p, y in zip(s.paths, s.y)}


def one_line(e: pytest.ExceptionInfo, *needles: str) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


NAMES = [f"img{i}.png" for i in range(6)]
LABELS = ["cat", "dog", "cat", "dog", "cat", "dog"]


@pytest.fixture
def imgs(tmp_path) -> Path:
    return write_images(tmp_path / "imgs", NAMES)


def load(root, table, **kw):
    return load_dataset(root, labels=table, image_size=SIZE, val_split=0, stream=False, **kw)


# ---------------------------------------------------------------- columns


@pytest.mark.parametrize("file_col, label_col", [
    ("fname", "labels"), ("filename", "class"), ("image_id", "target"), ("id", "category"), ("path", "label"),
    ("Image", "Label"), ("File Name", "Class Name"), ("image", "tags"),
])
def test_columns_are_found_by_their_usual_names(imgs, tmp_path, file_col, label_col):
    rows = [["width", label_col, file_col]] + [["10", lb, n] for n, lb in zip(NAMES, LABELS)]
    ds = load(imgs, write_table(tmp_path / "labels.csv", rows))
    assert ds.source_format == "labels-table" and ds.class_names == ["cat", "dog"]
    assert labelled(ds) == dict(zip(NAMES, LABELS))
    assert f"file column {file_col!r}, label column {label_col!r}" in ds.notes[0]


def test_the_file_column_is_the_only_one_of_image_names_and_the_label_the_one_left(imgs, tmp_path):
    rows = [["photo", "species"]] + [[n, lb] for n, lb in zip(NAMES, LABELS)]
    ds = load(imgs, write_table(tmp_path / "t.csv", rows))
    assert labelled(ds) == dict(zip(NAMES, LABELS))
    rows = [["photo", "species", "colour"]] + [[n, lb, "red"] for n, lb in zip(NAMES, LABELS)]
    with pytest.raises(ConfigError) as e:
        load(imgs, write_table(tmp_path / "t.csv", rows))
    one_line(e, "t.csv", "no label column", "--label-col")
    ds = load(imgs, tmp_path / "t.csv", label_col="species")
    assert labelled(ds) == dict(zip(NAMES, LABELS))


def test_file_col_and_label_col_choose_columns(imgs, tmp_path):
    rows = [["original", "crop", "kind"]] + [[n, n, lb] for n, lb in zip(NAMES, LABELS)]
    table = write_table(tmp_path / "t.csv", rows)
    with pytest.raises(ConfigError) as e:
        load(imgs, table)
    one_line(e, "'original', 'crop'", "--file-col")
    ds = load(imgs, table, file_col="crop", label_col="kind")
    assert labelled(ds) == dict(zip(NAMES, LABELS))
    with pytest.raises(ConfigError) as e:
        load(imgs, table, file_col="nope")
    one_line(e, "t.csv", "'nope'", "'original', 'crop', 'kind'")


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
@pytest.mark.parametrize("bom, crlf", [(False, False), (True, True)])
def test_delimiters_bom_and_crlf(imgs, tmp_path, delimiter, bom, crlf):
    rows = [["file", "label"]] + [[n, lb] for n, lb in zip(NAMES, LABELS)] + [[""] * 2]  # a trailing Excel blank row
    ds = load(imgs, write_table(tmp_path / "t.csv", rows, delimiter, bom, crlf))
    assert labelled(ds) == dict(zip(NAMES, LABELS))


def test_quoted_values_hold_the_delimiter(tmp_path):
    root = write_images(tmp_path / "imgs", ["a, b.png", "c.png"])
    table = tmp_path / "t.csv"
    table.write_text('file,label\n"a, b.png","big, red"\nc.png,small\n', encoding="utf-8")
    ds = load(root, table)
    assert labelled(ds) == {"a, b.png": "big, red", "c.png": "small"}


# ---------------------------------------------------------------- finding the files


def test_files_in_subfolders_by_path_or_by_bare_name(tmp_path):
    names = ["a/x0.png", "a/b/x1.png", "x2.png", "c/x3.jpg"]
    root = write_images(tmp_path / "imgs", names)
    rows = [["file", "label"], ["a/x0.png", "cat"], ["./a/b//x1.png", "dog"], ["x2.png", "cat"], ["x3.jpg", "dog"]]
    ds = load(root, write_table(tmp_path / "t.csv", rows))
    assert labelled(ds) == {"a/x0.png": "cat", "a/b/x1.png": "dog", "x2.png": "cat", "c/x3.jpg": "dog"}
    px = {Path(p).name: int(x[0, 0, 0]) for p, x in zip(ds.train.paths, ds.train.x)}
    assert px == {Path(n).name: shade(i) for i, n in enumerate(names)}  # each row got its own file's pixels


def test_a_bare_name_in_two_subfolders_is_ambiguous(tmp_path):
    root = write_images(tmp_path / "imgs", ["cat/1.png", "dog/1.png", "dog/2.png"])
    rows = [["file", "label"], ["dog/2.png", "dog"], ["1.png", "cat"]]
    with pytest.raises(DataError) as e:
        load(root, write_table(tmp_path / "t.csv", rows))
    one_line(e, "t.csv line 3", "'1.png'", "cat/1.png", "dog/1.png")


def test_names_without_extension_match_by_stem(tmp_path):
    root = write_images(tmp_path / "imgs", ["0001.png", "0002.jpg", "sub/0003.webp", "1.2.840.5.png"])
    rows = [["image_id", "label"], ["0001", "a"], ["0002", "b"], ["sub/0003", "a"], ["1.2.840.5", "b"]]
    ds = load(root, write_table(tmp_path / "t.csv", rows))
    assert labelled(ds) == {"0001.png": "a", "0002.jpg": "b", "sub/0003.webp": "a", "1.2.840.5.png": "b"}
    write_images(root, ["0001.jpg"])  # now 0001 names two images
    with pytest.raises(DataError) as e:
        load(root, tmp_path / "t.csv")
    one_line(e, "t.csv line 2", "'0001'", "0001.jpg", "0001.png", "give the extension")


def test_missing_files_and_unlabelled_images_are_listed_not_dropped(tmp_path):
    names = [f"i{k}.png" for k in range(10)]
    root = write_images(tmp_path / "imgs", names)
    rows = [["file", "label"]] + [[n, "ab"[k % 2]] for k, n in enumerate(names[:2])] + [[f"gone{k}.png", "a"] for k in range(7)]
    ds = load(root, write_table(tmp_path / "t.csv", rows))
    assert labelled(ds) == {"i0.png": "a", "i1.png": "b"}
    missing = [n for n in ds.notes if "whose file is not in" in n]
    assert missing == [f"warning: left out 7 row(s) of t.csv whose file is not in {root}: line 4 gone0.png, line 5 gone1.png,"
                       " line 6 gone2.png, line 7 gone3.png, line 8 gone4.png and 2 more"]
    unlabelled = [n for n in ds.notes if "that no row of" in n]
    assert unlabelled == [f"warning: left out 8 image(s) in {root} that no row of t.csv names: i2.png, i3.png, i4.png, i5.png,"
                          " i6.png and 3 more"]
    assert [Path(p).name for p, _ in ds.missing_files] == [f"gone{k}.png" for k in range(7)]
    assert ds.missing_files[0][1] == "named on line 4 of t.csv, file not found"
    assert sorted(Path(p).name for p in ds.unlabelled_files) == names[2:]


def test_duplicate_rows(imgs, tmp_path):
    rows = [["file", "label"]] + [[n, lb] for n, lb in zip(NAMES, LABELS)] + [[NAMES[1], LABELS[1]], ["img1", LABELS[1]]]
    ds = load(imgs, write_table(tmp_path / "t.csv", rows))
    assert labelled(ds) == dict(zip(NAMES, LABELS)) and len(ds.train) == 6
    assert any("2 row(s) repeat an earlier row" in n and "line 8 = line 3" in n and "line 9 = line 3" in n for n in ds.notes)
    rows[-1] = [NAMES[1], "cat"]
    with pytest.raises(DataError) as e:
        load(imgs, write_table(tmp_path / "t.csv", rows))
    one_line(e, "lines 3 and 9", "'img1.png'", "'dog' and 'cat'")
    rows[-1] = ["img1", "cat"]  # the same file, spelt without its extension
    rows.pop(-2)
    with pytest.raises(DataError) as e:
        load(imgs, write_table(tmp_path / "t.csv", rows))
    one_line(e, "lines 3 and 8", "img1.png", "'dog' and 'cat'")


# ---------------------------------------------------------------- splits


@pytest.mark.parametrize("col, val_value, train_value", [
    ("is_valid", "True", "False"), ("is_valid", "1", "0"), ("split", "valid", "train"), ("split", "Validation", "TRAIN"),
    ("Split", "val", "training"),
])
def test_a_split_column_gives_the_splits(imgs, tmp_path, col, val_value, train_value):
    rows = [["file", "label", col]] + [[n, lb, val_value if k >= 4 else train_value] for k, (n, lb) in enumerate(zip(NAMES, LABELS))]
    ds = load_dataset(imgs, labels=write_table(tmp_path / "t.csv", rows), image_size=SIZE, val_split=0.5)
    assert labelled(ds, "train") == dict(zip(NAMES[:4], LABELS[:4]))
    assert labelled(ds, "val") == dict(zip(NAMES[4:], LABELS[4:]))  # the table's val rows, not a random half of train


def test_test_rows_and_no_val_rows_give_the_usual_val_split(imgs, tmp_path):
    names = [f"i{k}.png" for k in range(22)]
    root = write_images(tmp_path / "many", names)
    rows = [["file", "label", "split"]] + [[n, "ab"[k % 2], "test" if k >= 20 else "train"] for k, n in enumerate(names)]
    ds = load_dataset(root, labels=write_table(tmp_path / "t.csv", rows), image_size=SIZE, val_split=0.1, seed=3)
    assert set(ds.splits) == {"train", "val", "test"} and len(ds.splits["test"]) == 2
    assert len(ds.splits["train"]) == 18 and len(ds.splits["val"]) == 2


def test_a_bad_split_value_names_its_line(imgs, tmp_path):
    rows = [["file", "label", "is_valid"]] + [[n, lb, "maybe" if k == 3 else "0"] for k, (n, lb) in enumerate(zip(NAMES, LABELS))]
    with pytest.raises(DataError) as e:
        load(imgs, write_table(tmp_path / "t.csv", rows))
    one_line(e, "t.csv line 5", "is_valid", "'maybe'", "true/false")


def test_a_class_only_in_val_rows_is_an_error(imgs, tmp_path):
    labels = ["cat", "dog", "cat", "dog", "cat", "bird"]
    rows = [["file", "label", "is_valid"]] + [[n, lb, "1" if k == 5 else "0"] for k, (n, lb) in enumerate(zip(NAMES, labels))]
    with pytest.raises(DataError) as e:
        load(imgs, write_table(tmp_path / "t.csv", rows))
    one_line(e, "t.csv line 7", "'bird'", "no train row")


def test_split_folders_named_by_the_paths_are_the_splits(tmp_path):
    names = [f"train/t{k}.png" for k in range(6)] + ["Valid/v0.png", "Valid/v1.png", "test/s0.png"]
    root = write_images(tmp_path / "d", names)
    rows = [["file", "label"]] + [[n, "ab"[k % 2]] for k, n in enumerate(names)]
    ds = load_dataset(write_table(root / "labels.csv", rows), image_size=SIZE)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 6, "val": 2, "test": 1}
    assert "splits from the folders the files are in: train 6, val 2, test 1" in ds.notes


# ---------------------------------------------------------------- --data labels.csv, options, loaders


def test_data_can_be_the_table_with_paths_relative_to_its_folder(tmp_path):
    root = write_images(tmp_path / "kaggle", [f"images/{n}" for n in NAMES])
    table = write_table(root / "train.csv", [["image", "label"]] + [[f"images/{n}", lb] for n, lb in zip(NAMES, LABELS)])
    ds = load_dataset(table, image_size=SIZE, val_split=0)
    assert ds.spec == str(table) and labelled(ds) == {f"images/{n}": lb for n, lb in zip(NAMES, LABELS)}
    # the table's paths also work against the image folder itself when --labels names a table beside it
    ds = load_dataset(root / "images", labels=table, image_size=SIZE, val_split=0)
    assert labelled(ds) == dict(zip(NAMES, LABELS))
    ds = load_dataset(table, image_size=SIZE, val_split=0, file_col="image", label_col="label")
    assert len(ds.train) == 6


def test_labels_named_relative_to_the_image_folder(imgs, tmp_path, monkeypatch):
    write_table(imgs / "labels.csv", [["file", "label"]] + [[n, lb] for n, lb in zip(NAMES, LABELS)])
    monkeypatch.chdir(tmp_path)
    ds = load_dataset("imgs", labels="labels.csv", image_size=SIZE, val_split=0)
    assert labelled(ds) == dict(zip(NAMES, LABELS))
    with pytest.raises(DataError) as e:
        load_dataset("imgs", labels="nothere.csv")
    one_line(e, "nothere.csv", "no such labels file")


def test_options_that_need_a_table(imgs, tmp_path):
    with pytest.raises(ConfigError) as e:
        load_dataset(imgs, label_col="label")
    one_line(e, "label_col", "--labels")
    table = write_table(tmp_path / "t.csv", [["file", "label"]] + [[n, lb] for n, lb in zip(NAMES, LABELS)])
    with pytest.raises(ConfigError) as e:
        load_dataset(table, labels=table)
    one_line(e, "--labels", "folder")


def test_integer_labels_sort_as_numbers_and_name_classes_by_position(tmp_path):
    names = [f"i{k}.png" for k in range(11)]
    root = write_images(tmp_path / "imgs", names)
    table = write_table(tmp_path / "t.csv", [["file", "label"]] + [[n, str(k)] for k, n in enumerate(names)])
    ds = load(root, table)
    assert ds.class_names == [str(k) for k in range(11)] and list(ds.train.y) == list(range(11))
    ds = load(root, table, classes=[f"c{k}" for k in range(11)])
    assert ds.class_names[int(ds.train.y[10])] == "c10"
    with pytest.raises(DataError) as e:
        load(root, table, classes=["a", "b"])
    one_line(e, "t.csv line 4", "label '2'", "['a', 'b']")


def test_streaming_gives_the_same_pixels_and_bad_files_are_counted(tmp_path):
    names = [f"i{k}.png" for k in range(10)]
    root = write_images(tmp_path / "imgs", names)
    (root / "i9.png").write_bytes(b"not an image")
    table = write_table(tmp_path / "t.csv", [["file", "label"]] + [[n, "ab"[k % 2]] for k, n in enumerate(names)])
    mem = load(root, table, max_bad_fraction=0.2)
    streamed = load_dataset(root, labels=table, image_size=SIZE, val_split=0, stream=True, workers=0, max_bad_fraction=0.2)
    assert isinstance(streamed.train, StreamSplit) and len(streamed.train) == len(mem.train) == 9
    assert np.array_equal(streamed.train.x[np.arange(9)], mem.train.x) and np.array_equal(streamed.train.y, mem.train.y)
    assert [Path(p).name for p, _ in mem.bad_files] == ["i9.png"]
    with pytest.raises(DataError) as e:
        load(root, table, max_bad_fraction=0.05)
    one_line(e, "1 of 10 images are unreadable", "i9.png")


def test_greyscale_and_size(imgs, tmp_path):
    table = write_table(tmp_path / "t.csv", [["file", "label"]] + [[n, lb] for n, lb in zip(NAMES, LABELS)])
    ds = load_dataset(imgs, labels=table, image_size=6, channels=1, val_split=0)
    assert ds.image_shape == (6, 6, 1)


def test_a_seed_labels_csv_as_data_is_its_folder(seed_dir):
    ds = load_dataset(seed_dir / "labels.csv", val_split=0)
    assert ds.source_format == "seed-csv"


# ---------------------------------------------------------------- a folder without classes that a table names


def test_a_flat_folder_with_a_table_beside_it_says_to_pass_labels(tmp_path):
    root = write_images(tmp_path / "data" / "images", [f"{k:04d}.png" for k in range(4)])
    table = write_table(tmp_path / "data" / "train.csv", [["id", "label"], ["0000", "a"], ["0001", "b"]])
    with pytest.raises(DataError) as e:
        load_dataset(root)
    one_line(e, str(root), f"--labels {table}")
    inside = write_table(root / "labels.csv", [["file", "label"], ["0002.png", "a"]])
    table.unlink()
    with pytest.raises(DataError) as e:
        load_dataset(root)
    one_line(e, f"--labels {inside}")


def test_a_flat_folder_named_by_class_notes_a_table_that_names_it(tmp_path):
    root = write_images(tmp_path / "d", ["cat.0.png", "cat.1.png", "dog.0.png", "dog.1.png"])
    table = write_table(tmp_path / "labels.csv", [["file", "label"], ["cat.0.png", "x"]])
    ds = load_dataset(root, image_size=SIZE, val_split=0)
    assert ds.class_names == ["cat", "dog"]
    assert f"{table} names these images too — to take their labels from it instead, pass --labels {table}" in ds.notes


# ---------------------------------------------------------------- bad input: one line naming the file and line


def test_no_usable_columns(imgs, tmp_path):
    with pytest.raises(DataError) as e:
        load(imgs, write_table(tmp_path / "t.csv", [["file"]] + [[n] for n in NAMES]))
    one_line(e, "t.csv line 1", "one column", "label column")
    with pytest.raises(DataError) as e:
        load(imgs, write_table(tmp_path / "t.csv", [["a", "b"], ["1", "2"]]))
    one_line(e, "t.csv", "no file column", "'a', 'b'", "--file-col")
    with pytest.raises(DataError) as e:
        load(imgs, write_table(tmp_path / "t.csv", [[NAMES[0], "cat"], [NAMES[1], "dog"]]))
    one_line(e, "t.csv line 1", "not a header", "file,label")
    with pytest.raises(DataError) as e:
        load(imgs, write_table(tmp_path / "t.csv", [["file", "label"]]))
    one_line(e, "t.csv", "no rows")
    (tmp_path / "t.csv").write_text("")
    with pytest.raises(DataError) as e:
        load(imgs, tmp_path / "t.csv")
    one_line(e, "t.csv", "empty")
    (tmp_path / "t.csv").write_bytes(b"file,label\nimg0.png,\xff\xfe\n")
    with pytest.raises(DataError) as e:
        load(imgs, tmp_path / "t.csv")
    one_line(e, "t.csv line 2", "UTF-8")


def test_empty_labels_name_their_lines(imgs, tmp_path):
    rows = [["file", "label"]] + [[n, "" if k in (1, 4) else lb] for k, (n, lb) in enumerate(zip(NAMES, LABELS))]
    with pytest.raises(DataError) as e:
        load(imgs, write_table(tmp_path / "t.csv", rows))
    one_line(e, "t.csv", "'label' is empty on lines 3, 6")


def test_a_short_or_long_row_names_its_line(imgs, tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("file,label,notes\nimg0.png,cat,x\nimg1.png\nimg2.png,cat,x\n")
    with pytest.raises(DataError) as e:
        load(imgs, table)
    one_line(e, "t.csv line 3", "1 fields", "header (line 1) has 3")
    table.write_text("file,label\nimg0.png,cat\nimg1.png,dog,extra\n")
    with pytest.raises(DataError) as e:
        load(imgs, table)
    one_line(e, "t.csv line 3", "3 fields", "quote values")


@pytest.mark.parametrize("entry", ["../outside.png", "sub/../../outside.png", "ABS"])
def test_paths_that_leave_the_data_folder_are_errors(imgs, tmp_path, entry):
    write_images(tmp_path, ["outside.png"])
    entry = str(tmp_path / "outside.png") if entry == "ABS" else entry
    rows = [["file", "label"]] + [[n, lb] for n, lb in zip(NAMES, LABELS)] + [[entry, "cat"]]
    with pytest.raises(DataError) as e:
        load(imgs, write_table(tmp_path / "meta" / "t.csv", rows))
    one_line(e, "t.csv line 8", "outside the data folder", str(imgs))


def test_an_absolute_path_inside_the_folder_is_fine(imgs, tmp_path):
    rows = [["file", "label"]] + [[str(imgs / n), lb] for n, lb in zip(NAMES, LABELS)]
    ds = load(imgs, write_table(tmp_path / "t.csv", rows))
    assert labelled(ds) == dict(zip(NAMES, LABELS))


def test_a_table_whose_files_are_all_missing(imgs, tmp_path):
    rows = [["file", "label"], ["a.png", "cat"], ["b.png", "dog"]]
    with pytest.raises(DataError) as e:
        load(imgs, write_table(tmp_path / "t.csv", rows))
    one_line(e, "t.csv", "none of the 2 files", "line 2: 'a.png'", str(imgs / "a.png"))


def test_label_delim(imgs, tmp_path):
    rows = [["file", "label"]] + [[n, lb] for n, lb in zip(NAMES, LABELS)]
    with pytest.raises(ConfigError) as e:
        load(imgs, write_table(tmp_path / "t.csv", rows), label_delim=" ")
    one_line(e, "t.csv", "label_delim ' ' splits no label", "drop --label-delim")
    with pytest.raises(ConfigError) as e:
        load(imgs, tmp_path / "t.csv", label_delim="")
    rows[2][1], rows[5][1] = "cat|dog", ""  # multi-label rows: label sets as multi-hot rows; an empty cell is no label
    ds = load(imgs, write_table(tmp_path / "t.csv", rows), label_delim="|")
    assert ds.multi_label and ds.class_names == ["cat", "dog"]
    assert {Path(p).name: y.tolist() for p, y in zip(ds.train.paths, ds.train.y)} == {
        "img0.png": [1, 0], "img1.png": [1, 1], "img2.png": [1, 0], "img3.png": [0, 1], "img4.png": [0, 0], "img5.png": [0, 1]}


def test_the_reader_returns_label_lists():
    with tempfile.TemporaryDirectory() as tmp:
        table = write_table(Path(tmp) / "t.tsv", [["fname", "tags", "is_valid"], ["a.jpg", "cat  dog cat", "0"],
                                                   ["b.jpg", "dog", "1"], ["c.jpg", "", "0"]], "\t")
        t = labels_table.read_labels_table(table, label_delim=" ")
    assert (t.file_col, t.label_col, t.split_col, t.delimiter) == ("fname", "tags", "is_valid", "\t")
    assert [(r.line, r.file, r.labels, r.split) for r in t.rows] == [
        (2, "a.jpg", ("cat", "dog"), "train"), (3, "b.jpg", ("dog",), "val"), (4, "c.jpg", (), "train")]
    assert t.multi_label


# ---------------------------------------------------------------- data check / data convert / train through the CLI


def _kaggle(tmp_path: Path, missing: bool = False) -> Path:
    names = [f"images/{k:03d}.png" for k in range(16)]
    root = write_images(tmp_path / "kaggle", names, size=16)
    rows = [["image_id", "label"]] + [[Path(n).stem if k % 2 else n, "ab"[k % 2]] for k, n in enumerate(names)]
    if missing:
        rows.append(["images/lost", "a"])
    return write_table(root / "train.csv", rows)


def test_data_check_and_convert_a_table(cli, tmp_path):
    table = _kaggle(tmp_path)
    rep = json.loads(cli("data", "check", table, "--json").out)
    assert rep["ok"] and rep["format"] == "labels-table" and rep["splits"] == {"train": 16} and rep["classes"] == ["a", "b"]
    table = _kaggle(tmp_path, missing=True)
    r = cli("data", "check", table, "--json")
    rep = json.loads(r.out)
    assert r.code == 2 and [b["reason"] for b in rep["bad"]] == ["named on line 18 of train.csv, file not found"]
    out = tmp_path / "folders"
    r = cli("data", "convert", table, "--to", "folder", out)
    assert r.code == 0, r
    assert sorted(p.name for p in (out / "train").iterdir()) == ["a", "b"] and len(list((out / "train" / "a").iterdir())) == 8
    rep = check_dataset(table.parent / "images", labels=table)  # the --data FOLDER --labels TABLE form
    assert not rep.ok and len(rep.bad) == 1 and rep.splits == {"train": 16} and rep.ignored == []
    (table.parent / "images" / "stray.png").write_bytes((table.parent / "images" / "000.png").read_bytes())
    (table.parent / "images" / "broken.png").write_bytes(b"")
    rep = check_dataset(table)
    assert sorted(Path(p).name for p, _ in rep.ignored) == ["broken.png", "stray.png"]
    table.write_text(table.read_text() + "images/broken.png,a\n")
    rep = check_dataset(table)
    assert sorted((Path(p).name, why) for p, why in rep.bad) == [("broken.png", "file is empty (0 bytes)"),
                                                                   ("lost", "named on line 18 of train.csv, file not found")]
    assert rep.images == 18 and rep.splits == {"train": 16}
    ds = load_dataset(table, image_size=16, val_split=0, max_bad_fraction=0.1)
    convert(ds, tmp_path / "csv", to="csv")
    back = load_dataset(tmp_path / "csv", val_split=0)
    assert back.class_names == ["a", "b"] and np.array_equal(back.train.x, ds.train.x) and len(back.train) == 16


@pytest.mark.usefixtures("one_thread")
def test_train_on_a_table(cli, tmp_path):
    table = _kaggle(tmp_path, missing=True)
    run = tmp_path / "run"
    r = cli("train", "--model", "seed_cnn", "--data", table, "--image-size", "16", "--epochs", "1", "--out", run)
    assert r.code == 0, r
    assert "warning: left out 1 row(s) of train.csv whose file is not in" in r.out and "line 18 images/lost" in r.out
    meta = json.loads((run / "run.json").read_text())
    assert meta["dataset"]["classes"] == ["a", "b"]


# ---------------------------------------------------------------- fuzz


FUZZ = settings(max_examples=int(os.environ.get("CNNLAB_FUZZ_EXAMPLES", "60")), deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FUZZ_NAMES = ["p0.png", "p1.jpg", "sub/p2.png", "sub/deeper/p3.png", "p4.png", "p5.png"]
DEFECTS = ["none", "none", "empty-label", "conflict", "repeat", "escape", "missing", "all-missing", "ragged", "bad-split",
           "no-header", "one-column", "empty-file", "delim-splits-nothing", "multi-label"]


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("fuzz") / "imgs", FUZZ_NAMES)


def _spell(name: str, how: str) -> str:
    if how == "stem":
        return name.rsplit(".", 1)[0]
    if how == "bare":
        return name.rsplit("/", 1)[-1]
    if how == "dot":
        return "./" + name
    return name


@st.composite
def table_case(draw):
    """(rows, delimiter, label_delim, expected {split: {file: label}} or None, needles of the error, notes expected)."""
    n = draw(st.integers(2, len(FUZZ_NAMES)))
    chosen = draw(st.permutations(FUZZ_NAMES))[:n]
    labels = ["cat", "dog"] + [draw(st.sampled_from(["cat", "dog", "bird"])) for _ in range(n - 2)]
    fcol = draw(st.sampled_from(["fname", "file", "filename", "image", "image_id", "id", "path", "File Name"]))
    lcol = draw(st.sampled_from(["label", "labels", "class", "target", "category", "Label"]))
    scol = draw(st.sampled_from([None, "is_valid", "split"]))
    splits = ["train", "train"] + [draw(st.sampled_from(["train", "val", "test"])) for _ in range(n - 2)] if scol else ["train"] * n
    if scol:  # a class seen only in val/test rows is its own (tested) error; keep every class in train here
        trained = {lb for lb, s in zip(labels, splits) if s == "train"}
        labels = [lb if lb in trained or s == "train" else "cat" for lb, s in zip(labels, splits)]
    if scol == "is_valid":
        splits = [s if s != "test" else "val" for s in splits]
    spellings = [draw(st.sampled_from(["exact", "stem", "bare", "dot"])) for _ in range(n)]
    header = [fcol, lcol] + ([scol] if scol else [])
    if draw(st.booleans()):
        header = header[::-1]

    def cell(col, k):
        if col == fcol:
            return _spell(chosen[k], spellings[k])
        if col == lcol:
            return labels[k]
        s = splits[k]
        if scol == "is_valid":
            return draw(st.sampled_from(["1", "true", "True"])) if s == "val" else draw(st.sampled_from(["0", "false", "FALSE"]))
        return draw(st.sampled_from({"train": ["train", "Train", "training"], "val": ["valid", "val", "validation"], "test": ["test"]}[s]))

    rows = [list(header)] + [[cell(c, k) for c in header] for k in range(n)]
    fi, li = header.index(fcol), header.index(lcol)
    expected: dict[str, dict[str, str]] = {}
    for k in range(n):
        expected.setdefault(splits[k], {})[chosen[k]] = labels[k]
    kind = draw(st.sampled_from(DEFECTS))
    row = draw(st.integers(1, n))  # a data row (list index; its line number is row + 1)
    line = f"line {row + 1}"
    label_delim, needles, notes = None, [], []
    if kind == "empty-label":
        rows[row][li] = draw(st.sampled_from(["", "  "]))
        needles = ["is empty on", line]
    elif kind == "conflict":
        extra = list(rows[row])
        extra[li] = "dog" if labels[row - 1] != "dog" else "cat"
        extra[fi] = chosen[row - 1]  # the same file, spelt in full
        rows.append(extra)
        needles = [f"lines {row + 1} and {len(rows)}"]
    elif kind == "repeat":
        rows.append(list(rows[row]))
        notes = ["repeat an earlier row"]
    elif kind == "escape":
        rows[row][fi] = draw(st.sampled_from(["../x.png", "sub/../../x.png", "/etc/passwd", "../imgs/../../x"]))
        needles = [line, "outside the data folder"]
    elif kind == "missing":
        extra = list(rows[1])
        extra[fi] = "nothere/" + draw(st.sampled_from(["a.png", "b", "c.jpg"]))
        rows.append(extra)
        notes = [f"line {len(rows)} nothere/"]
    elif kind == "all-missing":
        for r in rows[1:]:
            r[fi] = "gone_" + r[fi].replace("/", "_")
        needles = ["none of the", "line 2"]
    elif kind == "ragged":
        rows[row] = rows[row][:1] if draw(st.booleans()) else rows[row] + ["x", "y"]
        needles = [line, "fields"]
    elif kind == "bad-split":
        if scol:
            rows[row][header.index(scol)] = draw(st.sampled_from(["maybe", "2", "holdout", ""]))
            needles = [line, scol]
        else:
            kind = "none"
    elif kind == "no-header":
        rows = rows[1:]
        rows[0][fi] = chosen[0]  # a file name with its extension on line 1
        needles = ["line 1", "not a header"]
    elif kind == "one-column":
        rows = [[r[fi]] for r in rows]
        needles = ["line 1", "one column"]
    elif kind == "empty-file":
        rows[row][fi] = ""
        needles = ["is empty on", line]
    elif kind == "delim-splits-nothing":
        label_delim = draw(st.sampled_from([" ", "|", ";"]))
        needles = ["splits no label"]
    elif kind == "multi-label":  # that row has two labels: the dataset is multi-label
        rows[row][li] = "cat|dog"
        label_delim = "|"
        expected[splits[row - 1]][chosen[row - 1]] = "cat dog"
    delimiter = draw(st.sampled_from([",", ";", "\t"]))
    if kind == "multi-label" and delimiter == ";":
        delimiter = ","
    ok = kind in ("none", "repeat", "missing", "multi-label")
    return rows, delimiter, label_delim, expected if ok else None, needles, notes, kind


@FUZZ
@given(case=table_case(), bom=st.booleans(), crlf=st.booleans())
def test_fuzzed_tables_load_correctly_or_fail_cleanly(fuzz_root, case, bom, crlf):
    rows, delimiter, label_delim, expected, needles, notes, kind = case
    with tempfile.TemporaryDirectory() as tmp:
        table = write_table(Path(tmp) / "labels.csv", rows, delimiter, bom, crlf)
        try:
            ds = load_dataset(fuzz_root, labels=table, label_delim=label_delim, image_size=SIZE, val_split=0, stream=False)
        except CnnlabError as e:
            msg = str(e)
            assert expected is None, (kind, msg)
            assert "\n" not in msg and "labels.csv" in msg, (kind, msg)
            for n in needles:
                assert n in msg, (kind, n, msg)
            return
    assert expected is not None, (kind, rows)
    got = {s: {Path(p).relative_to(fuzz_root).as_posix(): ds.label_text(y) for p, y in zip(v.paths, v.y)}
           for s, v in ds.splits.items()}
    assert got == expected, kind
    assert ds.multi_label == (kind == "multi-label")
    assert ds.class_names == sorted({w for d in expected.values() for lb in d.values() for w in lb.split()})
    unnamed = sorted(set(FUZZ_NAMES) - {f for d in expected.values() for f in d})
    assert sorted(Path(p).relative_to(fuzz_root).as_posix() for p in ds.unlabelled_files) == unnamed
    for n in notes:
        assert any(n in note for note in ds.notes), (kind, n, ds.notes)


def test_cli_trains_evaluates_and_predicts_from_a_labels_table(cli, tmp_path):
    """The whole path a Kaggle user takes: a flat folder of images + labels.csv, through train, evaluate and predict."""
    import json as _json

    from PIL import Image

    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    rows = ["id,breed"]
    for i in range(24):
        name = f"sub/img{i:02d}.png" if i % 3 == 0 else f"img{i:02d}.png"
        colour = (220, 30, 30) if i % 2 else (30, 30, 220)
        Image.new("RGB", (20 + i % 5, 16), colour).save(root / name)
        rows.append(f"{name.rsplit('.', 1)[0]},{'red' if i % 2 else 'blue'}")  # no extension: matched by stem
    rows.append("missing01,red")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    r = cli("train", "--data", root, "--labels", tmp_path / "labels.csv", "--model", "seed_cnn", "--image-size", "16",
            "--epochs", "1", "--out", run, "--quiet")
    assert r.code == 0, r
    cfg = (run / "config.yaml").read_text()
    assert "labels:" in cfg and "labels.csv" in cfg
    r = cli("evaluate", run, "--data", root, "--labels", tmp_path / "labels.csv", "--split", "val", "--json")
    assert r.code == 0, r
    assert _json.loads(r.out)["n"] >= 1 and "missing01" in r.err  # the row without a file is named, not dropped in silence
    r = cli("predict", run, root / "img01.png", "--json")
    assert r.code == 0 and _json.loads(r.out)[0]["class"] in ("red", "blue"), r
    r = cli("train", "--data", root, "--model", "seed_cnn", "--epochs", "1", "--out", tmp_path / "r2", "--quiet")
    assert r.code == 2 and "--labels" in r.err, r  # a flat folder: the error says how to name its labels
