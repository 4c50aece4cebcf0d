"""The seed CSV reader/writer: equivalence with np.loadtxt, exact error locations, labels, shapes, cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cnnlab.data import seed_csv
from cnnlab.data.seed_csv import (
    infer_image_shape,
    load_pixel_csv_cached,
    read_label_csv,
    read_pixel_csv,
    write_label_csv,
    write_pixel_csv,
)
from cnnlab.errors import DataError

FORMATS = ["%d", "%.1f", "%.18e", "%e", "%.3f", "%g", "%03d", "%.2e", "%.0f", "%5.1f", "%.2E", "%.25f"]  # exact for 0-255


def pixels(n: int = 7, d: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, d), dtype=np.uint8)
    edges = np.array([0, 255, 9, 10, 99, 100], np.uint8)[:d]
    x[0, : len(edges)] = edges  # edges: 1-, 2- and 3-digit values, both ends of the range
    return x


def savetxt(path: Path, x, fmt: str = "%d") -> Path:
    np.savetxt(path, x, delimiter=",", fmt=fmt)
    return path


@pytest.fixture(params=["default", "tiny-chunks"])
def chunks(request, monkeypatch):
    """Run each test with the normal chunk sizes and with chunks of a few bytes (many boundaries)."""
    if request.param == "tiny-chunks":
        monkeypatch.setattr(seed_csv, "_CHUNK", 23)
        monkeypatch.setattr(seed_csv, "_SCI_TOKENS", 8)
    return request.param


def message(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------------------------ reading


def test_round_trip(tmp_path, chunks):
    for n, d in [(7, 12), (1, 1), (1, 5), (5, 1), (40, 75)]:
        x = pixels(n, d, seed=n * d)
        write_pixel_csv(tmp_path / "x.csv", x)
        y = read_pixel_csv(tmp_path / "x.csv")
        assert y.dtype == np.uint8 and y.shape == (n, d)
        np.testing.assert_array_equal(y, x)
    assert [p.name for p in tmp_path.iterdir()] == ["x.csv"]  # no temp files left behind


def test_write_accepts_images_and_whole_number_arrays(tmp_path):
    x = pixels(4, 27).reshape(4, 3, 3, 3)
    write_pixel_csv(tmp_path / "a.csv", x)
    np.testing.assert_array_equal(read_pixel_csv(tmp_path / "a.csv"), x.reshape(4, -1))
    write_pixel_csv(tmp_path / "b.csv", x.astype(np.float32))
    np.testing.assert_array_equal(read_pixel_csv(tmp_path / "b.csv"), x.reshape(4, -1))
    for bad in [np.full((2, 3), 256), np.full((2, 3), -1), np.full((2, 3), 1.5), np.zeros(3)]:
        with pytest.raises(DataError):
            write_pixel_csv(tmp_path / "c.csv", bad)
    assert not (tmp_path / "c.csv").exists()


@pytest.mark.parametrize("fmt", FORMATS + ["%.0e", "%.1e"])
def test_same_as_loadtxt(tmp_path, fmt, chunks):
    x = pixels(9, 16)
    if fmt not in FORMATS:
        x = x % 200  # lossy formats: 11 -> "1e+01", and 255 -> "3e+02" would be out of range
    path = savetxt(tmp_path / "input.csv", x, fmt)
    got = read_pixel_csv(path)
    np.testing.assert_array_equal(got, np.rint(np.loadtxt(path, delimiter=",")))
    if fmt in FORMATS:
        np.testing.assert_array_equal(got, x)


@pytest.mark.parametrize("fmt", ["%d", "%.1f", "%.3f", "%.18e", "%e", "%.2E", "%03d", "%g"])
def test_common_formats_take_the_fast_path(tmp_path, fmt, monkeypatch, chunks):
    def slow(*args):
        raise AssertionError("fell back to the general parser")

    monkeypatch.setattr(seed_csv, "_parse_general", slow)
    x = pixels(6, 10)
    text = savetxt(tmp_path / "input.csv", x, fmt).read_bytes()
    for content in [text, b"\xef\xbb\xbf" + text.replace(b"\n", b"\r\n"), text.rstrip(b"\n")]:
        (tmp_path / "input.csv").write_bytes(content)
        np.testing.assert_array_equal(read_pixel_csv(tmp_path / "input.csv"), x)
    half = savetxt(tmp_path / "half.csv", np.array([[12.5, 13.5, 0.49, 254.6, 0.0]]), fmt if "." in fmt else "%.2f")
    np.testing.assert_array_equal(read_pixel_csv(half), np.rint(np.loadtxt(half, delimiter=",", ndmin=2)))


def test_non_integral_values_are_rounded_like_rint(tmp_path, chunks):
    vals = np.array([[12.5, 13.5, 12.51, 0.5, 0.49, 254.6, 1.5, 0.0, 99.5, 100.5, 7.25, 255.0]])
    for fmt in ["%.2f", "%.1f", "%.18e", "%e", "%g", "%.3e"]:
        path = savetxt(tmp_path / "input.csv", vals, fmt)
        np.testing.assert_array_equal(read_pixel_csv(path), np.rint(np.loadtxt(path, delimiter=",", ndmin=2)), err_msg=fmt)
    (tmp_path / "small.csv").write_text("9.9e-02,5.0e-01,5.1e-01,4.99e-01,2.55e+02,0.0e+00,1.0e-05,2.5e+00\n")
    np.testing.assert_array_equal(read_pixel_csv(tmp_path / "small.csv"), [[0, 0, 1, 0, 255, 0, 0, 2]])


@pytest.mark.parametrize("fmt", ["%d", "%.1f", "%.18e"])
def test_line_endings_bom_and_trailing_lines(tmp_path, fmt, chunks):
    x = pixels(5, 6)
    text = (tmp_path / "base.csv").write_text("") or None
    savetxt(tmp_path / "base.csv", x, fmt)
    text = (tmp_path / "base.csv").read_bytes()
    assert text.endswith(b"\n")
    variants = {
        "crlf": text.replace(b"\n", b"\r\n"),
        "bom": b"\xef\xbb\xbf" + text,
        "bom-crlf": b"\xef\xbb\xbf" + text.replace(b"\n", b"\r\n"),
        "no-final-newline": text.rstrip(b"\n"),
        "blank-tail": text + b"\n\n  \n",
        "crlf-blank-tail": text.replace(b"\n", b"\r\n") + b"\r\n\r\n",
        "cr-only": text.replace(b"\n", b"\r"),
    }
    for name, content in variants.items():
        (tmp_path / "input.csv").write_bytes(content)
        np.testing.assert_array_equal(read_pixel_csv(tmp_path / "input.csv"), x, err_msg=name)


def test_spaces_and_odd_but_valid_numbers(tmp_path, chunks):
    (tmp_path / "input.csv").write_text("1, 2 ,3\n+4,5.,.6e1\n007,8.0,-0\n")
    np.testing.assert_array_equal(read_pixel_csv(tmp_path / "input.csv"), [[1, 2, 3], [4, 5, 6], [7, 8, 0]])


# ------------------------------------------------------------------------------------ errors


def damaged(tmp_path: Path, fmt: str, line: int, fn, n: int = 8, d: int = 10) -> Path:
    """An input.csv in ``fmt`` whose line ``line`` (1-based) is replaced by fn(fields)."""
    path = savetxt(tmp_path / "input.csv", pixels(n, d), fmt)
    lines = path.read_text().splitlines()
    fields = lines[line - 1].split(",")
    lines[line - 1] = ",".join(fn(fields))
    path.write_text("\n".join(lines) + "\n")
    return path


def put(col: int, value: str):
    def fn(fields):
        fields[col - 1] = value
        return fields

    return fn


ERROR_CASES = [
    # (line, change, expected pieces of the message)
    (7, lambda f: f[:-1], ["input.csv line 7: 9 values, expected 10 like line 1", "whole image"]),
    (4, lambda f: f + ["1"], ["input.csv line 4: 11 values, expected 10"]),
    (3, put(2, "abc"), ["input.csv line 3, column 2: 'abc' is not a number", "0-255"]),
    (5, put(2, "300"), ["input.csv line 5, column 2: 300 is outside 0-255", "rescale"]),
    (8, put(10, "-1"), ["input.csv line 8, column 10: -1 is outside 0-255"]),
    (2, put(7, "nan"), ["input.csv line 2, column 7:", "NaN"]),
    (6, put(1, "inf"), ["input.csv line 6, column 1:", "infinite"]),
    (4, lambda f: f + [""], ["input.csv line 4, column 11: trailing comma"]),
    (3, put(5, ""), ["input.csv line 3, column 5: empty value"]),
    (5, put(3, "255.5"), ["input.csv line 5, column 3: 255.5 is outside 0-255"]),
    (6, put(4, "1.2.3"), ["input.csv line 6, column 4: '1.2.3' is not a number"]),
    (2, put(9, "1e999"), ["input.csv line 2, column 9:", "infinite"]),
    (8, put(1, "3e+02"), ["input.csv line 8, column 1: 300 is outside 0-255"]),
    (1, put(1, "p0"), ["input.csv line 1, column 1: 'p0' is not a number", "header"]),
    (3, lambda f: ["12;13"] + f[1:], ["input.csv line 3, column 1: '12;13' is not a number", "commas"]),
]


@pytest.mark.parametrize("fmt", ["%d", "%.1f", "%.18e"])
@pytest.mark.parametrize("case", range(len(ERROR_CASES)))
def test_errors_name_line_and_column(tmp_path, fmt, case, chunks):
    line, fn, pieces = ERROR_CASES[case]
    path = damaged(tmp_path, fmt, line, fn)
    with pytest.raises(DataError) as e:
        read_pixel_csv(path)
    msg = message(e)
    for p in pieces:
        assert p in msg, (p, msg)


def test_first_error_wins(tmp_path, chunks):
    x = pixels(30, 10)
    path = savetxt(tmp_path / "input.csv", x)
    lines = path.read_text().splitlines()
    lines[11] = "1," + lines[11]  # line 12: too long
    lines[25] = lines[25].replace(",", ",x", 1)  # line 26: not a number
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"^input\.csv line 12: 11 values"):
        read_pixel_csv(path)


def test_blank_line_in_the_middle(tmp_path, chunks):
    path = savetxt(tmp_path / "input.csv", pixels(6, 4))
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3] + [""] + lines[3:]) + "\n")
    with pytest.raises(DataError, match=r"input\.csv line 4: blank line"):
        read_pixel_csv(path)


def test_empty_and_missing_files(tmp_path):
    for content in [b"", b"\n\n", b"\xef\xbb\xbf", b"  \r\n"]:
        (tmp_path / "input.csv").write_bytes(content)
        with pytest.raises(DataError, match=r"^input\.csv: file is empty — "):
            read_pixel_csv(tmp_path / "input.csv")
    with pytest.raises(DataError, match=r"^input_test\.csv: no such file") as e:
        read_pixel_csv(tmp_path / "input_test.csv")
    assert str(tmp_path) in message(e)
    with pytest.raises(DataError, match="folder"):
        read_pixel_csv(tmp_path)
    (tmp_path / "input.csv").write_bytes("1,2\n".encode("utf-16"))
    with pytest.raises(DataError, match="UTF-16"):
        read_pixel_csv(tmp_path / "input.csv")


def test_error_far_into_a_big_file_is_located(tmp_path, monkeypatch):
    monkeypatch.setattr(seed_csv, "_CHUNK", 4096)
    x = pixels(300, 48)
    path = savetxt(tmp_path / "input.csv", x, "%.1f")
    lines = path.read_text().splitlines()
    fields = lines[286].split(",")
    fields[1] = "256.0"  # line 287, column 2
    lines[286] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"^input\.csv line 287, column 2: 256 is outside 0-255"):
        read_pixel_csv(path)


# ------------------------------------------------------------------------------------ labels


def test_labels_numeric(tmp_path):
    for fmt in ["%d", "%.1f", "%.18e"]:
        np.savetxt(tmp_path / "labels.csv", np.array([1, 0, 2, 1]), fmt=fmt)
        y = read_label_csv(tmp_path / "labels.csv", expected_rows=4)
        assert y.dtype == np.int64
        assert y.tolist() == [1, 0, 2, 1]
    (tmp_path / "labels.csv").write_bytes(b"\xef\xbb\xbf3\r\n4\r\n\r\n")
    assert read_label_csv(tmp_path / "labels.csv").tolist() == [3, 4]


def test_labels_class_names(tmp_path):
    (tmp_path / "labels.csv").write_text("cat\ndog\n 1 \n\"bird\"\ncat\n")
    y = read_label_csv(tmp_path / "labels.csv", 5)
    assert y.dtype.kind == "U"
    assert y.tolist() == ["cat", "dog", "1", "bird", "cat"]


def test_label_errors(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_text("1\n0\n1\n")
    with pytest.raises(DataError) as e:
        read_label_csv(p, expected_rows=4, data_file="input.csv")
    assert message(e) == (
        "labels.csv has 3 labels but input.csv has 4 images — each image needs exactly one label (one per line)"
    )
    p.write_text("1\n0.5\n1\n")
    with pytest.raises(DataError, match=r"^labels\.csv line 2: '0\.5' is not a whole number"):
        read_label_csv(p)
    p.write_text("1\nnan\n")
    with pytest.raises(DataError, match=r"^labels\.csv line 2: 'nan'"):
        read_label_csv(p)
    p.write_text("1\n0,1\n1\n")
    with pytest.raises(DataError, match=r"^labels\.csv line 2: 2 values, expected one label"):
        read_label_csv(p)
    p.write_text("1\n\n1\n")
    with pytest.raises(DataError, match=r"^labels\.csv line 2: empty label"):
        read_label_csv(p)
    p.write_text("\n\n")
    with pytest.raises(DataError, match=r"^labels\.csv: file is empty"):
        read_label_csv(p)
    with pytest.raises(DataError, match=r"^labels_test\.csv: no such file"):
        read_label_csv(tmp_path / "labels_test.csv")


def test_write_labels_round_trip(tmp_path):
    write_label_csv(tmp_path / "labels.csv", np.array([3, 1, 2]))
    assert (tmp_path / "labels.csv").read_text() == "3\n1\n2\n"
    assert read_label_csv(tmp_path / "labels.csv").tolist() == [3, 1, 2]
    write_label_csv(tmp_path / "labels.csv", ["cat", "dog"])
    assert read_label_csv(tmp_path / "labels.csv", 2).tolist() == ["cat", "dog"]
    write_label_csv(tmp_path / "labels.csv", np.array([1.0, 2.0]))
    assert (tmp_path / "labels.csv").read_text() == "1\n2\n"
    with pytest.raises(DataError):
        write_label_csv(tmp_path / "labels.csv", ["a,b"])


# ------------------------------------------------------------------------------------ shapes


def test_infer_image_shape():
    assert infer_image_shape(30000) == (100, 100, 3)
    assert infer_image_shape(3 * 32 * 32) == (32, 32, 3)
    assert infer_image_shape(28 * 28) == (28, 28, 1)
    assert infer_image_shape(1) == (1, 1, 1)
    assert infer_image_shape(3) == (1, 1, 3)
    assert infer_image_shape(30000, (50, 200, 3)) == (50, 200, 3)
    assert infer_image_shape(20, [4, 5, 1]) == (4, 5, 1)
    with pytest.raises(DataError) as e:
        infer_image_shape(30001)
    assert message(e) == "input.csv: 30001 values per row fit no square RGB or greyscale image — pass --image-shape H,W,C"
    with pytest.raises(DataError) as e:
        infer_image_shape(50, (5, 5, 3), path="data/input_test.csv")
    assert "input_test.csv" in message(e) and "50" in message(e) and "75" in message(e)
    with pytest.raises(DataError):
        infer_image_shape(0)
    with pytest.raises(DataError):
        infer_image_shape(12, (0, 4, 3))


# ------------------------------------------------------------------------------------ cache


def test_cache_second_call_does_not_parse(tmp_path, monkeypatch):
    x = pixels(6, 12)
    path = savetxt(tmp_path / "input.csv", x, "%.1f")
    cache = tmp_path / "cache"
    first = load_pixel_csv_cached(path, cache)
    np.testing.assert_array_equal(first, x)
    assert len(list(cache.glob("*.npy"))) == 1

    def boom(p):
        raise AssertionError("parsed again")

    monkeypatch.setattr(seed_csv, "read_pixel_csv", boom)
    second = load_pixel_csv_cached(path, cache)
    assert isinstance(second, np.memmap) and second.dtype == np.uint8
    np.testing.assert_array_equal(second, x)


def test_cache_is_invalidated_by_a_change(tmp_path):
    cache = tmp_path / "cache"
    path = savetxt(tmp_path / "input.csv", pixels(6, 12))
    load_pixel_csv_cached(path, cache)
    st = path.stat()
    y = pixels(6, 12, seed=5)
    savetxt(path, y)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    np.testing.assert_array_equal(load_pixel_csv_cached(path, cache), y)
    assert len(list(cache.glob("*.npy"))) == 1  # the stale entry was replaced, not kept


def test_cache_env_var_and_corrupt_entry(tmp_path, monkeypatch):
    cache = tmp_path / "envcache"
    monkeypatch.setenv("CNNLAB_CACHE", str(cache))
    x = pixels(3, 3)
    path = savetxt(tmp_path / "input.csv", x)
    load_pixel_csv_cached(path)
    (entry,) = cache.glob("*.npy")
    entry.write_bytes(b"garbage")
    np.testing.assert_array_equal(load_pixel_csv_cached(path), x)
    np.testing.assert_array_equal(np.load(entry), x)  # rewritten


def test_unwritable_cache_is_silently_skipped(tmp_path):
    x = pixels(3, 3)
    path = savetxt(tmp_path / "input.csv", x)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    np.testing.assert_array_equal(load_pixel_csv_cached(path, blocker / "cache"), x)
    np.testing.assert_array_equal(load_pixel_csv_cached(path, blocker), x)


def test_cache_passes_errors_through(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_pixel_csv_cached(tmp_path / "input.csv", tmp_path / "cache")
    path = damaged(tmp_path, "%d", 3, put(2, "abc"))
    with pytest.raises(DataError, match="line 3, column 2"):
        load_pixel_csv_cached(path, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.npy")) if (tmp_path / "cache").exists() else True


# ------------------------------------------------------------------------------------ property


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    x=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=24)),
    fmt=st.sampled_from(FORMATS),
    crlf=st.booleans(),
    bom=st.booleans(),
    final_newline=st.booleans(),
    chunk=st.sampled_from([7, 64, 1 << 21]),
)
def test_random_arrays_read_back(tmp_path, x, fmt, crlf, bom, final_newline, chunk):
    text = "".join(",".join(fmt % v for v in row) + "\n" for row in x.tolist())
    if not final_newline:
        text = text[:-1]
    if crlf:
        text = text.replace("\n", "\r\n")
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode()
    path = tmp_path / "prop.csv"
    path.write_bytes(data)
    old = seed_csv._CHUNK, seed_csv._SCI_TOKENS
    seed_csv._CHUNK, seed_csv._SCI_TOKENS = chunk, max(1, chunk // 4)
    try:
        got = read_pixel_csv(path)
    finally:
        seed_csv._CHUNK, seed_csv._SCI_TOKENS = old
    np.testing.assert_array_equal(got, x)
