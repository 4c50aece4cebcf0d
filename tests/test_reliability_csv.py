"""CSV fuzzing: generated malformed seed CSVs always end in one clean line naming the file (and the line,
for a defect on one line), exit 2, no traceback and no run folder. Valid oddities (BOM, CRLF) load."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_errors import assert_clean_error

N_VALUES = 16  # 4x4 greyscale: tiny, and the shape is inferred

FUZZ = settings(max_examples=int(os.environ.get("CNNLAB_FUZZ_EXAMPLES", "60")), deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

bad_pixel_token = st.one_of(
    st.sampled_from(["nan", "NaN", "-nan", "inf", "-inf", "1e999", "abc", "12abc", "0x10", "--3", "3..0", "#", "\t?"]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_!?", min_size=1, max_size=8),
    st.integers(-10**9, -1).map(str),
    st.integers(256, 10**12).map(str),
    st.floats(min_value=255.01, max_value=1e15).map(repr),
    st.floats(max_value=-0.01, min_value=-1e15).map(repr),
)


@st.composite
def seed_csv_case(draw):
    """(input lines, label lines, defect kind, file the error must name, line it must name or None)."""
    n = draw(st.integers(4, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    rows = [[str(v) for v in rng.integers(0, 256, N_VALUES)] for _ in range(n)]
    labels = [str(i % 2) for i in range(n)]
    row = draw(st.integers(0, n - 1))
    kind = draw(st.sampled_from(["ragged-short", "ragged-long", "bad-value", "empty-value", "trailing-comma",
                                 "empty-input", "empty-labels", "label-count", "bad-label", "blank-label", "negative-label"]))
    file, line = "input.csv", row + 1
    if kind == "ragged-short":
        rows[row] = rows[row][: draw(st.integers(1, N_VALUES - 1))]
        if row == 0:  # line 1 sets the width, so the first full row is the one that disagrees
            line = 2
    elif kind == "ragged-long":
        rows[row] = rows[row] + ["7"] * draw(st.integers(1, 5))
        if row == 0:
            line = 2
    elif kind == "bad-value":
        rows[row][draw(st.integers(0, N_VALUES - 1))] = draw(bad_pixel_token)
    elif kind == "empty-value":
        rows[row][draw(st.integers(0, N_VALUES - 1))] = ""
    elif kind == "trailing-comma":
        rows[row] = rows[row] + [""]  # recognised as a trailing comma even on line 1
    elif kind == "empty-input":
        rows, line = [], None
    elif kind == "empty-labels":
        labels, file, line = [], "labels.csv", None
    elif kind == "label-count":
        labels = labels[:-1] if draw(st.booleans()) else labels + ["1"]
        file, line = "labels.csv", None
    elif kind == "bad-label":
        labels[row] = draw(st.sampled_from(["1.5", "nan", "inf", "0.25"]))
        file = "labels.csv"
    elif kind == "blank-label":
        labels[row] = " "
        file = "labels.csv"
        if row == n - 1:  # trailing blank lines are allowed, so a blank last line is a count mismatch
            line = None
    elif kind == "negative-label":
        labels[row] = "-1"
        file, line = "labels.csv", None
    return [",".join(r) for r in rows], labels, kind, file, line


def _write(folder: Path, rows: list[str], labels: list[str], bom: bool, crlf: bool) -> None:
    nl = "\r\n" if crlf else "\n"
    prefix = "\ufeff" if bom else ""
    (folder / "input.csv").write_text(prefix + "".join(r + nl for r in rows), encoding="utf-8", newline="")
    (folder / "labels.csv").write_text(prefix + "".join(lb + nl for lb in labels), encoding="utf-8", newline="")


@FUZZ
@given(case=seed_csv_case(), bom=st.booleans(), crlf=st.booleans())
def test_fuzzed_seed_csv_is_always_a_clean_error(cli, case, bom, crlf):
    rows, labels, kind, file, line = case
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "data"
        d.mkdir()
        _write(d, rows, labels, bom, crlf)
        run = Path(tmp) / "run"
        r = cli("train", "--model", "seed_cnn", "--data", d, "--epochs", "1", "--out", run, "--quiet")
        needles = [file] + ([f"line {line}"] if line is not None else [])
        assert_clean_error(r, *needles)
        assert not run.exists(), kind  # nothing that looks like a run, finished or not


@settings(max_examples=10, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bom=st.booleans(), crlf=st.booleans(), trailing_blank=st.integers(0, 3))
def test_valid_oddities_load(cli, bom, crlf, trailing_blank):
    """BOM, CRLF and trailing blank lines are how Excel/Windows write CSVs: accepted, same pixels."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (6, N_VALUES))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        _write(d, [",".join(map(str, r)) for r in x] + [""] * trailing_blank, ["0", "1"] * 3, bom, crlf)
        r = cli("data", "check", d)
        assert r.code == 0 and "seed-csv" in r.out, r
        from cnnlab.data.sources import load_dataset

        ds = load_dataset(d, val_split=0)
        assert np.array_equal(ds.train.x.reshape(6, -1), x)


def test_a_fuzzed_error_in_a_real_process_has_no_traceback(tmp_path):
    from conftest import run_subprocess

    d = tmp_path / "d"
    d.mkdir()
    _write(d, ["1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16", "1,2,3,nan,5,6,7,8,9,10,11,12,13,14,15,16"], ["0", "1"], True, True)
    r = run_subprocess("train", "--model", "seed_cnn", "--data", d, "--out", tmp_path / "run")
    assert_clean_error(r, "input.csv", "line 2", "column 4", "NaN")
    assert not (tmp_path / "run").exists()
