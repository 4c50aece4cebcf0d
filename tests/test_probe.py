"""The probe (issue #21): 100+ bad and awkward inputs — data, command line, model files, signals, the server — each
asserting the exit code (HTTP status), a one-line message that names the thing and the fix, no traceback or
"internal error", and that no file that existed before the command changed. The cases are rows in
tests/probe_cases.py; RELIABILITY.md's probe table is generated from them (and checked here). Run: `make probe`.

Commands run in-process (the `main` of the CLI, as tests/conftest.py's `cli` fixture does); a signal case's hook sends
the signal to this process at a chosen call. Two cases need a real process: SIGKILL, and Ctrl-C to a running server.
PROBE_SHOW=FILE appends each command's exit code and stderr to FILE (to read every message at once)."""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import importlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file

from cnnlab.cli import main
from probe_cases import ALL, AREAS, CASES, RUN2, SERVER_CASES, SHAPES, TINY, Case, Shared, markdown_table

pytestmark = pytest.mark.usefixtures("one_thread")


@contextmanager
def signals_at(hook: str, at: int, names: tuple[str, ...]):
    """Send the signals `names` to this process on the `at`-th call of `hook` ("module:attr.path"), before the call runs.
    SIGTERM's default action (ending the process) is an exception here, for the commands that install no handler."""
    module_name, attr = hook.split(":")
    owner = importlib.import_module(module_name)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    real, calls = getattr(owner, name), [0]

    def hooked(*args, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            for sig in names:
                os.kill(os.getpid(), getattr(signal, sig))  # (Python runs the handler before the next line)
        return real(*args, **kwargs)

    class Terminated(Exception):
        pass

    def default_term(signum, frame):
        raise Terminated()

    setattr(owner, name, hooked)
    old = signal.signal(signal.SIGTERM, default_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
        setattr(owner, name, real)
    assert calls[0] >= at, f"{hook} was called {calls[0]} times, never the {at}th"


def run_cli(command: str, capsys) -> tuple[int, str, str]:
    try:
        code = main(shlex.split(command))
    except SystemExit as e:  # argparse
        code = e.code if isinstance(e.code, int) else 1
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture(scope="module")
def shared(tmp_path_factory, one_thread) -> Shared:
    """One tiny trained run, a copy with its ONNX export, and an interrupted RUN2; cases copy them into their folders."""
    base = tmp_path_factory.mktemp("probe-shared")
    run, onnx_run, interrupted = base / "run", base / "onnx-run", base / "interrupted"
    assert main(["train", "--data", SHAPES, *shlex.split(TINY), "--out", str(run)]) == 0
    shutil.copytree(run, onnx_run)
    assert main(["export", str(onnx_run), "--format", "onnx"]) == 0
    with signals_at("cnnlab.engine.trainer:train_step", 2, ("SIGINT",)):
        assert main([*shlex.split(RUN2), "--out", str(interrupted)]) == 130
    return Shared(run, onnx_run, interrupted)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread) -> dict:
    """The weights of RUN2, uninterrupted, in this process's settings (one thread, --deterministic)."""
    out = tmp_path_factory.mktemp("probe-reference") / "run"
    assert main([*shlex.split(RUN2), "--out", str(out)]) == 0
    return load_file(out / "model.safetensors")


# ------------------------------------------------------------------ what every case checks


def snapshot(root: Path) -> dict[str, str]:
    """Every file, folder and link under root (links not followed) -> a digest of what it is."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_nothing_else_changed(before: dict, after: dict, allowed: tuple[str, ...], created_ok: bool) -> None:
    def ok(rel: str) -> bool:
        return any(fnmatch.fnmatch(rel, pattern) for pattern in allowed)

    changed = [rel for rel, digest in before.items() if after.get(rel) != digest and not ok(rel)]
    created = [rel for rel in after if rel not in before and not ok(rel) and not created_ok]
    assert not changed, f"files that existed before changed or went: {changed}"
    assert not created, f"a failing command created: {created}"
    assert "PWNED" not in after, "a payload ran"


def check_output(case: Case, code: int, out: str, err: str) -> None:
    if os.environ.get("PROBE_SHOW"):
        with open(os.environ["PROBE_SHOW"], "a", encoding="utf-8") as f:
            f.write(f"@@ {case.id} exit {code}\n{out.strip()[-300:]}\n{err.strip()[-600:]}\n")
    assert code == case.code, f"exit {code}, expected {case.code}\nstdout: {out[-800:]}\nstderr: {err[-1500:]}"
    assert "Traceback" not in out + err and "internal error" not in out + err, err[-1500:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if case.code in (1, 2):  # an error: one line, and it says what and where
        assert len(lines) == 1 and lines[0].startswith("error: "), f"not one error line:\n{err[-1500:]}"
        assert re.search(case.message, lines[0]), f"{case.message!r} not in\n{lines[0]}"
    else:  # 0, 130, 143: the message anywhere in the output
        assert re.search(case.message, out + err, re.M), f"{case.message!r} not in\nstdout: {out[-800:]}\nstderr: {err[-800:]}"


@contextmanager
def held_locks(case: Case, root: Path):
    """Hold the run-folder locks the case's setup marked, as another process would (an flock on another descriptor)."""
    fds = []
    for step in case.setup:
        if getattr(step, "holds_lock", None):
            fd = os.open(root / step.holds_lock / ".lock", os.O_RDWR)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fds.append(fd)
    try:
        yield
    finally:
        for fd in fds:
            os.close(fd)


def assert_bit_identical(model_file: Path, reference: dict) -> None:
    got = load_file(model_file)
    assert got.keys() == reference.keys() and all(torch.equal(got[k], reference[k]) for k in got), "the resumed run's weights differ"


class ServerStarted(Exception):
    """A serve case got as far as starting the server: its bad input was not refused."""


def _never_serve(*args, **kwargs):
    raise ServerStarted()


def _marks(case: Case):
    return [pytest.mark.xfail(reason=f"open: {case.open}", strict=True)] if case.open else []


# ------------------------------------------------------------------ the cases


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=_marks(c)) for c in ALL if not c.process and c.request is None])
def test_command(case: Case, shared, reference, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("cnnlab.serve.connections.run_uvicorn", _never_serve)
    for step in case.setup:
        step(tmp_path, shared)
    before = snapshot(tmp_path)
    with held_locks(case, tmp_path), (signals_at(case.hook, case.at, case.signals) if case.hook else _nothing()):
        code, out, err = run_cli(case.command, capsys)
    check_output(case, code, out, err)
    assert_nothing_else_changed(before, snapshot(tmp_path), case.changes, created_ok=case.code == 0)
    if case.then:
        then = run_cli(case.then, capsys)
        assert then[0] == 0, then
    if case.identical:
        assert_bit_identical(tmp_path / "run" / "model.safetensors", reference)


@contextmanager
def _nothing():
    yield


def test_a_killed_training_process_resumes_bit_identical(reference, tmp_path, monkeypatch, capsys):
    [case] = [c for c in CASES if c.id == "signal-kill-process-resume"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # the reference's thread count
    p = subprocess.Popen([sys.executable, "-m", "cnnlab", *shlex.split(case.command)], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while p.poll() is None and not (tmp_path / "run" / "last.ckpt").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    if p.returncode == 0:
        pytest.skip("training finished before SIGKILL arrived")
    assert p.returncode == case.code
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(case.then, capsys)
    assert code == 0 and "Traceback" not in err and "internal error" not in err, err
    assert_bit_identical(tmp_path / "run" / "model.safetensors", reference)


def test_ctrl_c_stops_a_real_server_cleanly(shared, tmp_path):
    [case] = [c for c in CASES if c.id == "signal-int-process-serve"]
    for step in case.setup:
        step(tmp_path, shared)
    before = snapshot(tmp_path)
    p = subprocess.Popen([sys.executable, "-m", "cnnlab", *shlex.split(case.command)], cwd=tmp_path,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()  # "serving run (...) on http://127.0.0.1:PORT/ ..." once it listens
        assert "serving run" in line, line
        url = line.split(" on ", 1)[1].split()[0].rstrip("/")
        assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    check_output(case, p.returncode, line + out, err)
    assert_nothing_else_changed(before, snapshot(tmp_path), (), created_ok=False)


# ------------------------------------------------------------------ the server


@pytest.fixture(scope="module")
def server(shared, tmp_path_factory):
    from cnnlab.serve.app import ServeConfig, create_app
    from test_serve import live_server

    served = tmp_path_factory.mktemp("probe-served") / "run"
    shutil.copytree(shared.run, served)
    cfg = ServeConfig(model=str(served), backend="torch", max_upload_bytes=200_000, max_pixels=1_000_000, max_images_per_request=3)
    with live_server(create_app(cfg)) as url:
        yield url, served


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=_marks(c)) for c in SERVER_CASES if c.request is not None])
def test_request(case: Case, server):
    url, served = server
    before = snapshot(served)
    method, path, kwargs = case.request()
    with httpx.Client(base_url=url, timeout=60) as client:
        r = client.request(method, path, **kwargs)
    if os.environ.get("PROBE_SHOW"):
        with open(os.environ["PROBE_SHOW"], "a", encoding="utf-8") as f:
            f.write(f"@@ {case.id} HTTP {r.status_code}\n{r.text[:400]}\n")
    assert r.status_code == case.code, (r.status_code, r.text[:500])
    if r.status_code >= 400:  # a JSON error body whose detail says what was wrong
        detail = r.json()["detail"]
        assert re.search(case.message, str(detail)), f"{case.message!r} not in {detail!r}"
    else:
        assert re.search(case.message, r.text), f"{case.message!r} not in {r.text[:500]!r}"
    assert snapshot(served) == before


# ------------------------------------------------------------------ the table, and the helper that keeps library text whole


def test_the_probe_has_100_cases_in_every_area_with_unique_ids():
    ids = [c.id for c in ALL]
    assert len(ids) == len(set(ids)) and len(ids) >= 100, len(ids)
    assert {c.area for c in ALL} == set(AREAS) and all(c.id.startswith(c.area.split("-")[0]) for c in ALL)


def test_reliability_md_holds_the_generated_table():
    text = (Path(__file__).parents[1] / "RELIABILITY.md").read_text(encoding="utf-8")
    assert markdown_table() in text, "RELIABILITY.md's probe table is out of date: `python tests/probe_cases.py` prints it"


def test_first_line_keeps_whole_words():
    from cnnlab.errors import first_line

    long = RuntimeError("Calculated padded input size per channel: (2 x 2). Kernel size: (9 x 9). Kernel size can't be greater\n"
                        "than actual input size")
    assert first_line(long, 60) == "Calculated padded input size per channel: (2 x 2). Kernel …"
    assert first_line(long, 200) == str(long).splitlines()[0]  # short enough: whole, first line only
    assert first_line(ValueError("  "), 10) == "ValueError"
    assert first_line(OSError("a" * 50), 20) == "a" * 20 + " …"  # one long word: cut where it must be
