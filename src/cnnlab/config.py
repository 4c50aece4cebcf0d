"""One typed config object flows CLI -> training -> run folder -> model file.

Precedence: defaults < YAML file (`--config`) < explicit CLI flags / keyword arguments.
Unknown keys and wrong types are errors that name the key and the fix (nanoGPT-style loud overrides).
Where the run is written (`out`, `overwrite`, `resume`) is not part of the experiment, so it is not here:
`cnnlab train --config RUN/config.yaml` repeats an experiment into a new run folder.

Each option is declared once, as a field: its default, and in its metadata (`option(...)`) the help, choices,
metavar and flag spelling that cnnlab.cli turns into the command-line flag. DataOptions holds the options of
every command that reads a dataset; TrainConfig adds the training options.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
OPTIMIZERS = ("auto", "adamw", "sgd", "adam")
SCHEDULES = ("auto", "onecycle", "cosine", "constant", "plateau")
BALANCES = ("none", "loss", "sampler")
AUGMENTS = ("auto", "none", "light", "standard", "strong", "randaugment", "trivialaugment")
CHANNELS = (1, 3)  # grey, RGB
RESIZES = ("squash", "crop", "pad")  # how a photo that is not square becomes N x N (data/images.fit_image)

# Defaults that several modules need, stated once.
DEFAULT_IMAGE_SIZE = 100  # image folders are resized to N x N (the seed's 100x100 images); also sizes an unbuilt model
DEFAULT_RESIZE = "squash"  # measured on cats/dogs photos: BENCHMARKS.md, docs/recipes.md "Aspect ratio"
DEFAULT_CHANNELS = 3
DEFAULT_NUM_CLASSES = 2  # sizes a model built without data (`cnnlab models`, `cnnlab summary --model`)
DEFAULT_VAL_SPLIT = 0.1  # fraction of train held out for validation when the data has no val split
DEFAULT_MAX_BAD_FRACTION = 0.01  # unreadable images skipped up to this fraction, then an error
DEFAULT_BATCH_SIZE = 64
DEFAULT_TIME_BUDGET_S = 600.0  # non-seed models without --epochs train for this long

# The recipe for every model but seed_cnn (which keeps the tutorial's Adam, constant LR, 5 epochs).
# Measured on 2000 cats/dogs JPEGs at 96 px (docs/recipes.md): AdamW + one-cycle + flip/translate +
# label smoothing + TTA beats SGD and plain Adam clearly within a few CPU minutes.
SEED_RECIPE = {"epochs": 5, "batch_size": DEFAULT_BATCH_SIZE, "lr": 1e-3, "optimizer": "adam", "schedule": "constant", "weight_decay": 0.0,
               "label_smoothing": 0.0, "augment": "none", "tta": False}
ZOO_RECIPE = {"batch_size": DEFAULT_BATCH_SIZE, "lr": 3e-3, "optimizer": "adamw", "schedule": "onecycle", "weight_decay": 0.05,
              "label_smoothing": 0.1, "augment": "light", "tta": True}
# Fine-tuning a pretrained backbone (docs/recipes.md, "Pretrained backbones"), after the frozen phase (the head
# fitted on features computed once: FROZEN_EPOCHS epochs on a time budget, fastai's 1 when --epochs is given):
# AdamW with a cosine schedule at a 3x lower peak LR than from scratch (the head; the backbone at backbone_lr
# times it), light augmentation, label smoothing, flip TTA.
PRETRAINED_RECIPE = {"batch_size": 32, "lr": 1e-3, "optimizer": "adamw", "schedule": "cosine", "weight_decay": 0.01,
                     "label_smoothing": 0.1, "augment": "light", "tta": True}
FROZEN_EPOCHS = 10
PRETRAINED_PATIENCE = 2  # fine-tuning on a time budget stops after this many epochs without a better val accuracy


def scratch_augment(channels: int, size: int) -> str:
    """The augmentation preset the default recipe trains a model from scratch with: standard (flip, crop, rotation,
    colour) for colour images of 48 px or more, light otherwise (docs/recipes.md)."""
    return "standard" if channels == 3 and size >= 48 else "light"


def option(default: Any = dataclasses.MISSING, *, help: str | None = None, flag: str | None = None, metavar: str | None = None,
           choices: tuple | None = None, cli: bool = True, default_factory: Any = dataclasses.MISSING, const: Any = None,
           pairs: bool = False) -> Any:
    """A dataclass field that also declares its command-line flag (cnnlab.cli generates the flag from it).

    flag: the spelling when it is not `--` + the name with dashes (`--aug` for augment); cli=False: no flag.
    The kind of flag follows the field's type: a bool that defaults to False is a switch (`--ema`), other bools
    get `--x / --no-x`, a dict is a repeatable KEY=VALUE option (pairs=True: also KEY=VALUE,KEY=VALUE), list[int] is
    H,W,C and list[str] is A,B,...; const: the value of the flag given without one (`--balance` = loss).
    """
    meta = {"help": help, "flag": flag, "metavar": metavar, "choices": choices, "const": const, "pairs": pairs or None}
    meta = {k: v for k, v in meta.items() if v is not None}
    return field(default=default, default_factory=default_factory, metadata={**meta, "cli": cli})


@dataclass
class DataOptions:
    """How to read a dataset: the options of every command that takes --data (train, evaluate, predict, show,
    data convert/check, tune, lr-find). None means not given: the loader's default, or, for a trained model,
    the setting it was trained with.

    Adding a data option is one field here: each of those commands gets the flag, `load_kwargs()` passes it to
    cnnlab.load_dataset, and TrainConfig (a subclass) records it in config.yaml.
    """

    data: str | None = option(None, metavar="SPEC", help="dataset folder, labels table (.csv), seed CSV folder, .npz, builtin:shapes /"
                                                         " builtin:digits, or a public dataset: cifar10, cifar100, mnist, fashion-mnist")
    image_size: int | None = option(None, metavar="N", help="resize images to N x N")  # None: keep the data's size; folders: DEFAULT_IMAGE_SIZE
    resize: str | None = option(None, choices=RESIZES, help="photos that are not square: squash = stretch to N x N, crop = centre square,"
                                                            f" pad = letterbox with mean grey (default {DEFAULT_RESIZE}; a trained model:"
                                                            " as trained)")  # data/images.fit_image
    image_shape: list[int] | None = option(None, metavar="H,W,C", help="shape of one seed-CSV row (default: inferred square)")
    channels: int | None = option(None, choices=CHANNELS, help="3 = RGB, 1 = greyscale")  # None: 3 for image folders
    classes: list[str] | None = option(None, metavar="A,B,...", help="class names for numeric labels")  # CSV / npz labels
    val_split: float | None = option(None, metavar="F", help=f"fraction of train held out for validation (default {DEFAULT_VAL_SPLIT:g})")
    max_bad_fraction: float | None = option(None, metavar="F",
                                            help=f"skip unreadable images up to this fraction (default {DEFAULT_MAX_BAD_FRACTION:g})")
    stream: bool | None = option(None, help="image folders: decode batches from disk in worker processes instead of loading all images into"
                                            " memory (default: stream when the decoded images would exceed a quarter of available memory)")
    workers: int | None = option(None, metavar="N", help="decoding processes when streaming (default: cores - 1, 1 to 4; 0 = none)")
    labels: str | None = option(None, metavar="FILE.csv", help="a labels table (CSV/TSV with a header row) naming each image of --data FOLDER"
                                                               " and its label; paths relative to the folder or to the table's folder (a"
                                                               " .csv given as --data needs no --labels)")
    file_col: str | None = option(None, metavar="NAME", help="labels table: the column of image files (default: detected — fname, file,"
                                                             " filename, image, image_id, id, path, or the only column of image file names)")
    label_col: str | None = option(None, metavar="NAME", help="labels table: the column of labels (default: detected — label, labels, class,"
                                                              " target, category, or the only other column)")
    label_delim: str | None = option(None, metavar="CHAR", help="labels table: the character between several labels in one cell, e.g. ' '"
                                                                " or '|' (multi-label)")

    def load_kwargs(self) -> dict[str, Any]:
        """The options that are set, as keyword arguments of cnnlab.load_dataset (the SPEC itself left out)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(DataOptions) if f.name != "data" and getattr(self, f.name) is not None}


def _data_default(name: str, default: Any) -> Any:
    """A DataOptions field, declared there, with the default a training run records instead of None."""
    return field(default=default, metadata=next(f for f in dataclasses.fields(DataOptions) if f.name == name).metadata)


@dataclass
class TrainConfig(DataOptions):
    """Everything that defines a training run; each field with a flag is a `cnnlab train` option."""

    data: str = _data_default("data", "")
    val_split: float = _data_default("val_split", DEFAULT_VAL_SPLIT)
    max_bad_fraction: float = _data_default("max_bad_fraction", DEFAULT_MAX_BAD_FRACTION)
    resize: str = _data_default("resize", DEFAULT_RESIZE)  # recorded, so a run repeats with the mode it trained with
    model: str = option("auto", help="registry name (see `cnnlab models`); default auto: chosen with the image size and augmentation from the"
                                     " data and time budget (docs/recipes.md)")  # engine/auto.py chooses
    model_args: dict[str, Any] = option(default_factory=dict, flag="--model-arg", metavar="KEY=VALUE", help="model argument, e.g. width=48")
    pretrained: bool | None = option(None, help="start from ImageNet weights (`cnnlab models --pretrained` lists them); default: the default recipe"
                                                " fine-tunes a pretrained backbone when its weights are on this machine, --no-pretrained trains from scratch")
    weights: str | None = option(None, metavar="NAME|FILE", help="start from these weights: a catalogued weight set or a state-dict/safetensors"
                                                                 " file (implies --pretrained)")
    freeze_epochs: int | None = option(None, metavar="N", help="pretrained: train only the new head for the first N epochs (on features computed"
                                                                 " once), then unfreeze")  # None: the recipe's
    freeze: bool = option(False, help="pretrained: keep the backbone frozen throughout (train the head only)")
    backbone_lr: float = option(0.1, metavar="F", help="pretrained, unfrozen: the backbone's learning rate as a fraction of the head's"
                                                       " (default 0.1)")  # discriminative LRs
    freeze_early: bool = option(True, help="pretrained, unfrozen: keep the stem and the blocks at 1/2 and 1/4 resolution frozen (default on:"
                                           " ~1.5-2x faster steps on a CPU; --no-freeze-early unfreezes every layer)")
    epochs: int | None = option(None, help=f"default {SEED_RECIPE['epochs']} for seed_cnn; other models train for --time-budget")
    time_budget: float | None = option(None, metavar="SECONDS", help="plan epochs and LR schedule to finish training within this time (default"
                                                                     f" {DEFAULT_TIME_BUDGET_S:g} for non-seed models without --epochs)")
    batch_size: int | None = option(None, help="images per optimizer step (the global batch with --nproc); default"
                                               f" {DEFAULT_BATCH_SIZE}, the default recipe chooses 32 for up to 10000 training images")
    lr: float | None = option(None, help=f"(peak) learning rate; default {SEED_RECIPE['lr']:g} for seed_cnn, {ZOO_RECIPE['lr']:g} otherwise")
    optimizer: str = option("auto", choices=OPTIMIZERS, help="sgd uses Nesterov momentum")  # auto: adam for seed_cnn, adamw otherwise
    schedule: str = option("auto", choices=SCHEDULES)  # onecycle | cosine (warmup) | constant | plateau; auto: constant for seed_cnn
    weight_decay: float | None = option(None, help=f"not applied to norm weights and biases (default {ZOO_RECIPE['weight_decay']:g} for AdamW)")
    momentum: float = option(0.9, cli=False)  # SGD only
    label_smoothing: float | None = option(None, metavar="F")  # None: 0 for seed_cnn, 0.1 otherwise
    ema: bool = option(False, help="evaluate and save an exponential moving average of the weights")
    ema_decay: float = option(0.999, cli=False)
    # experiment trackers (cnnlab/track/): None = auto
    tensorboard: bool | None = option(None, help="log losses, accuracy, LR, hyperparameters and images to RUN/tensorboard (default: on when"
                                                 " the tensorboard package is installed; --tensorboard fails without it)")
    mlflow: bool | None = option(None, help="log params, per-epoch metrics and the model file to MLflow (MLFLOW_TRACKING_URI, else"
                                            " MLflow's default store; default: on when MLFLOW_TRACKING_URI is set)")
    grad_clip: float = option(0.0, metavar="NORM", help="clip the global gradient norm (0 = off)")
    accum_steps: int = option(1, metavar="N", help="add up the gradients of N batches before each optimizer step: the update of an N times"
                                                   " larger batch, in the memory of one (default 1)")
    checkpoint_every: str = option("auto", metavar="N|TIME", help="also save last.ckpt mid-epoch every N optimizer steps or every TIME (90s,"
                                                                  " 10m, 1h), so a killed run loses at most that much; auto = every 5"
                                                                  " minutes, off = at epoch ends only")
    patience: int = option(0, metavar="N", help="stop after N epochs without a better val accuracy")  # 0 = off
    balance: str = option("none", choices=BALANCES, const="loss", help="imbalanced classes: loss = weight the loss by inverse class"
                                                                        " frequency (also plain --balance), sampler = draw each epoch's"
                                                                        " images class-balanced (with replacement, seeded)")
    class_weights: dict[str, float] = option(default_factory=dict, flag="--class-weights", metavar="CLASS=W,...", pairs=True,
                                             help="weight the loss per class by name, e.g. cat=2,dog=1 (classes left out: 1)")
    augment: str = option("auto", flag="--aug", choices=AUGMENTS, help="augmentation preset")  # auto: none for seed_cnn, light otherwise
    aug_args: dict[str, Any] = option(default_factory=dict, flag="--aug-arg", metavar="OP=VALUE", help="per-op override, e.g. rotate=15 or mixup=0.2")
    tta: bool | None = option(None, help="test-time augmentation for the final test score: each image and its mirror, at the trained size and the"
                                         " test scale when the model has one (default on except seed_cnn)")
    tune_thresholds: bool = option(False, help="multi-label: choose each class's decision threshold on the validation split to maximise"
                                               " its F1 (default 0.5 for every class); stored in the model file")  # engine/multilabel.py
    train_size: int | None = option(None, metavar="N", help="train on N x N random crops of the --image-size images and evaluate the whole"
                                                            " images (global-pool models; default recipe on folders: chosen with the image size)")
    test_scale: float | None = option(None, metavar="F", help="enlarge inputs F times in eval mode (global-pool models; default: matched to --aug's"
                                                              " random crops, 1 = off)")  # models/layers.test_resize
    seed: int = option(0)
    precision: str = option("auto", choices=PRECISIONS)  # auto: bf16 autocast where the CPU/GPU runs it natively, else fp32
    device: str = option("auto", choices=DEVICES)
    deterministic: bool = option(False)

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
        _check(self.balance in BALANCES, "balance", self.balance, "one of " + ", ".join(BALANCES))
        for name, w in self.class_weights.items():
            _check(not isinstance(w, bool) and isinstance(w, (int, float)) and math.isfinite(w) and w > 0, "class_weights",
                   f"{name}={w}", "a positive weight per class, e.g. cat=2,dog=1")
        if self.class_weights and self.balance == "loss":
            raise ConfigError("class_weights and balance = loss both set the loss weights — choose one (drop --balance or --class-weights)")
        _check(self.accum_steps >= 1, "accum_steps", self.accum_steps, "a whole number of batches >= 1 (1 = off)")
        parse_checkpoint_every(self.checkpoint_every)
        _check(self.time_budget is None or math.isfinite(self.time_budget) and self.time_budget > 0, "time_budget",
               self.time_budget, "seconds > 0, e.g. 600")
        _check(0 <= self.val_split < 1, "val_split", self.val_split, "a fraction in [0, 1), e.g. 0.1")
        _check(0 <= self.max_bad_fraction <= 1, "max_bad_fraction", self.max_bad_fraction, "a fraction in [0, 1]")
        _check(self.workers is None or self.workers >= 0, "workers", self.workers, "a number of decoding processes >= 0")
        _check(self.image_size is None or self.image_size >= 8, "image_size", self.image_size, "a size in pixels >= 8")
        _check(self.resize in RESIZES, "resize", self.resize, "one of " + ", ".join(RESIZES))
        _check(self.train_size is None or not isinstance(self.train_size, bool) and isinstance(self.train_size, int) and self.train_size >= 8,
               "train_size", self.train_size, "a size in pixels >= 8")
        _check(self.channels is None or self.channels in CHANNELS, "channels", self.channels, "1 (grey) or 3 (RGB)")
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
        values = dataclasses.asdict(self)
        return {key: values[key] for key in _HINTS}  # in the saved key order

    def to_yaml(self) -> str:
        import yaml

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


# config.yaml (and a model file's config) lists the keys in the order earlier versions wrote them, so the files of
# old and new runs diff cleanly; a key added later follows in declaration order.
_SAVED_KEY_ORDER = ("data", "model", "model_args", "pretrained", "weights", "freeze_epochs", "freeze", "backbone_lr", "freeze_early", "epochs",
                    "batch_size", "lr", "optimizer", "weight_decay", "schedule", "momentum", "label_smoothing", "ema", "ema_decay", "grad_clip",
                    "patience", "time_budget", "balance", "augment", "aug_args", "tta", "test_scale", "image_size", "train_size",
                    "image_shape", "channels", "classes", "val_split", "seed", "precision", "device", "deterministic", "max_bad_fraction",
                    "stream", "workers")
_TYPES = typing.get_type_hints(TrainConfig)
_HINTS = {key: _TYPES[key] for key in [*(k for k in _SAVED_KEY_ORDER if k in _TYPES), *(k for k in _TYPES if k not in _SAVED_KEY_ORDER)]}


def config_from_dict(values: dict[str, Any], base: TrainConfig | None = None, source: str = "config") -> TrainConfig:
    """Overlay `values` on `base` (or the defaults); unknown keys and wrong types raise ConfigError."""
    cfg = dataclasses.replace(base) if base is not None else TrainConfig()
    for key, value in values.items():
        if key not in _HINTS:
            close = [k for k in _HINTS if k.split("_")[0] == str(key).split("_")[0]]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{source}: unknown key {key!r}{hint} — valid keys: {', '.join(_HINTS)}")
        if key == "balance" and isinstance(value, bool):  # written as a switch by earlier versions
            value = "loss" if value else "none"
        setattr(cfg, key, _coerce(key, value, _HINTS[key], source))
    return cfg


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config (safe_load only) and return its mapping."""
    p = Path(path)
    if p.is_dir() and (p / "config.yaml").is_file():
        p = p / "config.yaml"
    if p.is_dir():
        raise ConfigError(f"{p}: a folder without config.yaml — pass a YAML file or a run folder (which holds config.yaml)")
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist — pass a YAML file or a run folder")
    import yaml  # here, not at the top: `cnnlab --help` never needs it

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


CHECKPOINT_EVERY_AUTO_S = 300.0  # "auto": a mid-epoch checkpoint every 5 minutes (only epochs longer than that get one)


def parse_checkpoint_every(value: str | int | None) -> tuple[int | None, float | None]:
    """`--checkpoint-every` as (steps, seconds): N optimizer steps, or a time such as 90s / 10m / 1h; 'auto' is
    every 5 minutes, 'off' (or None) only at epoch ends."""
    if value is None or value == "off":
        return None, None
    if value == "auto":
        return None, CHECKPOINT_EVERY_AUTO_S
    text = str(value).strip().lower()
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    try:
        if text[-1:] in units:
            seconds = float(text[:-1]) * units[text[-1]]
            if seconds > 0:
                return None, seconds
        elif int(text) > 0:
            return int(text), None
    except ValueError:
        pass
    raise ConfigError(f"checkpoint_every = {value!r} is invalid — use a number of optimizer steps >= 1, a time such as 90s, 10m "
                      "or 1h, auto (every 5 minutes) or off")
