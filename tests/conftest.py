"""Tiny generated datasets and a CLI runner. No test depends on ../shared data."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ["CNNLAB_CACHE"] = tempfile.mkdtemp(prefix="cnnlab-test-cache-")  # never touch the user cache

from cnnlab.cli import main  # noqa: E402
from cnnlab.data.builtin import make_shapes  # noqa: E402


def two_class_images(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Easy, deterministic two-class images: class 1 has a bright square, class 0 a dark one."""
    x, y, _ = make_shapes(n=n, size=size, classes=2, seed=seed)
    return x, y


def write_seed_csv(folder: Path, n_train: int = 160, n_test: int = 40, size: int = 32, fmt: str = "%d", classes: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    x, y = two_class_images(n_train + n_test, size)
    flat = x.reshape(len(x), -1)
    np.savetxt(folder / "input.csv", flat[:n_train], delimiter=",", fmt=fmt)
    np.savetxt(folder / "labels.csv", y[:n_train], fmt=fmt)
    if n_test:
        np.savetxt(folder / "input_test.csv", flat[n_train:], delimiter=",", fmt=fmt)
        np.savetxt(folder / "labels_test.csv", y[n_train:], fmt=fmt)
    return folder


def write_image_folder(root: Path, n_per_class: int = 30, size: int = 40, exts=(".png", ".jpg")) -> Path:
    x, y, names = make_shapes(n=2 * n_per_class, size=size, classes=2, seed=1)
    for i, (img, label) in enumerate(zip(x, y)):
        d = root / names[label]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"img{i:03d}{exts[i % len(exts)]}")
    return root


@pytest.fixture(scope="session", autouse=True)
def absl_logs_to_the_real_stderr():
    """TensorBoard (on in every training run where it is installed) imports absl, whose log handler keeps the
    sys.stderr of that moment: under pytest, one test's capture file, closed when that test ends, so a later run's
    absl log line (or the interpreter's exit) would write into a closed file. Point it at the real stderr once."""
    try:
        import absl.logging
    except ImportError:
        yield
        return
    absl.logging.get_absl_handler().python_handler.stream = sys.__stderr__
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny nets on a shared 2-core machine run much faster on one thread (no OpenMP spin contention)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def seed_dir(tmp_path: Path) -> Path:
    return write_seed_csv(tmp_path / "seed")


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "imgs")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, seed data folder) of one short seed_cnn run, shared by evaluate/predict tests."""
    base = tmp_path_factory.mktemp("trained")
    data = write_seed_csv(base / "data", n_train=200, n_test=60)
    run = base / "run"
    code = main(["train", "--model", "seed_cnn", "--data", str(data), "--epochs", "3", "--batch-size", "32", "--out", str(run), "--quiet", "--classes", "circle,square"])
    assert code == 0
    return run, data


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, out={self.out[-500:]!r}, err={self.err[-500:]!r})"


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process (fast); returns exit code, stdout, stderr."""

    def run(*args: str) -> CliResult:
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse usage errors
            code = e.code if isinstance(e.code, int) else 1
        cap = capsys.readouterr()
        return CliResult(code, cap.out, cap.err)

    return run


def run_subprocess(*args: str, cwd: Path | None = None, timeout: float = 300) -> CliResult:
    """Run `python -m cnnlab` as a user would (real process, real exit code)."""
    p = subprocess.run([sys.executable, "-m", "cnnlab", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout)
    return CliResult(p.returncode, p.stdout, p.stderr)


def start_http_server(handler_class) -> tuple[str, object]:
    """A threaded HTTP server on 127.0.0.1 (a free port) for download tests: (its URL, an idempotent stop)."""
    import http.server
    import threading

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    stopped: list[bool] = []

    def stop() -> None:
        if not stopped:
            stopped.append(True)
            httpd.shutdown()
            httpd.server_close()

    return f"http://127.0.0.1:{httpd.server_address[1]}", stop
