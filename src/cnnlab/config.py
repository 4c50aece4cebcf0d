"""One typed config object flows CLI -> training -> run folder -> model file.

Precedence: defaults < YAML file (`--config`) < explicit CLI flags / keyword arguments.
Unknown keys and wrong types are errors that name the key and the fix (nanoGPT-style loud overrides).
Where the run is written (`out`, `overwrite`, `resume`) is not part of the experiment, so it is not here:
`cnnlab train --config RUN/config.yaml` repeats an experiment into a new run folder.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnnlab.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
OPTIMIZERS = ("auto", "adamw", "sgd", "adam")
SCHEDULES = ("auto", "onecycle", "cosine", "constant", "plateau")
AUGMENTS = ("auto", "none", "light", "standard", "strong")

# The recipe for every model but seed_cnn (which keeps the tutorial's Adam, constant LR, 5 epochs).
# Measured on 2000 cats/dogs JPEGs at 96 px (docs/recipes.md): AdamW + one-cycle + flip/translate +
# label smoothing + TTA beats SGD and plain Adam clearly within a few CPU minutes.
SEED_RECIPE = {"epochs": 5, "batch_size": 64, "lr": 1e-3, "optimizer": "adam", "schedule": "constant", "weight_decay": 0.0,
               "label_smoothing": 0.0, "augment": "none", "tta": False}
ZOO_RECIPE = {"batch_size": 64, "lr": 3e-3, "optimizer": "adamw", "schedule": "onecycle", "weight_decay": 0.05,
              "label_smoothing": 0.1, "augment": "light", "tta": True}
# Fine-tuning a pretrained backbone (docs/recipes.md, "Pretrained backbones"), after the frozen phase (the head
# fitted on features computed once: FROZEN_EPOCHS epochs on a time budget, fastai's 1 when --epochs is given):
# AdamW with a cosine schedule at a 3x lower peak LR than from scratch (the head; the backbone at backbone_lr
# times it), light augmentation, label smoothing, flip TTA.
PRETRAINED_RECIPE = {"batch_size": 32, "lr": 1e-3, "optimizer": "adamw", "schedule": "cosine", "weight_decay": 0.01,
                     "label_smoothing": 0.1, "augment": "light", "tta": True}
FROZEN_EPOCHS = 10
PRETRAINED_PATIENCE = 2  # fine-tuning on a time budget stops after this many epochs without a better val accuracy
DEFAULT_TIME_BUDGET_S = 600.0  # non-seed models without --epochs train for this long


@dataclass
class TrainConfig:
    data: str = ""
    model: str = "auto"  # a registry name; auto: chosen with the image size and augmentation (engine/auto.py)
    model_args: dict[str, Any] = field(default_factory=dict)
    pretrained: bool | None = None  # start from ImageNet weights; None: the default recipe uses them when they are on this machine
    weights: str | None = None  # a catalogued weight set (cnnlab models --pretrained) or a weights file; implies pretrained
    freeze_epochs: int | None = None  # pretrained: epochs of head-only training on the frozen backbone first; None: the recipe's
    freeze: bool = False  # pretrained: keep the backbone frozen throughout (only the new head trains)
    backbone_lr: float = 0.1  # pretrained, unfrozen: the backbone's learning rate as a fraction of the head's (discriminative LRs)
    freeze_early: bool = True  # pretrained, unfrozen: keep the stem and the 1/2- and 1/4-resolution blocks frozen (faster steps)
    epochs: int | None = None  # None: 5 for seed_cnn; other models train for time_budget (default 600 s)
    batch_size: int | None = None  # None: 64; the default recipe (model auto) chooses 32 for small training sets (engine/auto.py)
    lr: float | None = None  # peak LR; None: 1e-3 for seed_cnn (Adam), 3e-3 otherwise (AdamW one-cycle)
    optimizer: str = "auto"  # adamw | sgd (Nesterov) | adam; auto: adam for seed_cnn, adamw otherwise
    weight_decay: float | None = None  # decoupled for AdamW; never applied to norm weights or biases
    schedule: str = "auto"  # onecycle | cosine (warmup) | constant | plateau; auto: constant for seed_cnn
    momentum: float = 0.9  # SGD only
    label_smoothing: float | None = None  # None: 0 for seed_cnn, 0.1 otherwise
    ema: bool = False  # evaluate and save an exponential moving average of the weights
    ema_decay: float = 0.999
    grad_clip: float = 0.0  # max global gradient norm; 0 = off
    patience: int = 0  # early stopping: epochs without a better val accuracy; 0 = off
    time_budget: float | None = None  # seconds for training + validation; epochs and schedule are planned to fit
    balance: bool = False  # weight the loss by inverse class frequency (imbalanced data)
    augment: str = "auto"  # none | light | standard | strong; auto: none for seed_cnn, light otherwise
    aug_args: dict[str, Any] = field(default_factory=dict)  # per-op overrides, e.g. {rotate: 15, mixup: 0.2}
    tta: bool | None = None  # flip test-time augmentation for the final test score; None: on except seed_cnn
    test_scale: float | None = None  # eval-time input enlargement (models/layers.test_resize); None: from the crop augmentation; 1: off
    image_size: int | None = None  # resize images to N x N (None: keep the dataset's size; folders: 100)
    train_size: int | None = None  # train on N x N random crops of the loaded images, evaluate whole images at their size; None: the image size
    image_shape: list[int] | None = None  # H, W, C for seed CSV rows (None: infer a square shape)
    channels: int | None = None  # 3 (RGB) or 1 (grey) for image folders (None: 3)
    classes: list[str] | None = None  # class names for numeric labels (CSV / npz)
    val_split: float = 0.1  # fraction of train held out for validation when the data has no val split
    seed: int = 0
    precision: str = "auto"  # auto: bf16 autocast where the CPU/GPU runs it natively, else fp32
    device: str = "auto"
    deterministic: bool = False
    max_bad_fraction: float = 0.01  # unreadable images skipped up to this fraction, then an error
    stream: bool | None = None  # image folders: decode batches from disk (True), into memory (False); None: stream when too big for memory
    workers: int | None = None  # decoding processes when streaming; None: one per core but one, 1-4 (0: in the training process)

    def validate(self) -> "TrainConfig":
        if not self.data:
            raise ConfigError("no dataset given — pass --data PATH or --data builtin:shapes")
        _check(self.epochs is None or self.epochs >= 1, "epochs", self.epochs, "a whole number >= 1")
        _check(self.freeze_epochs is None or self.freeze_epochs >= 0, "freeze_epochs", self.freeze_epochs, "a whole number >= 0")
        _check(0 < self.backbone_lr <= 1, "backbone_lr", self.backbone_lr, "a fraction in (0, 1], e.g. 0.1")
        if self.freeze_epochs is not None and self.epochs is not None and self.freeze_epochs > self.epochs:
            raise ConfigError(f"freeze_epochs = {self.freeze_epochs} is larger than epochs = {self.epochs} — the frozen epochs are part"
                              " of --epochs; lower --freeze-epochs or raise --epochs")
        if self.pretrained is False and self.weights:
            raise ConfigError(f"weights = {self.weights!r} with pretrained = false — drop --no-pretrained or --weights")
        if (self.freeze or self.freeze_epochs) and not self.uses_pretrained and (self.model != "auto" or self.pretrained is False):
            raise ConfigError("freeze / freeze_epochs need a pretrained model — add --pretrained (or --weights FILE)")
        _check(self.batch_size is None or self.batch_size >= 1, "batch_size", self.batch_size, "a whole number >= 1")
        _check(self.lr is None or math.isfinite(self.lr) and self.lr > 0, "lr", self.lr, "a positive number such as 0.001")
        _check(self.weight_decay is None or self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        _check(self.schedule in SCHEDULES, "schedule", self.schedule, "one of " + ", ".join(SCHEDULES))
        _check(self.augment in AUGMENTS, "augment", self.augment, "one of " + ", ".join(AUGMENTS))
        _check(0 <= self.momentum < 1, "momentum", self.momentum, "a number in [0, 1)")
        _check(self.label_smoothing is None or 0 <= self.label_smoothing < 1, "label_smoothing", self.label_smoothing, "a fraction in [0, 1)")
        _check(self.test_scale is None or not isinstance(self.test_scale, bool) and 1 <= self.test_scale <= 4, "test_scale", self.test_scale, "a number from 1 (off) to 4")
        _check(0 < self.ema_decay < 1, "ema_decay", self.ema_decay, "a number in (0, 1) such as 0.999")
        _check(self.grad_clip >= 0 and math.isfinite(self.grad_clip), "grad_clip", self.grad_clip, "a number >= 0 (0 = off)")
        _check(self.patience >= 0, "patience", self.patience, "a whole number >= 0 (0 = off)")
        _check(self.time_budget is None or math.isfinite(self.time_budget) and self.time_budget > 0, "time_budget",
               self.time_budget, "seconds > 0, e.g. 600")
        _check(0 <= self.val_split < 1, "val_split", self.val_split, "a fraction in [0, 1), e.g. 0.1")
        _check(0 <= self.max_bad_fraction <= 1, "max_bad_fraction", self.max_bad_fraction, "a fraction in [0, 1]")
        _check(self.workers is None or self.workers >= 0, "workers", self.workers, "a number of decoding processes >= 0")
        _check(self.image_size is None or self.image_size >= 8, "image_size", self.image_size, "a size in pixels >= 8")
        _check(self.train_size is None or not isinstance(self.train_size, bool) and isinstance(self.train_size, int) and self.train_size >= 8,
               "train_size", self.train_size, "a size in pixels >= 8")
        _check(self.channels in (None, 1, 3), "channels", self.channels, "1 (grey) or 3 (RGB)")
        _check(self.precision in PRECISIONS, "precision", self.precision, "one of " + ", ".join(PRECISIONS))
        _check(self.device in DEVICES, "device", self.device, "one of " + ", ".join(DEVICES))
        _check(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, "one of " + ", ".join(OPTIMIZERS))
        if self.image_shape is not None:
            ok = len(self.image_shape) == 3 and all(v >= 1 for v in self.image_shape) and self.image_shape[2] in (1, 3)
            _check(ok, "image_shape", self.image_shape, "H,W,C with C 1 or 3, e.g. 100,100,3")
        return self

    @property
    def uses_pretrained(self) -> bool:
        """Starts from pretrained weights (explicitly; the default recipe decides 'None' before training)."""
        return bool(self.pretrained or self.weights)

    def resolved(self) -> "TrainConfig":
        """A copy with every 'auto'/None recipe value filled in for this model (what the run folder records)."""
        cfg = dataclasses.replace(self, model_args=dict(self.model_args), aug_args=dict(self.aug_args))
        recipe = SEED_RECIPE if cfg.model == "seed_cnn" else PRETRAINED_RECIPE if cfg.uses_pretrained else ZOO_RECIPE
        for key, value in recipe.items():
            if getattr(cfg, key) in (None, "auto"):
                setattr(cfg, key, value)
        if cfg.uses_pretrained:
            cfg.pretrained = True
            if cfg.freeze_epochs is None:
                cfg.freeze_epochs = cfg.epochs if cfg.freeze and cfg.epochs else FROZEN_EPOCHS if cfg.epochs is None else 1
            if cfg.freeze:  # head only: every epoch is a frozen one
                cfg.epochs = cfg.freeze_epochs
            elif cfg.epochs is None and cfg.patience == 0:  # on a time budget: stop once val accuracy stops improving
                cfg.patience = PRETRAINED_PATIENCE
        if cfg.epochs is None:
            if cfg.time_budget is None:
                cfg.time_budget = DEFAULT_TIME_BUDGET_S
            cfg.epochs = 1000  # an upper bound; the time budget decides
        return cfg.validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r} is invalid — expected {expected}")


def _coerce(key: str, value: Any, annotation: Any, source: str) -> Any:
    """Check one value against its field type; ints are accepted for floats."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0], source)
    base = origin or annotation
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is list and isinstance(value, (list, tuple)):
        elem = args[0] if args else Any
        return [_coerce(key, v, elem, source) if elem is not Any else v for v in value]
    if base is dict and isinstance(value, dict):
        return dict(value)
    if base is Any or (isinstance(value, base) and not (base is int and isinstance(value, bool))):
        return value
    want = getattr(base, "__name__", str(base))
    raise ConfigError(f"{source}: {key} = {value!r} has the wrong type — expected {want}")


_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def config_from_dict(values: dict[str, Any], base: TrainConfig | None = None, source: str = "config") -> TrainConfig:
    """Overlay `values` on `base` (or the defaults); unknown keys and wrong types raise ConfigError."""
    cfg = dataclasses.replace(base) if base is not None else TrainConfig()
    for key, value in values.items():
        if key not in _HINTS:
            close = [k for k in _HINTS if k.split("_")[0] == str(key).split("_")[0]]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{source}: unknown key {key!r}{hint} — valid keys: {', '.join(_HINTS)}")
        setattr(cfg, key, _coerce(key, value, _HINTS[key], source))
    return cfg


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config (safe_load only) and return its mapping."""
    p = Path(path)
    if p.is_dir() and (p / "config.yaml").is_file():
        p = p / "config.yaml"
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist — pass a YAML file or a run folder")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p.name}{where}: not valid YAML ({getattr(e, 'problem', e)}) — fix the syntax") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p.name}: not a text file — pass a YAML config") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p.name}: expected a mapping of keys to values at the top level")
    return data
