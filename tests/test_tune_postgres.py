"""Two `cnnlab tune` processes share one study on a real PostgreSQL server (Debian's, started here).

The fixture finds Debian's PostgreSQL binaries (installing the `postgresql` package with apt-get when they
are missing and we are root, as .ci/run does), runs initdb into a temporary folder, starts the server on
127.0.0.1 on a free port with its socket in that folder, and stops it afterwards.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("optuna")
pytest.importorskip("psycopg")

DATA = "builtin:shapes?n=200&size=32"
SPACE = "model: seed_cnn\nwidth: {choices: [8, 16]}\nlr: {low: 1.0e-3, high: 1.0e-2, log: true}\n"


def _pg_bindir() -> Path | None:
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0, reverse=True):
        if (Path(d) / "initdb").is_file() and (Path(d) / "pg_ctl").is_file():
            return Path(d)
    initdb = shutil.which("initdb")
    return Path(os.path.realpath(initdb)).parent if initdb else None


def _ensure_pg() -> Path:
    bindir = _pg_bindir()
    if bindir is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=False, capture_output=True, env=env, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], check=False, capture_output=True, env=env, timeout=600)
        bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (Debian: apt-get install postgresql; .ci/run installs it)")
    return bindir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    bindir = _ensure_pg()
    # initdb and postgres refuse to run as root: run them as the `postgres` user the Debian package creates
    as_user: list[str] = []
    root = tempfile.mkdtemp(prefix="cnnlab-pg-")
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: cannot start PostgreSQL as an unprivileged user")
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
    data, port = Path(root) / "data", _free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "cnnlab", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True, timeout=120)
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", f"{root}/server.log", "-o", opts, "-w", "-t", "60", "start"],
                           capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, (start.stdout, start.stderr, Path(root, "server.log").read_text() if Path(root, "server.log").exists() else "")
    try:
        yield f"postgresql://cnnlab@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def _tune(url: str, out: Path, space: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cnnlab", "tune", "--data", DATA, "--trials", "2", "--epochs", "1", "--space", str(space),
           "--storage", url, "--study", "shared", "--pruner", "none", "--out", str(out), "--json", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_share_one_study(postgres_url, tmp_path):
    import optuna

    from cnnlab.config import config_from_dict, load_config_file

    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    a = _tune(postgres_url, tmp_path / "a", space)
    deadline = time.monotonic() + 120
    while "shared" not in optuna.study.get_all_study_names(postgres_url):  # A has created the study: B joins it
        assert a.poll() is None, a.communicate()
        assert time.monotonic() < deadline, "process A never created the study"
        time.sleep(0.5)
    b = _tune(postgres_url, tmp_path / "b", space, "--resume")
    outs = []
    for p in (a, b):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        outs.append(json.loads(out))
    assert [o["ran"] for o in outs] == [2, 2]
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    trials = study.get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # the counts add up
    assert all(t.state.name == "COMPLETE" for t in trials)
    # no trial ran twice: each trial number has exactly one run folder, in exactly one process's folder
    dirs_a = {p.name for p in (tmp_path / "a" / "trials").iterdir()}
    dirs_b = {p.name for p in (tmp_path / "b" / "trials").iterdir()}
    assert len(dirs_a) == 2 and len(dirs_b) == 2 and not dirs_a & dirs_b
    assert dirs_a | dirs_b == {"0000", "0001", "0002", "0003"}
    # the process that finished last wrote the study-wide table and the best config, which loads
    def states(d: Path) -> list[str]:
        with open(d / "trials.csv", newline="") as f:
            return [row["state"] for row in csv.DictReader(f)]

    last = [d for d in (tmp_path / "a", tmp_path / "b") if states(d) == ["complete"] * 4]
    assert last, (states(tmp_path / "a"), states(tmp_path / "b"))
    last = last[0]
    best = config_from_dict(load_config_file(last / "best_config.yaml"), source="best_config.yaml").validate()
    assert best.to_dict() == study.best_trial.user_attrs["config"]
    assert "postgresql://cnnlab@127.0.0.1" in outs[0]["storage"]


def test_resume_of_a_missing_study_on_the_server_is_a_clean_error(postgres_url, cli, tmp_path):
    from test_errors import assert_clean_error

    r = cli("tune", "--data", DATA, "--trials", "1", "--storage", postgres_url, "--study", "nope", "--resume", "--out", str(tmp_path / "t"))
    assert_clean_error(r, "no study named 'nope'")
