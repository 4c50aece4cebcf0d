"""Learning-rate schedules as a factor of the base LR, computed from the global step.

The trainer sets `lr = base_lr * factor(step)` before every step. Progress is step / total_steps; with
--time-budget the trainer re-plans total_steps after each epoch, so the schedule still ends at the budget.
"""

from __future__ import annotations

import math

from cnnlab.errors import ConfigError

SCHEDULES = ("onecycle", "cosine", "constant", "plateau")


class LrSchedule:
    def __init__(self, kind: str, total_steps: int, warmup: float = 0.25, plateau_patience: int = 2, plateau_factor: float = 0.2):
        if kind not in SCHEDULES:
            raise ConfigError(f"unknown schedule {kind!r} — choose one of: {', '.join(SCHEDULES)}")
        self.kind, self.total_steps, self.warmup = kind, max(1, total_steps), warmup
        self.plateau_patience, self.plateau_factor = plateau_patience, plateau_factor
        self.plateau_scale, self.best, self.bad_epochs = 1.0, math.inf, 0

    def factor(self, step: int) -> float:
        p = min(1.0, step / self.total_steps)
        if self.kind == "onecycle":  # linear ramp from 1/25 to the peak, then cosine down to ~0
            if p < self.warmup:
                return 0.04 + 0.96 * p / self.warmup
            q = (p - self.warmup) / max(1e-9, 1 - self.warmup)
            return 1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * q))
        if self.kind == "cosine":  # short linear warmup, cosine to 0
            w = min(self.warmup, 0.05)
            if p < w:
                return (p + 1e-3) / w
            return 0.5 * (1 + math.cos(math.pi * (p - w) / max(1e-9, 1 - w)))
        if self.kind == "plateau":
            return self.plateau_scale
        return 1.0

    def epoch_end(self, val_loss: float | None) -> None:
        """Reduce-on-plateau: after `plateau_patience` epochs without a better val loss, multiply the LR by plateau_factor."""
        if self.kind != "plateau" or val_loss is None:
            return
        if val_loss < self.best - 1e-4:
            self.best, self.bad_epochs = val_loss, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.plateau_patience:
                self.plateau_scale *= self.plateau_factor
                self.bad_epochs = 0

    def state_dict(self) -> dict:
        return {"kind": self.kind, "total_steps": self.total_steps, "plateau_scale": self.plateau_scale,
                "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.total_steps = int(state["total_steps"])
        self.plateau_scale, self.best, self.bad_epochs = float(state["plateau_scale"]), float(state["best"]), int(state["bad_epochs"])
