"""What the trackers share: a run's config as flat hyperparameters, the epoch row's metric names, and the one-line
warning a tracker prints when it stops logging (training never stops for a tracker, unless the user insisted on it).
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from cnnlab.config import TrainConfig

MAX_PARAM_CHARS = 250  # a layer list (model_args.layers) is kilobytes of JSON: a table cell shows its start

# metrics.csv's columns, as the trackers name them (TensorBoard groups tags by the part before the slash)
EPOCH_METRICS = {"train_loss": "train/loss", "train_accuracy": "train/accuracy", "val_loss": "val/loss",
                 "val_accuracy": "val/accuracy", "lr": "lr", "seconds": "time/epoch_seconds"}


def flat_params(cfg: TrainConfig) -> dict[str, bool | int | float | str]:
    """The config as name -> scalar: dict fields become `model_args.width`, lists `a,b`; unset (None) values are left
    out (hparams tables and MLflow show them as missing); long values are cut to MAX_PARAM_CHARS."""
    flat: dict[str, Any] = {}
    for key, value in cfg.to_dict().items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    out: dict[str, bool | int | float | str] = {}
    for key, value in flat.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) for v in value):
            value = ",".join(map(str, value))
        elif not isinstance(value, (bool, int, float, str)):
            value = json.dumps(value, separators=(",", ":"), default=str)
        if isinstance(value, str) and len(value) > MAX_PARAM_CHARS:
            value = value[: MAX_PARAM_CHARS - 1] + "…"
        out[key] = value
    return out


def epoch_metrics(row: dict) -> dict[str, float]:
    """The finite numbers of an epoch's metrics row, by metrics.csv column (a run without a val split has no val_*)."""
    return {k: float(row[k]) for k in EPOCH_METRICS if isinstance(row.get(k), (int, float)) and math.isfinite(row[k])}


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception as one short line (MLflow's messages run to paragraphs)."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0].strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)
