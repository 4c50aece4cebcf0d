"""Exponential moving average of the weights (evaluated and saved instead of the raw weights when enabled).

The decay ramps up as min(decay, (1 + n) / (10 + n)) so short runs are not dominated by the random init.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_state = self.module.state_dict()
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                ema_state[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                ema_state[k].copy_(v)

    def state_dict(self) -> dict:
        return {"weights": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["weights"])
        self.updates, self.decay = int(state["updates"]), float(state["decay"])
