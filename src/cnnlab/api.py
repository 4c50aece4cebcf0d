"""The Python API; it mirrors the CLI (each CLI subcommand calls one of these).

    ds = cnnlab.load_dataset("data/")
    model = cnnlab.create_model("seed_cnn", ds)
    run = cnnlab.train(model, ds, epochs=5, batch_size=64)
    cnnlab.evaluate(run, ds)
    cnnlab.predict(run, "cat.jpg")
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch.nn as nn

from cnnlab import models
from cnnlab.config import TrainConfig, config_from_dict
from cnnlab.data.dataset import Dataset, Split
from cnnlab.data.sources import load_dataset as _load_dataset
from cnnlab.engine.checkpoint import load_checkpoint
from cnnlab.engine.distributed import is_main_process
from cnnlab.engine.predictor import Classifier, expand_image_paths
from cnnlab.engine.run_dir import read_run_json
from cnnlab.engine.trainer import TrainResult, fit
from cnnlab.errors import CnnlabError, DataError, ModelError
from cnnlab.insight.report import write_run_report

DATA_KEYS = ("image_size", "image_shape", "channels", "classes", "val_split", "seed", "max_bad_fraction", "stream", "workers")


def load_dataset(spec: str | Path, **options: Any) -> Dataset:
    """Load a dataset (folder, seed CSV folder, .npz or builtin:NAME); see cnnlab.data.sources.

    Image folders take `stream=True|False|None` (None: stream from disk when too big for memory) and
    `workers=N` (decoding processes when streaming).
    """
    t0 = time.perf_counter()
    ds = _load_dataset(spec, **options)
    ds.load_seconds = time.perf_counter() - t0  # type: ignore[attr-defined]
    return ds


def create_model(name: str, data: Dataset | None = None, *, num_classes: int | None = None, in_channels: int | None = None,
                 image_size: int | tuple[int, int] | None = None, seed: int | None = None, pretrained: bool = False,
                 weights: str | None = None, **model_args: Any) -> nn.Module:
    """Build a registered model, sized for `data` (classes, channels, image size) unless given explicitly.

    `seed` makes the initial weights reproducible (training by name seeds them with the run's seed).
    `pretrained=True` starts from the model's default ImageNet weights (`weights`: a catalogued weight set or a
    file, see `cnnlab models --pretrained`); the new head is sized for the classes.
    """
    if seed is not None:
        import torch

        torch.manual_seed(seed)
    if data is not None:
        h, w, c = data.image_shape
        num_classes = num_classes or data.num_classes
        in_channels = in_channels or c
        image_size = image_size or (h, w)
    if num_classes is None:
        raise ModelError("create_model needs a dataset or num_classes")
    model = models.create_model(name, num_classes, in_channels or 3, image_size or (100, 100), **model_args)
    if pretrained or weights:
        from cnnlab.models.pretrained import load_pretrained

        load_pretrained(model, weights)
    return model


def model_for_config(cfg: TrainConfig, ds: Dataset, seed: int | None = None) -> nn.Module:
    """The registry model a config trains on `ds` (its model arguments, and its training size if set), starting
    from pretrained weights when the config asks for them."""
    extra = {"train_size": cfg.train_size} if cfg.train_size else {}
    return create_model(cfg.model, ds, seed=seed, pretrained=cfg.uses_pretrained, weights=cfg.weights, **cfg.model_args, **extra)


def list_models() -> list[str]:
    return models.list_models()


def config_for(model: nn.Module | str, data: Dataset | str, base: TrainConfig | None = None, **overrides: Any) -> TrainConfig:
    """The resolved TrainConfig for a model + dataset + keyword overrides."""
    values: dict[str, Any] = {}
    if isinstance(data, Dataset):
        values["data"] = data.spec
        values.update({k: v for k, v in data.load_options.items() if k in DATA_KEYS})
    else:
        values["data"] = str(data)
    if isinstance(model, nn.Module):
        values["model"] = getattr(model, "cnnlab_name", type(model).__name__)
        values["model_args"] = dict(getattr(model, "cnnlab_args", {}))
        info = getattr(model, "cnnlab_pretrained", None)
        if info:  # the fine-tuning recipe, and the weights a resume rebuilds the model from
            values["pretrained"] = True
            values["weights"] = info.get("file") if info.get("source") == "file" else info.get("weights")
    elif model is not None:
        values["model"] = model
    values.update(overrides)
    return config_from_dict(values, base=base, source="train()").validate()


def dataset_for_config(cfg: TrainConfig) -> Dataset:
    opts = {k: getattr(cfg, k) for k in DATA_KEYS}
    return load_dataset(cfg.data, **opts)


def train(model: nn.Module | str | None = None, data: Dataset | str | None = None, *, config: TrainConfig | None = None,
          out: str | Path | None = None, overwrite: bool = False, resume: str | Path | None = None, quiet: bool = False,
          on_epoch_end: Callable[[dict], None] | None = None, spent_seconds: float = 0.0, **overrides: Any) -> TrainResult:
    """Train and write a run folder. `model` is a module or registry name; `data` a Dataset or SPEC.

    `spent_seconds`: time already spent that the time budget must cover (the CLI passes its process start-up).

    `on_epoch_end(row)` is called after each epoch with its metrics row (as in history); raising
    cnnlab.engine.trainer.StopTraining there ends the run after that epoch (the exception propagates).
    """
    if resume is not None:
        return _resume(resume, quiet, on_epoch_end)
    cfg = config_for(model if model is not None else (config.model if config else "auto"),
                     data if data is not None else (config.data if config else ""), base=config, **overrides)
    if cfg.model == "auto":
        cfg, ds = _auto_recipe(cfg, data if isinstance(data, Dataset) else None, quiet)
    else:
        if cfg.uses_pretrained and cfg.image_size is None and not isinstance(data, Dataset):
            cfg = _pretrained_image_size(cfg)
        ds = data if isinstance(data, Dataset) else dataset_for_config(cfg)
    if not isinstance(model, nn.Module):
        model = model_for_config(cfg, ds, seed=cfg.seed)
    _check_model_fits(model, ds)
    result = fit(model, ds, cfg, out, overwrite=overwrite, quiet=quiet, load_seconds=getattr(ds, "load_seconds", None),
                 on_epoch_end=on_epoch_end, spent_seconds=spent_seconds)
    if is_main_process():  # in a distributed run only rank 0 writes the run folder
        write_run_report(result, ds)
    return result


def _pretrained_image_size(cfg: TrainConfig) -> TrainConfig:
    """Photos in a folder (any sizes) are loaded at the resolution the pretrained weights were trained at, not the
    from-scratch default of 100 px; fixed-size data keeps its size."""
    from cnnlab.data.sources import image_folder_counts
    from cnnlab.models.pretrained import CATALOGUE, default_weights

    ws = CATALOGUE.get(cfg.weights or "") or default_weights(cfg.model)
    if ws is None or image_folder_counts(cfg.data) is None:
        return cfg
    return dataclasses.replace(cfg, image_size=ws.input_size)


def auto_plan(cfg: TrainConfig):
    """The default recipe's choice (engine/auto.Plan) for cfg.model == 'auto', without training."""
    return _auto_recipe(cfg, None, quiet=True, load=False)[0]


def _auto_recipe(cfg: TrainConfig, ds: Dataset | None, quiet: bool, load: bool = True):
    """model = 'auto': choose model, image size and augmentation (engine/auto.py), then load the data at that size."""
    from cnnlab.data.sources import image_folder_counts, resize_images
    from cnnlab.data.stream import StreamSplit
    from cnnlab.engine import auto

    folder = image_folder_counts(cfg.data) if ds is None and cfg.image_size is None else None
    t0 = time.perf_counter()
    if folder is not None:  # choose the size first, then decode the images once at that size
        n, k = folder
        n_test = (image_folder_counts(str(Path(cfg.data).expanduser() / "test")) or (0, 0))[0]
        n_train = int(n * (1 - cfg.val_split))
        plan = auto.plan(cfg, n_train, None, k, cfg.channels or 3, n_eval=n - n_train + n_test)
        if not load:
            return plan, None
        ds = dataset_for_config(plan.cfg)
        load_seconds = time.perf_counter() - t0
    else:
        if ds is None:
            ds = dataset_for_config(cfg)
        t0, loaded_in = time.perf_counter(), getattr(ds, "load_seconds", None) or 0.0
        h, w, c = ds.image_shape
        n_eval = sum(len(v) for name, v in ds.splits.items() if name != "train")
        plan = auto.plan(cfg, len(ds.train), (h, w), ds.num_classes, c, n_eval=n_eval)
        size = plan.cfg.image_size
        if size is not None and (h, w) != (size, size):
            splits = {name: v.resized(size) if isinstance(v, StreamSplit) else Split(resize_images(v.x, size), v.y, v.paths)
                      for name, v in ds.splits.items()}  # a streamed folder decodes its files at the new size instead
            ds = dataclasses.replace(ds, splits=splits, load_options={**ds.load_options, "image_size": size})
        load_seconds = loaded_in + time.perf_counter() - t0
    ds.load_seconds = load_seconds  # type: ignore[attr-defined]  # counted in the time budget
    if not load:
        return plan, None
    if not quiet:
        print(plan.note)
    return plan.cfg, ds


def _check_model_fits(model: nn.Module, ds: Dataset) -> None:
    import torch

    h, w, c = ds.image_shape
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, c, h, w))
    except RuntimeError as e:
        raise ModelError(f"model does not accept {h}x{w}x{c} images from {ds.spec} ({str(e).splitlines()[0][:120]}) — build it with create_model(name, dataset)") from None
    finally:
        model.train()
    expected = 1 if ds.num_classes == 2 else ds.num_classes
    if out.shape[1] not in (expected, ds.num_classes):
        raise ModelError(f"model has {out.shape[1]} outputs but the dataset has {ds.num_classes} classes — build it with create_model(name, dataset)")


def _resume(run_dir: str | Path, quiet: bool, on_epoch_end: Callable[[dict], None] | None = None) -> TrainResult:
    run_dir = Path(run_dir)
    if read_run_json(run_dir).get("status") == "completed":
        raise CnnlabError(f"{run_dir}: this run already completed — start a new run instead of --resume")
    state = load_checkpoint(run_dir)
    cfg = config_from_dict(state["config"], source=str(run_dir / "last.ckpt")).validate()
    ds = dataset_for_config(cfg)
    model = model_for_config(cfg, ds)
    result = fit(model, ds, cfg, resume_state=state, resume_dir=run_dir, quiet=quiet, load_seconds=getattr(ds, "load_seconds", None),
                 on_epoch_end=on_epoch_end)
    if is_main_process():
        write_run_report(result, ds)
    return result


def load(run_or_model: str | Path | TrainResult, device: str = "cpu") -> Classifier:
    """Load a trained classifier from a run folder or model file."""
    if isinstance(run_or_model, Classifier):
        return run_or_model
    if isinstance(run_or_model, TrainResult):
        return Classifier(run_or_model.model, run_or_model.meta, next(run_or_model.model.parameters()).device, run_or_model.run_dir)
    return Classifier.load(run_or_model, device)


def dataset_for_model(clf: Classifier, data: Dataset | str, **overrides: Any) -> Dataset:
    """Load `data` the way the model saw its training data (size, channels, classes, split seed).

    `overrides` are load_dataset options that win over the ones taken from the model (e.g. CLI flags).
    """
    if isinstance(data, Dataset):
        ds = data
    else:
        cfg = dict(clf.meta.get("config") or {})
        c, h, w = clf.input_shape
        opts = {k: cfg[k] for k in ("image_shape", "val_split", "seed", "max_bad_fraction") if cfg.get(k) is not None}
        opts.update(classes=cfg.get("classes"), image_size=h if h == w else None, channels=c)
        ds = load_dataset(data, **{**opts, **overrides})
    c, h, w = clf.input_shape
    if tuple(ds.image_shape) != (h, w, c):
        raise DataError(f"{ds.spec}: images are {ds.image_shape[0]}x{ds.image_shape[1]}x{ds.image_shape[2]} but the model expects {h}x{w}x{c}")
    if list(ds.class_names) != clf.class_names:
        raise DataError(f"{ds.spec}: classes {ds.class_names} differ from the model's {clf.class_names} — evaluate on data with the same classes")
    return ds


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
