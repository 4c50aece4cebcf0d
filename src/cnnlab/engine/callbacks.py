"""Callbacks: Python code that runs at fixed points of `fit` (Keras' and Lightning's hooks, in cnnlab's words).

    class StopAt95(cnnlab.Callback):
        def on_epoch_end(self, run, row):
            if (row["val_accuracy"] or 0) >= 0.95:
                run.stop("val accuracy reached 95%")

    cnnlab.train("resnet9", ds, epochs=50, callbacks=[StopAt95()])

Every hook gets `run`, a RunView: the model, the config, the run folder, the epoch and batch, the history so far,
and `stop(reason)`. A stop ends training cleanly — after the current batch, the epoch is scored and recorded, and
the run finishes as usual (test score, model files, report) with `run.json`'s "stopped" saying why. An exception
raised by a hook ends the run as a failure (StopTraining: as "stopped", with last.ckpt to resume from).
Hooks run on every rank of a distributed run; `run.is_main` says whether this process writes the run folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch.nn as nn

    from cnnlab.config import TrainConfig


class Callback:
    """Override the hooks you need; each default does nothing."""

    def on_train_start(self, run: RunView) -> None:
        """Before the first epoch (after a resume: before the first epoch still to train)."""

    def on_epoch_start(self, run: RunView) -> None:
        """Before each trained epoch (the frozen phase of a pretrained model has no batches and no epoch starts)."""

    def on_batch_end(self, run: RunView, loss: float) -> None:
        """After each optimizer step; `loss` is this rank's mean training loss of the batch."""

    def on_epoch_end(self, run: RunView, row: dict) -> None:
        """After each epoch's metrics row (epoch, train_loss, train_accuracy, val_loss, val_accuracy, lr, seconds);
        the run's last.ckpt is already written."""

    def on_train_end(self, run: RunView, test: dict | None) -> None:
        """After the model files and run.json are written; `test` is the final test score (None without a test split)."""


@dataclass
class RunView:
    """What a callback sees of the run in progress."""

    model: nn.Module
    config: TrainConfig
    run_dir: Path
    is_main: bool = True
    epoch: int = 0  # the epoch in progress (1-based)
    step: int = 0  # the batch within it (0-based; the next one to train at on_epoch_start)
    history: list[dict] = field(default_factory=list)  # the finished epochs' metrics rows
    stop_reason: str | None = None

    def stop(self, reason: str = "stopped by a callback") -> None:
        """End training cleanly after the current batch (see the module docstring)."""
        self.stop_reason = reason


class CallbackList:
    """Calls each hook on every callback in order."""

    def __init__(self, callbacks: list[Any] | None, view: RunView):
        self.callbacks = list(callbacks or [])
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                from cnnlab.errors import ConfigError

                raise ConfigError(f"callbacks: {cb!r} is not a cnnlab.Callback — subclass cnnlab.Callback and override its on_* methods")
        self.view = view

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    def __call__(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self.view, *args)
