"""A run folder belongs to one process (issue #21 item 1): two trainings into one --out at once, or a --resume of a
run another process is still writing, end in a clear error for the second (exit 2) instead of a run silently lost;
auto-numbered folders never collide; a lock a killed process left is reported and taken over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from cnnlab.engine import run_dir as rd

ARGS = ("--data", "builtin:digits", "--image-size", "16", "--model", "seed_cnn", "--quiet")


def _start(*args, cwd):
    return subprocess.Popen([sys.executable, "-m", "cnnlab", "train", *map(str, args)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_two_trainings_into_one_folder_at_once_one_wins_the_other_is_told(tmp_path):
    procs = [_start(*ARGS, "--epochs", "3", "--seed", str(s), "--out", "runs/race", cwd=tmp_path) for s in (1, 2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    loser = next(r for r in results if r[0] == 2)
    assert "in use by another cnnlab process" in loser[2] and loser[2].count("\n") == 1, loser
    info = json.loads((tmp_path / "runs" / "race" / "run.json").read_text())
    winner_seed = 1 + [r[0] for r in results].index(0)
    assert info["status"] == "completed" and info["seed"] == winner_seed  # the folder holds the run that said so


def test_a_second_start_while_the_first_still_trains_is_refused(tmp_path):
    first = _start(*ARGS, "--epochs", "30", "--out", "runs/busy", cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not (tmp_path / "runs" / "busy" / "run.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.run([sys.executable, "-m", "cnnlab", "train", *ARGS, "--epochs", "1", "--out", "runs/busy", "--overwrite"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    resume = subprocess.run([sys.executable, "-m", "cnnlab", "train", "--resume", "runs/busy"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    first.kill()
    first.wait()
    assert second.returncode == 2 and "in use by another cnnlab process (process" in second.stderr, second.stderr
    assert resume.returncode == 2 and "in use by another cnnlab process" in resume.stderr, resume.stderr


def test_auto_numbered_runs_started_together_get_their_own_folders(tmp_path):
    procs = [_start(*ARGS, "--epochs", "1", cwd=tmp_path) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    folders = sorted(o.split("run folder: ")[1].split()[0] for o, _ in outs)
    assert folders == ["runs/train", "runs/train2", "runs/train3"]


def test_a_lock_left_by_a_killed_process_is_reported_and_taken_over(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / rd.LOCK).write_text(json.dumps({"pid": 999999, "host": "elsewhere", "started": "2026-12-01T00:00:00"}))
    folder = rd.RunFolder(run)
    note = folder.claim()
    try:
        assert note and "process 999999 on elsewhere" in note and "killed" in note
        assert json.loads((run / rd.LOCK).read_text())["pid"] == os.getpid()
        assert folder.claim() is None  # this process owns it already
    finally:
        rd.release(run)
    assert (run / rd.LOCK).read_text() == ""  # released: no owner, nothing to report next time
    assert rd.RunFolder(run).claim() is None
    rd.release(run)


@pytest.mark.parametrize("existing", [True, False])
def test_an_existing_run_still_needs_overwrite(tmp_path, existing, cli):
    out = tmp_path / "r"
    assert cli("train", *ARGS, "--epochs", "1", "--out", out).code == 0
    r = cli("train", *ARGS, "--epochs", "1", "--out", out, *(["--overwrite"] if existing else []))
    assert (r.code == 0) if existing else (r.code == 2 and "already holds a run" in r.err), r
