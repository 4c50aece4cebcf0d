"""Experiment tracking: TensorBoard and MLflow, as training callbacks (engine/callbacks.py).

`trackers_for(cfg, dataset)` is what a training run adds to its callbacks (engine/session.py):
  TensorBoard  cfg.tensorboard None: on when the tensorboard package is installed; False (--no-tensorboard): off;
               True (--tensorboard): on, and a missing package or unwritable RUN/tensorboard is an error (exit 2)
  MLflow       cfg.mlflow True (--mlflow) or, when None, MLFLOW_TRACKING_URI set; --mlflow without the package is
               an error, an unreachable server a warning (training goes on; the run folder has everything)
From Python: `cnnlab.train(..., tensorboard=False, mlflow=True)`, as every config field.
Install both with `pip install 'cnnlab[track]'`.
"""

from __future__ import annotations

from cnnlab.config import TrainConfig
from cnnlab.data.dataset import Dataset
from cnnlab.engine.callbacks import Callback
from cnnlab.track.mlflow_tracker import MlflowTracker, log_report, mlflow_wanted
from cnnlab.track.tensorboard import TensorBoardTracker, summary_writer_class

__all__ = ["MlflowTracker", "TensorBoardTracker", "log_report", "trackers_for"]


def trackers_for(cfg: TrainConfig, dataset: Dataset | None = None) -> list[Callback]:
    """The tracker callbacks `cfg` asks for (see the module docstring). Raises ConfigError, before any training, when
    --tensorboard or --mlflow is given and its package is missing; MLflow's server is contacted here too."""
    trackers: list[Callback] = []
    if cfg.tensorboard is not False:
        writer_class = summary_writer_class(required=bool(cfg.tensorboard))
        if writer_class is not None:
            trackers.append(TensorBoardTracker(dataset, required=bool(cfg.tensorboard), writer_class=writer_class))
    if mlflow_wanted(cfg.mlflow):
        trackers.append(MlflowTracker(required=bool(cfg.mlflow)))
    return trackers
