"""Every command in docs/tutorial.md runs, in order, in an empty folder.

The commands run in this process through cnnlab's own entry point (`cnnlab.__main__.main`, what the `cnnlab`
script calls), from the folder the page starts in: the same code path without a fresh interpreter and torch
import per command (~2 s each, 20+ commands). tests/test_cli_e2e.py and tests/test_core_install.py run real
`cnnlab` processes."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", TUTORIAL.read_text(encoding="utf-8"), flags=re.S)


def test_tutorial_commands_and_python_run(tmp_path, monkeypatch, cli):
    commands = [ln.strip() for b in blocks("bash") for ln in b.splitlines() if ln.strip()]
    assert len(commands) >= 8 and all(c.startswith("cnnlab ") for c in commands)
    monkeypatch.chdir(tmp_path)
    outputs = {}
    for cmd in commands:
        r = cli(*shlex.split(cmd)[1:])
        assert r.code == 0, (cmd, r.out[-2000:], r.err[-2000:])
        outputs[cmd] = r.out
    assert (tmp_path / "sample.png").is_file() and (tmp_path / "grid.png").is_file() and (tmp_path / "prediction.png").is_file()
    ev = json.loads(outputs["cnnlab evaluate runs/seed --data data --json"])
    assert ev["split"] == "test" and ev["n"] == 360 and ev["accuracy"] > 0.8
    preds = json.loads(outputs["cnnlab predict runs/seed new_images/test/7 --json --top-k 2"])
    assert len(preds) == 36 and all(len(p["top_k"]) == 2 for p in preds)
    assert sum(p["class"] == "7" for p in preds) > 0.7 * len(preds)
    (code,) = blocks("python")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "'split': 'test'" in p.stdout and (tmp_path / "runs" / "python" / "model.safetensors").is_file()
