"""Resumable checkpoints (`last.ckpt`): full training state, loaded with weights_only=True.

Only tensors and plain Python containers go in, so `torch.load(..., weights_only=True)` can read it
and nothing is ever unpickled as code. Written atomically: a kill mid-write leaves the previous one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cnnlab.engine.distributed import is_main_process
from cnnlab.engine.io import as_os_error, atomic_path
from cnnlab.errors import CnnlabError

CKPT_FORMAT = "cnnlab-ckpt-1"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    state = {"format": CKPT_FORMAT, **state}
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as e:  # torch's zip writer reports a full disk as RuntimeError
            raise as_os_error(tmp, e) from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / "last.ckpt"
    if not p.is_file():
        raise CnnlabError(f"{p}: no checkpoint to resume from — pass a run folder that holds last.ckpt")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling refusal or damage: never fall back to full pickle
        raise CnnlabError(f"{p}: unreadable checkpoint ({str(e).splitlines()[0][:120]}) — it is damaged or not from cnnlab") from None
    if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT:
        raise CnnlabError(f"{p}: not a cnnlab checkpoint")
    if is_main_process():  # in a distributed run rank 0 may already be writing into the folder
        remove_stale_temp_files(p.parent)
    return state


def remove_stale_temp_files(folder: Path) -> list[str]:
    """Delete temp files that a killed atomic write left behind (`.NAME.XXXX.tmp`); they are never valid.

    Called when a run is resumed, i.e. when no process is writing into the folder any more."""
    removed = []
    for t in folder.glob(".*.tmp"):
        try:
            t.unlink()
            removed.append(t.name)
        except OSError:
            pass
    return removed
