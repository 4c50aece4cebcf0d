"""A core install (no extras) trains, evaluates and predicts; a command whose extra is missing says which
`pip install` adds it (exit 2). A real `cnnlab` process runs on this venv's packages minus the extras' (as if they
were not installed); .ci/run also installs the core alone into a fresh venv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

# the extras' top-level packages (and their distributions' metadata), by name prefix
EXTRA_PACKAGES = ("fastapi", "uvicorn", "httptools", "uvloop", "multipart", "python_multipart", "prometheus_client", "optuna",
                  "onnx", "openvino", "tensorboard", "mlflow")
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def core_site(tmp_path_factory) -> Path:
    """This venv's site-packages without the extras: a folder of links to everything else."""
    site, shadow = Path(sysconfig.get_paths()["purelib"]), tmp_path_factory.mktemp("site")
    for entry in site.iterdir():
        name = entry.name.lower().replace("-", "_")
        if not name.startswith(EXTRA_PACKAGES) and not name.endswith(".pth") and not name.startswith("__editable__"):
            (shadow / entry.name).symlink_to(entry)
    return shadow


def core(core_site, *args, cwd):
    """`cnnlab ARGS` in a Python that sees only the core packages (no site.py: nothing adds the full site-packages)."""
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{core_site}"}
    code = ("import sys\nfrom cnnlab.cli import main\ncode = main(sys.argv[1:])\n"
            f"assert not any(m.split('.')[0].startswith({EXTRA_PACKAGES!r}) for m in sys.modules), 'an extra was imported'\n"
            "sys.exit(code)")
    p = subprocess.run([sys.executable, "-S", "-c", code, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    return p.returncode, p.stdout, p.stderr


def test_the_core_python_really_lacks_the_extras(core_site, tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{core_site}"}
    p = subprocess.run([sys.executable, "-S", "-c", "import fastapi"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert p.returncode == 1 and "No module named 'fastapi'" in p.stderr


@pytest.fixture(scope="module")
def run(tmp_path_factory, core_site):
    d = tmp_path_factory.mktemp("core")
    code, out, err = core(core_site, "train", "--data", "builtin:digits", "--model", "seed_cnn", "--epochs", "1", "--out", d / "run", "--quiet", cwd=d)
    assert code == 0, err
    return d / "run"


def test_core_trains_evaluates_predicts_and_explains(run, tmp_path, core_site):
    code, out, err = core(core_site, "evaluate", run, "--data", "builtin:digits", "--json", cwd=tmp_path)
    assert code == 0 and json.loads(out)["accuracy"] > 0.3, err
    code, out, err = core(core_site, "predict", run, "--data", "builtin:digits", "--random", "--json", "--out", tmp_path / "p.png", cwd=tmp_path)
    assert code == 0 and "class" in json.loads(out), err
    assert (run / "report.html").is_file() and not (run / "tensorboard").exists()  # tracking is off without its package


@pytest.mark.parametrize("args, extra", [
    (("serve", "{run}"), "serve"),
    (("export", "{run}", "--format", "onnx"), "export"),
    (("tune", "--data", "builtin:digits", "--trials", "1", "--out", "t"), "tune"),
])
def test_a_command_whose_extra_is_missing_says_which_pip_install_adds_it(run, tmp_path, core_site, args, extra):
    code, out, err = core(core_site, *(a.format(run=run) for a in args), cwd=tmp_path)
    assert code == 2 and f"pip install 'cnnlab[{extra}]'" in err and err.count("\n") == 1, (code, err)
