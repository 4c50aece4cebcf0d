"""Train a configuration end to end: the recipe (the default recipe's choices, pretrained image sizes), the
dataset, the model, then engine.trainer.fit. cnnlab.train (api.py) adds the report on top; `cnnlab tune` runs
one of these per trial.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

from cnnlab import models
from cnnlab.config import DEFAULT_CHANNELS, DEFAULT_IMAGE_SIZE, DataOptions, TrainConfig, config_from_dict
from cnnlab.data.dataset import Dataset, Split
from cnnlab.data.sources import load_dataset as _load_dataset
from cnnlab.engine.checkpoint import load_checkpoint
from cnnlab.engine.distributed import is_main_process
from cnnlab.engine.run_dir import RunFolder, release
from cnnlab.engine.trainer import TrainResult, fit
from cnnlab.errors import CnnlabError, ModelError, first_line
from cnnlab.track import trackers_for

# the dataset options a run records in its config and reloads its data with
DATA_KEYS = (*(f.name for f in dataclasses.fields(DataOptions) if f.name != "data"), "seed")


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
    model = models.create_model(name, num_classes, in_channels or DEFAULT_CHANNELS, image_size or (DEFAULT_IMAGE_SIZE,) * 2, **model_args)
    if data is not None and data.multi_label:  # one sigmoid output per class, two classes included
        from cnnlab.models.layers import one_output_per_class

        one_output_per_class(model, num_classes)
    if pretrained or weights:
        from cnnlab.models.pretrained import load_pretrained

        load_pretrained(model, weights)
    return model


def model_for_config(cfg: TrainConfig, ds: Dataset, seed: int | None = None) -> nn.Module:
    """The registry model a config trains on `ds` (its model arguments, and its training size if set), starting
    from pretrained weights when the config asks for them."""
    extra = {"train_size": cfg.train_size} if cfg.train_size else {}
    return create_model(cfg.model, ds, seed=seed, pretrained=cfg.uses_pretrained, weights=cfg.weights, **cfg.model_args, **extra)


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


def load_dataset(spec: str | Path, **options: Any) -> Dataset:
    """data.sources.load_dataset, timed: `load_seconds` counts in the time budget."""
    t0 = time.perf_counter()
    ds = _load_dataset(spec, **options)
    ds.load_seconds = time.perf_counter() - t0  # type: ignore[attr-defined]
    return ds


def dataset_for_config(cfg: TrainConfig) -> Dataset:
    opts = {k: getattr(cfg, k) for k in DATA_KEYS}
    return load_dataset(cfg.data, **opts)


def train(model: nn.Module | str | None = None, data: Dataset | str | None = None, *, config: TrainConfig | None = None,
          out: str | Path | None = None, overwrite: bool = False, resume: str | Path | None = None, quiet: bool = False,
          on_epoch_end: Callable[[dict], None] | None = None, spent_seconds: float = 0.0, callbacks: list | None = None,
          **overrides: Any) -> tuple[TrainResult, Dataset]:
    """cnnlab.train without the report: the recipe (auto: engine/auto.py), the data, the model, then fit.
    Returns the result and the dataset it trained on (insight's report reads both)."""
    if resume is not None:
        return _resume(resume, quiet, on_epoch_end, callbacks)
    cfg = config_for(model if model is not None else (config.model if config else "auto"),
                     data if data is not None else (config.data if config else ""), base=config, **overrides)
    if cfg.model == "auto":
        cfg, ds = auto_recipe(cfg, data if isinstance(data, Dataset) else None, quiet)
    else:
        if cfg.uses_pretrained and cfg.image_size is None and not isinstance(data, Dataset):
            cfg = pretrained_image_size(cfg)
        ds = data if isinstance(data, Dataset) else dataset_for_config(cfg)
    if not isinstance(model, nn.Module):
        model = model_for_config(cfg, ds, seed=cfg.seed)
    _check_model_fits(model, ds, cfg)  # and that training it fits in memory (engine/memory.py), before the run folder
    # TensorBoard / MLflow as the config says (cnnlab/track), first: a callback that raises StopTraining after them
    # cannot keep the epoch it ends out of the logs
    callbacks = [*trackers_for(cfg, ds), *(callbacks or [])]
    result = fit(model, ds, cfg, out, overwrite=overwrite, quiet=quiet, load_seconds=getattr(ds, "load_seconds", None),
                 on_epoch_end=on_epoch_end, spent_seconds=spent_seconds, callbacks=callbacks)
    return result, ds


def pretrained_image_size(cfg: TrainConfig) -> TrainConfig:
    """Photos in a folder (any sizes) are loaded at the resolution the pretrained weights were trained at, not the
    from-scratch default of 100 px; fixed-size data keeps its size."""
    from cnnlab.models.pretrained import CATALOGUE, default_weights

    ws = CATALOGUE.get(cfg.weights or "") or default_weights(cfg.model)
    if ws is None or _photo_counts(cfg) is None:
        return cfg
    return dataclasses.replace(cfg, image_size=ws.input_size)


def _photo_counts(cfg: TrainConfig):
    from cnnlab.data.sources import photo_counts

    return photo_counts(cfg.data, cfg.labels, cfg.file_col, cfg.label_col, cfg.label_delim)


def auto_plan(cfg: TrainConfig):
    """The default recipe's choice (engine/auto.Plan) for cfg.model == 'auto', without training."""
    return auto_recipe(cfg, None, quiet=True, load=False)[0]


def auto_recipe(cfg: TrainConfig, ds: Dataset | None, quiet: bool, load: bool = True):
    """model = 'auto': choose model, image size and augmentation (engine/auto.py), then load the data at that size."""
    from cnnlab.data.sources import resize_images
    from cnnlab.data.stream import StreamSplit
    from cnnlab.engine import auto

    photos = _photo_counts(cfg) if ds is None and cfg.image_size is None else None
    t0 = time.perf_counter()
    if photos is not None:  # image files of any sizes: choose the size first, then decode the images once at that size
        n_train = photos.n if photos.n_val else int(photos.n * (1 - cfg.val_split))
        plan = auto.plan(cfg, n_train, None, photos.classes, cfg.channels or DEFAULT_CHANNELS,
                         n_eval=photos.n - n_train + photos.n_val + photos.n_test)
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
            splits = {name: v.resized(size) if isinstance(v, StreamSplit) else Split(resize_images(v.x, size, ds.load_options.get("resize")), v.y, v.paths)
                      for name, v in ds.splits.items()}  # a streamed folder decodes its files at the new size instead
            ds = dataclasses.replace(ds, splits=splits, load_options={**ds.load_options, "image_size": size})
        load_seconds = loaded_in + time.perf_counter() - t0
    ds.load_seconds = load_seconds  # type: ignore[attr-defined]  # counted in the time budget
    if not load:
        return plan, None
    if not quiet:
        print(plan.note)
    return plan.cfg, ds


def _check_model_fits(model: nn.Module, ds: Dataset, cfg: TrainConfig | None = None) -> None:
    """One image through the model: it accepts the data's images and has an output per class; with `cfg`, the same
    forward pass counts the activations, and training that cannot fit in memory is refused (engine/memory.py)."""
    import torch

    from cnnlab.engine import memory

    h, w, c = ds.image_shape
    precision = memory.run_precision(cfg, model) if cfg is not None else "fp32"
    try:
        out, activations = memory.count_forward(model, torch.zeros(1, c, h, w), precision)
    except RuntimeError as e:
        raise ModelError(f"model does not accept {h}x{w}x{c} images from {ds.spec} ({first_line(e)}) — build it with"
                         " create_model(name, dataset)") from None
    expected = 1 if ds.num_classes == 2 else ds.num_classes
    if out.shape[1] not in (expected, ds.num_classes):
        raise ModelError(f"model has {out.shape[1]} outputs but the dataset has {ds.num_classes} classes — build it with create_model(name, dataset)")
    if cfg is not None:
        memory.check_training(model, activations, ds, cfg)


def _resume(run_dir: str | Path, quiet: bool, on_epoch_end: Callable[[dict], None] | None = None,
            callbacks: list | None = None) -> tuple[TrainResult, Dataset]:
    run = RunFolder(run_dir)
    from cnnlab.engine.kfold import fold_of  # (here: kfold imports this module)

    if (fold := fold_of(run.path)) is not None:
        raise CnnlabError(f"{run.path} is fold {fold[1]} of the cross-validation {fold[0]} — resume the whole cross-validation:"
                          f" cnnlab train --resume {fold[0]}")
    took_over = run.claim() if run.path.is_dir() and is_main_process() else None  # not while another process writes it
    try:
        if run.status == "completed":
            raise CnnlabError(f"{run.path}: this run already completed — start a new run instead of --resume")
        if not run.last_ckpt.is_file():  # killed or interrupted before its first checkpoint: say how to start it again
            raise CnnlabError(run.nothing_to_resume())
        state = load_checkpoint(run.path)  # its last.ckpt
        if took_over and not quiet:
            print(took_over)
        # the checkpoint's config, not config.yaml: resume continues exactly the state that was saved
        cfg = config_from_dict(state["config"], source=str(run.last_ckpt)).validate()
        ds = dataset_for_config(cfg)
        model = model_for_config(cfg, ds)
        callbacks = [*trackers_for(cfg, ds), *(callbacks or [])]
    except BaseException:  # (a Ctrl-C while the data loads too) fit releases the folder from here on
        release(run.path)  # (a library caller's process goes on)
        raise
    result = fit(model, ds, cfg, resume_state=state, resume_dir=run.path, quiet=quiet, load_seconds=getattr(ds, "load_seconds", None),
                 on_epoch_end=on_epoch_end, callbacks=callbacks)
    return result, ds
