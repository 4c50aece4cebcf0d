"""The Python API; it mirrors the CLI (each CLI subcommand calls one of these).

    ds = cnnlab.load_dataset("data/")
    model = cnnlab.create_model("seed_cnn", ds)
    run = cnnlab.train(model, ds, epochs=5, batch_size=64)
    cnnlab.evaluate(run, ds)
    cnnlab.predict(run, "cat.jpg")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch.nn as nn

from cnnlab import models
from cnnlab.config import TrainConfig
from cnnlab.data.dataset import Dataset
from cnnlab.engine import session
from cnnlab.engine.distributed import is_main_process
from cnnlab.engine.predictor import Classifier, dataset_for_model, expand_image_paths, load_classifier
from cnnlab.engine.session import DATA_KEYS, auto_plan, config_for, create_model, dataset_for_config, model_for_config
from cnnlab.engine.trainer import TrainResult
from cnnlab.errors import DataError
from cnnlab.insight.kfold import cross_validate  # K-fold cross-validation: cross_validate(model, data, folds=K, **overrides)
from cnnlab.insight.report import write_run_report

__all__ = ["load_dataset", "create_model", "list_models", "train", "evaluate", "predict", "load", "config_for", "dataset_for_config",
           "model_for_config", "auto_plan", "dataset_for_model", "DATA_KEYS", "cross_validate"]


def load_dataset(spec: str | Path, **options: Any) -> Dataset:
    """Load a dataset (folder, seed CSV folder, .npz or builtin:NAME); see cnnlab.data.sources.

    Image folders take `stream=True|False|None` (None: stream from disk when too big for memory) and
    `workers=N` (decoding processes when streaming).
    """
    return session.load_dataset(spec, **options)


def train(model: nn.Module | str | None = None, data: Dataset | str | None = None, *, config: TrainConfig | None = None,
          out: str | Path | None = None, overwrite: bool = False, resume: str | Path | None = None, quiet: bool = False,
          on_epoch_end: Callable[[dict], None] | None = None, spent_seconds: float = 0.0, callbacks: list | None = None,
          **overrides: Any) -> TrainResult:
    """Train and write a run folder with its report. `model` is a module or registry name; `data` a Dataset or SPEC;
    keyword overrides are TrainConfig fields (epochs=5, lr=1e-3, ...).

    `spent_seconds`: time already spent that the time budget must cover (the CLI passes its process start-up).
    `callbacks`: cnnlab.Callback objects whose hooks run during training and can stop it (engine/callbacks.py).
    `on_epoch_end(row)` is called after each epoch with its metrics row (as in history); raising
    cnnlab.engine.trainer.StopTraining there ends the run after that epoch (the exception propagates).
    """
    result, ds = session.train(model, data, config=config, out=out, overwrite=overwrite, resume=resume, quiet=quiet,
                               on_epoch_end=on_epoch_end, spent_seconds=spent_seconds, callbacks=callbacks, **overrides)
    if is_main_process():  # in a distributed run only rank 0 writes the run folder
        try:
            write_run_report(result, ds)
        except KeyboardInterrupt:  # the run itself is complete (run.json says so); only its report is missing
            import sys

            print(f"interrupted while writing {result.run_dir / 'report.html'} — the run is complete; rebuild the report with:"
                  f" cnnlab report {result.run_dir}", file=sys.stderr)
            raise
        from cnnlab.track import log_report

        log_report(result.run_dir)  # report.html to the run's MLflow copy, when it logged one
    return result


def list_models() -> list[str]:
    return models.list_models()


def load(run_or_model: str | Path | TrainResult, device: str = "cpu") -> Classifier:
    """Load a trained classifier from a run folder or model file."""
    return load_classifier(run_or_model, device)


# dataset_for_model(clf, data, **overrides): data loaded the way the model saw its training data (engine/predictor.py)


def evaluate(run: str | Path | TrainResult | Classifier, data: Dataset | str, split: str | None = None, batch_size: int | None = None,
             plots: str | Path | None = None, tta: bool = False) -> dict:
    """Loss, accuracy and the full metrics report on a split (default: test when present, else val, else train).

    Keys are documented in docs/insight.md; `plots` names a folder for the evaluation figures.
    """
    from cnnlab.insight.evaluation import evaluate_split

    clf = load(run)
    ds = dataset_for_model(clf, data)
    split = split or ds.default_eval_split()
    return evaluate_split(clf, ds, split, batch_size, plots, tta=tta)


def predict(run: str | Path | TrainResult | Classifier, inputs: str | Path | np.ndarray | list, top_k: int = 5, tta: bool = False) -> list[dict] | dict:
    """Predict image files/folders (a list of results) or one file / image array (one result)."""
    clf = load(run)
    if isinstance(inputs, np.ndarray):
        x = inputs if inputs.ndim == 4 else inputs[None]
        if x.ndim == 4 and x.shape[-1] not in (1, 3):
            raise DataError(f"image array has shape {inputs.shape} — expected (H, W, C) or (N, H, W, C) uint8")
        res = [clf.describe(p, top_k) for p in clf.predict_proba(x, tta=tta)]
        return res if inputs.ndim == 4 else res[0]
    single = isinstance(inputs, (str, Path)) and Path(inputs).is_file()
    paths = expand_image_paths([inputs] if isinstance(inputs, (str, Path)) else list(inputs))
    results = clf.predict_files(paths, top_k, tta=tta)
    if single:
        if "error" in results[0]:
            raise DataError(results[0]["error"])
        return results[0]
    return results
