"""Run folders: where one training run writes everything a user wants afterwards.

    config.yaml   resolved config (`cnnlab train --config RUN/config.yaml` repeats the run)
    metrics.csv   one row per epoch
    model.safetensors, last.ckpt, curves.png, samples.png, predictions.png, run.json

`run.json` carries `status`: running -> completed | interrupted | failed. model.safetensors appears only
when training completed, so an unfinished run never looks finished.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from cnnlab.engine.io import write_text_atomic
from cnnlab.errors import CnnlabError

RUN_MARKERS = ("run.json", "config.yaml", "last.ckpt", "model.safetensors")
METRIC_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"]


def next_run_dir(base: str | Path = "runs", name: str = "train") -> Path:
    """runs/train, runs/train2, runs/train3, ... (the first free one)."""
    base = Path(base)
    for i in range(1, 100000):
        p = base / (name if i == 1 else f"{name}{i}")
        if not p.exists():
            return p
    raise CnnlabError(f"{base}: too many runs named {name}")


def prepare_run_dir(out: str | Path | None, overwrite: bool = False) -> Path:
    """Create the run folder; refuse to mix two runs in one folder unless overwrite."""
    path = Path(out) if out is not None else next_run_dir()
    if path.exists() and not path.is_dir():
        raise CnnlabError(f"{path}: exists and is a file — choose another --out")
    if path.is_dir() and any((path / m).exists() for m in RUN_MARKERS):
        if not overwrite:
            raise CnnlabError(f"{path}: already holds a run — pass --overwrite to replace it, or choose another --out")
        for m in RUN_MARKERS + ("metrics.csv", "curves.png", "samples.png", "predictions.png", "bad_files.txt"):
            try:
                (path / m).unlink()
            except FileNotFoundError:
                pass
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".cnnlab-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise CnnlabError(f"{path}: cannot write the run folder ({e.strerror}) — choose a writable --out") from None
    return path


def write_metrics_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    write_text_atomic(path, buf.getvalue())


def write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def read_run_json(run_dir: str | Path) -> dict:
    p = Path(run_dir) / "run.json"
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def is_writable(path: Path) -> bool:
    return os.access(path, os.W_OK)


def write_bad_files(path: Path, bad: list[tuple[str, str]]) -> None:
    """bad_files.txt: one `path<TAB>reason` line per skipped image; entries already in the file are kept (resume)."""
    lines: dict[str, str] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            p, _, r = line.partition("\t")
            lines.setdefault(p, r)
    for p, r in bad:
        lines.setdefault(p, r)
    write_text_atomic(path, "".join(f"{p}\t{r}\n" for p, r in lines.items()))
