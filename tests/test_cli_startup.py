"""`cnnlab --help`, `cnnlab CMD --help` and usage errors answer without importing torch (or numpy, scikit-learn,
matplotlib): commands import what they need when they run."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

HEAVY = ("torch", "numpy", "sklearn", "matplotlib", "rich", "cnnlab.api")


def _run_python(code: str) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON object as its last line."""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_import_and_help_and_usage_errors_leave_heavy_modules_unimported():
    res = _run_python(f"""
import contextlib, io, json, sys
import cnnlab, cnnlab.cli
from cnnlab.cli import build_parser, main
after_import = [m for m in {HEAVY!r} if m in sys.modules]
codes = {{}}
commands = sorted(build_parser()._subparsers._group_actions[0].choices)
runs = [["--help"], ["--version"], ["train", "--help"], ["train", "--epochs", "x"], ["train", "--aug", "wild"],
        ["evaluate"], ["data", "check", "d", "--classes", "cat"], ["data"]] + [[c, "--help"] for c in commands]
for argv in runs:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    codes[" ".join(argv)] = [code, out.getvalue()[:200], err.getvalue()]
print(json.dumps({{"after_import": after_import, "after_runs": [m for m in {HEAVY!r} if m in sys.modules],
                  "codes": codes, "commands": commands}}))
""")
    assert res["after_import"] == [], f"`import cnnlab.cli` imported {res['after_import']}"
    assert res["after_runs"] == [], f"--help / usage errors imported {res['after_runs']}"
    codes = res["codes"]
    assert codes["--help"][0] == 0 and "train" in codes["--help"][1]
    assert codes["--version"][0] == 0 and codes["--version"][1].startswith("cnnlab ")
    for argv in ("train --epochs x", "train --aug wild", "evaluate", "data check d --classes cat"):
        code, _, err = codes[argv]
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "--help" in err, (argv, err)
    assert codes["data"][0] == 2 and "needs an action" in codes["data"][2]
    assert {"train", "evaluate", "predict", "show", "models", "data", "export", "serve", "explain", "summary", "report", "compare",
            "lr-find", "tune"} <= set(res["commands"])
    for command in res["commands"]:
        code, out, _ = codes[f"{command} --help"]
        assert code == 0 and out.startswith(f"usage: cnnlab {command} "), (command, out)


def test_every_data_action_help_works(cli):
    for action in ("convert", "check"):
        r = cli("data", action, "--help")
        assert r.code == 0 and r.out.startswith(f"usage: cnnlab data {action} ")


def test_python_dash_m_and_the_console_script_reach_the_same_main():
    p = subprocess.run([sys.executable, "-m", "cnnlab", "--version"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.startswith("cnnlab ")
    from cnnlab.cli import main

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "cnnlab"]
    assert script.value == "cnnlab.cli:main" and script.load() is main


def test_the_package_loads_its_public_names_on_first_use():
    res = _run_python("""
import json, sys
import cnnlab
before = "torch" in sys.modules
names = {n: type(getattr(cnnlab, n)).__name__ for n in cnnlab.__all__}
print(json.dumps({"before": before, "names": names, "dir": sorted(set(cnnlab.__all__) - set(dir(cnnlab)))}))
""")
    assert res["before"] is False
    assert res["names"]["__version__"] == "str" and res["names"]["TrainConfig"] == "type" and res["names"]["train"] == "function"
    assert res["dir"] == []
    import cnnlab

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cnnlab.nope  # noqa: B018
    from cnnlab._version import __version__

    assert cnnlab.__version__ == __version__
