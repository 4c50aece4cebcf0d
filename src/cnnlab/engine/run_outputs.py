"""What a run writes into its run folder besides checkpoints: run.json (started, status, finished), config.yaml,
the sample and prediction grids, the model files (final and best), the curves — and the final test score.
Rank 0 writes; every rank scores (the test split is sharded over the ranks in a distributed run).
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from cnnlab import plotting as plots
from cnnlab._version import __version__
from cnnlab.config import TrainConfig
from cnnlab.data.dataset import Dataset
from cnnlab.data.loader import read_images
from cnnlab.engine import distributed as ddp
from cnnlab.engine import multilabel
from cnnlab.engine import run_dir as rd
from cnnlab.engine.checkpoint import TrainState
from cnnlab.engine.device import cpu_description
from cnnlab.engine.inference import probabilities, tta_label
from cnnlab.engine.model_file import save_model_file
from cnnlab.engine.progress import Progress


def run_info(cfg: TrainConfig, dataset: Dataset, device, precision: str, load_seconds: float | None, dist: ddp.Context) -> dict:
    info = {
        "status": "running",
        "cnnlab_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{cpu_description()}, {torch.get_num_threads()} torch threads",
        "device": str(device),
        "precision": precision,
        "seed": cfg.seed,
        "dataset": dataset.summary(),
        "seconds": {"load": load_seconds},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if dist.distributed:
        info["distributed"] = dist.describe()
    return info


def write_run_start(run: Path, cfg: TrainConfig, dataset: Dataset) -> None:
    rd.RunFolder(run).write_config(cfg)
    write_samples(dataset, run / "samples.png", cfg.seed)
    if dataset.bad_files:
        rd.write_bad_files(run / "bad_files.txt", dataset.bad_files)


def write_status(run_info: dict, status: str, run: Path, main: bool) -> None:
    run_info["status"] = status
    if main:
        rd.write_json(run / "run.json", run_info)


def finish(model: nn.Module, dataset: Dataset, cfg: TrainConfig, run: Path, meta: dict, state: TrainState, stop_reason: str | None,
           load_seconds: float | None, score: Callable[..., dict], dist: ddp.Context, progress: Progress) -> dict | None:
    """Score the test split (with TTA when cfg.tta: inference.tta_scales), then on rank 0 write the model files, the
    prediction grid, the curves and the completed run.json. Returns the test metrics (None without a test split)."""
    t_eval = time.perf_counter()
    test, main, val = None, dist.is_main, dataset.splits.get("val")
    multi, best_fields = dataset.multi_label, {}
    if multi:  # the decision thresholds first: the test score is taken at them (tuned: on val, for each saved set of weights)
        meta.update(multilabel.run_thresholds(model, dataset, cfg, meta["normalization"], progress.print))
        if cfg.tune_thresholds and state.best_weights is not None:
            final_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(state.best_weights)
            best_fields = multilabel.run_thresholds(model, dataset, cfg, meta["normalization"], lambda _: None)
            model.load_state_dict(final_weights)
    thresholds = meta.get("thresholds") if multi else None
    if "test" in dataset.splits and len(dataset.splits["test"]):
        ts = dataset.splits["test"]
        ev = score(model, ts, tta=bool(cfg.tta))
        test = {"loss": ev["loss"], "accuracy": ev["accuracy"], "n": ev["n"], "split": "test", "tta": bool(cfg.tta)}
        if multi:
            test.update(multilabel.split_scores(ev, np.asarray(ts.y)[ev["index"]], dataset.class_names, thresholds))
        if main:
            write_predictions(ts, ev["logits"], dataset.class_names, run / "predictions.png", cfg.seed, ev["index"], thresholds)
        more = f"  mAP {_num(test.get('map'))}  micro-F1 {_num(test.get('micro_f1'))}" if multi else ""
        progress.print(f"test  loss {test['loss']:.4f}  accuracy {test['accuracy']:.1%}{more}  ({test['n']} images{', ' + tta_label(model) if cfg.tta else ''})")
    elif val is not None and len(val):
        ev = score(model, val)
        if main:
            write_predictions(val, ev["logits"], dataset.class_names, run / "predictions.png", cfg.seed, ev["index"], thresholds)
    eval_seconds = time.perf_counter() - t_eval
    dist.close()  # no collectives from here on: other ranks are done, rank 0 writes the run folder
    if not main:
        return test
    history = state.history
    final = history[-1] if history else {}
    meta["metrics"] = {"val_accuracy": final.get("val_accuracy"), "test_accuracy": test["accuracy"] if test else None,
                       **({"val_map": final.get("val_map"), "test_map": test.get("map") if test else None} if multi else {})}
    meta["config"] = cfg.to_dict()
    save_model_file(run / "model.safetensors", model, meta)
    if state.best_weights is not None:  # the weights of the epoch with the best val accuracy (EMA weights with --ema)
        final_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(state.best_weights)
        save_model_file(run / "best.safetensors", model, {**meta, **best_fields,
                                                          "metrics": {"val_accuracy": state.best["accuracy"], "epoch": state.best["epoch"]}})
        model.load_state_dict(final_weights)
    plots.save_curves(history, run / "curves.png")
    train_seconds = sum(r["seconds"] for r in history)
    state.run_info.update({
        "status": "completed",
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": {"load": load_seconds, "train": round(train_seconds, 3), "evaluate": round(eval_seconds, 3)},
        "train_images_per_second": round(len(dataset.train) * len(history) / max(train_seconds, 1e-9), 1),
        "final": final,
        "test": test,
        "best": state.best if val is not None and len(val) else None,
        "stopped": stop_reason,
        "dataset": dataset.summary(),
    })
    rd.write_json(run / "run.json", state.run_info)
    return test


def write_samples(dataset: Dataset, path: Path, seed: int, n: int = 16) -> None:
    tr = dataset.train
    idx = np.random.default_rng(seed).choice(len(tr), size=min(n, len(tr)), replace=False)
    x, y = read_images(tr, idx)
    plots.save_grid(x, [dataset.label_text(v) for v in y], path, suptitle="training samples")


def _num(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def write_predictions(split, logits: torch.Tensor, names: list[str], path: Path, seed: int, index: np.ndarray,
                      thresholds: list[float] | None = None, n: int = 16) -> None:
    """`index`: the split positions of the rows of `logits` (streamed files that failed to decode have none);
    `thresholds`: a multi-label model's (its titles list every label at or above its threshold)."""
    idx = np.random.default_rng(seed).choice(len(logits), size=min(n, len(logits)), replace=False)
    if thresholds is not None:
        x, y = read_images(split, index[idx])
        titles, exact = multilabel.grid_titles(probabilities(logits[idx], multi_label=True).numpy(), y, names, thresholds)
        colours = [plots.OK_COLOUR if ok else plots.WRONG_COLOUR for ok in exact]
        plots.save_grid(x, titles, path, colours, suptitle="predictions (red: not exactly the true labels)")
        return
    probs = probabilities(logits[idx])
    pred = probs.argmax(1).numpy()
    x, y = read_images(split, index[idx])
    titles, colours = plots.prediction_titles(pred, probs.max(1).values.numpy(), y, names)
    plots.save_grid(x, titles, path, colours, suptitle="predictions (red: wrong)")
