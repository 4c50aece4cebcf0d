"""Resumable checkpoints (`last.ckpt`): full training state, loaded with weights_only=True.

Only tensors and plain Python containers go in, so `torch.load(..., weights_only=True)` can read it
and nothing is ever unpickled as code. Written atomically: a kill mid-write leaves the previous one.
"""

from __future__ import annotations

import pickle
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cnnlab.engine.distributed import Context, is_main_process
from cnnlab.engine.io import as_os_error, atomic_path
from cnnlab.engine.model_file import tensor_differences
from cnnlab.engine.run_dir import RunFolder
from cnnlab.config import parse_checkpoint_every
from cnnlab.errors import CnnlabError

CKPT_FORMAT = "cnnlab-ckpt-1"
# run.json fields a resumed run carries on: when it started, its timings, and how often it was resumed before
CARRIED_RUN_INFO = ("started", "seconds", "resumed")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    state = {"format": CKPT_FORMAT, **state}
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as e:  # torch's zip writer reports a full disk as RuntimeError
            raise as_os_error(tmp, e) from None


@dataclass
class TrainState:
    """Where a run is and what it has learnt so far: everything last.ckpt holds besides the objects' own states."""

    epoch: int = 1  # the epoch to train next (or the one in progress)
    step: int = 0  # the next batch of that epoch
    partial: dict | None = None  # that epoch's running sums so far (loss_sum, correct, seen, seconds), summed over ranks
    history: list[dict] = field(default_factory=list)  # one metrics row per finished epoch
    best: dict = field(default_factory=lambda: {"accuracy": -1.0, "epoch": 0})
    best_weights: dict | None = None  # the weights of the best val-accuracy epoch so far
    planned_epochs: int = 0
    run_info: dict = field(default_factory=dict)  # CARRIED_RUN_INFO carries over to the resumed run's run.json


def capture_state(state: TrainState, model, optimizer, schedule, ema, rng_states: list[torch.Tensor], distributed: bool,
                  config: dict, scaler=None) -> dict[str, Any]:
    """The checkpoint dict for `state` and the training objects (tensors and plain containers only)."""
    return {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng_torch": rng_states[0],
        "rng_torch_ranks": rng_states if distributed else None,
        "epoch": state.epoch, "step": state.step, "partial": state.partial, "history": state.history,
        "schedule": schedule.state_dict(), "planned_epochs": state.planned_epochs, "best": state.best,
        "ema": ema.state_dict() if ema is not None else None, "best_weights": state.best_weights,
        "config": config, "run_info": {k: state.run_info[k] for k in CARRIED_RUN_INFO if k in state.run_info},
        "grad_scaler": scaler.state_dict() if scaler is not None else None,  # fp16: the loss scale and its growth tracker
    }


def restore_state(ckpt: dict[str, Any], model, optimizer, schedule, ema, dist: Context, max_epochs: int, scaler=None,
                  source: Path | None = None) -> TrainState:
    """Load a checkpoint (read from `source`) into the training objects (and this rank's RNG); returns the run's
    position and history. Weights that do not fit the model (another architecture's checkpoint, an edited
    config.yaml) are an error naming the first difference, before anything is loaded."""
    problem = tensor_differences(model.state_dict(), ckpt.get("model") or {})
    if problem:
        where = source or Path("last.ckpt")
        raise CnnlabError(f"{where}: its weights do not fit the run's model ({problem}) — the checkpoint belongs to another run or"
                          f" config.yaml was edited; restore them, or {_instead(where)}")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    rng_ranks = ckpt.get("rng_torch_ranks") or []
    torch.set_rng_state(rng_ranks[dist.rank] if len(rng_ranks) == dist.world_size else ckpt["rng_torch"])
    planned = max_epochs
    if ckpt.get("schedule"):
        schedule.load_state_dict(ckpt["schedule"])
        planned = min(max_epochs, int(ckpt["planned_epochs"]))
    if ema is not None and ckpt.get("ema"):
        ema.load_state_dict(ckpt["ema"])
    if scaler is not None and ckpt.get("grad_scaler"):
        scaler.load_state_dict(ckpt["grad_scaler"])
    state = TrainState(epoch=ckpt["epoch"], step=ckpt["step"], history=list(ckpt["history"]), planned_epochs=planned,
                       partial=ckpt.get("partial") if dist.is_main else None,  # saved summed over ranks: rank 0 carries it on
                       best_weights=ckpt.get("best_weights"),
                       run_info={k: v for k, v in ckpt.get("run_info", {}).items() if k in CARRIED_RUN_INFO})
    if ckpt.get("best"):
        state.best = dict(ckpt["best"])
    return state


class CheckpointEvery:
    """--checkpoint-every: mid-epoch checkpoints every N optimizer steps or S seconds, so a kill (SIGKILL, a lost
    machine) loses at most that much; SIGINT/SIGTERM save where they stop anyway. Epoch ends always checkpoint."""

    def __init__(self, spec: str | int | None, dist: Context):
        self.steps, self.seconds = parse_checkpoint_every(spec)
        self.dist = dist
        self.restart()

    @property
    def enabled(self) -> bool:
        return bool(self.steps or self.seconds)

    def restart(self) -> None:
        self.count, self.mark = 0, time.monotonic()

    def due(self) -> bool:
        """Called at every optimizer step; the same answer on every rank (time: rank 0's clock)."""
        self.count += 1
        if self.steps:
            hit = self.count >= self.steps
        else:
            hit = self.dist.broadcast_number(float(time.monotonic() - self.mark >= self.seconds)) > 0.5
        if hit:
            self.restart()
        return hit


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / "last.ckpt"
    if not p.is_file():
        raise CnnlabError(f"{p}: no checkpoint to resume from — pass a run folder that holds last.ckpt")
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols and weights_only are not for our users
            warnings.simplefilter("ignore")
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling refusal or damage: never fall back to full pickle
        raise CnnlabError(f"{p}: unreadable checkpoint — {_why_unreadable(e)}; {_instead(p)}") from None
    if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT:
        raise CnnlabError(f"{p}: not a cnnlab checkpoint (it holds no cnnlab training state); {_instead(p)}")
    if is_main_process():  # in a distributed run rank 0 may already be writing into the folder
        remove_stale_temp_files(p.parent)
    return state


def _why_unreadable(e: Exception) -> str:
    """torch.load's refusal in our words (its own messages run to paragraphs of advice to unpickle anyway)."""
    if isinstance(e, pickle.UnpicklingError) or "weights_only" in str(e).lower():
        return "it holds Python objects besides tensors (a pickle, which could run code when loaded), and cnnlab loads tensors only"
    if isinstance(e, OSError):
        return f"it cannot be read ({e.strerror or e.__class__.__name__})"
    return "it is damaged (cut short or overwritten) or not a PyTorch file"


def _instead(p: Path) -> str:
    """What to do when a run's checkpoint cannot be used: start the run again (its config.yaml says how)."""
    from cnnlab.engine.kfold import fold_of  # (here: kfold imports this module)

    run = RunFolder(p.parent)
    if (fold := fold_of(run.path)) is not None:  # a fold without a checkpoint trains again from its start
        return f"delete it and resume the cross-validation, which trains fold {fold[1]} again: cnnlab train --resume {fold[0]}"
    if p.name == "last.ckpt" and run.config_yaml.is_file():
        return f"start the run again with: {run.restart_command()}"
    return "pass the folder of a run trained by cnnlab"


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
