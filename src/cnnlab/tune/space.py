"""The search space of `cnnlab tune`: a built-in default and a YAML file format that replaces it.

Each top-level key names what is tuned; its value says how:

    lr:           {low: 1.0e-4, high: 1.0e-2, log: true}   # float range (log scale)
    epochs:       {low: 1, high: 3}                         # int range (both bounds whole numbers)
    batch_size:   {choices: [32, 64, 128]}                  # categorical
    weight_decay: 0.01                                      # fixed for every trial

Keys are TrainConfig fields (lr, batch_size, epochs, time_budget, weight_decay, optimizer, schedule,
augment, label_smoothing, ema, ...), `width` (the model's width argument: `width`, or `filters` for
seed_cnn), `model_args.NAME` and `aug_args.NAME`. Data keys (image_size, val_split, ...) are not tunable:
the dataset is loaded once per tune process. Every problem is a ConfigError naming the key and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.config import TrainConfig, _HINTS, config_from_dict, load_config_file
from cnnlab.errors import ConfigError

# Loaded once per tune process (or where the tune command runs), so not tunable per trial.
FIXED_ONLY = ("data", "image_size", "image_shape", "channels", "classes", "val_split", "seed", "max_bad_fraction", "stream", "workers",
              "device", "model_args", "aug_args")
TUNABLE = tuple(k for k in _HINTS if k not in FIXED_ONLY)


@dataclass(frozen=True)
class Param:
    """One tuned key: a range (low/high[, log, step]), choices, or a fixed value."""

    name: str
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: tuple | None = None
    fixed: Any = None
    is_fixed: bool = False

    @property
    def is_int(self) -> bool:
        if self.name in _HINTS:  # a TrainConfig field: its declared type decides
            return self.name in _INT_KEYS
        return isinstance(self.low, int) and isinstance(self.high, int)

    def describe(self) -> str:
        if self.is_fixed:
            return f"{self.name} = {self.fixed!r}"
        if self.choices is not None:
            return f"{self.name} in {list(self.choices)}"
        return f"{self.name} in [{self.low}, {self.high}]{' (log)' if self.log else ''}"


_INT_KEYS = {k for k, t in _HINTS.items() if t in (int, int | None)}


def default_space(fixed: dict[str, Any] | None = None) -> dict[str, Param]:
    """The built-in space. Keys given in `fixed` (e.g. epochs from --epochs) are not searched.

    Epochs are searched unless --epochs or --time-budget fixes the training length of every trial. With
    `--set pretrained=true` the space is the fine-tuning one: LR, backbone LR ratio, frozen epochs, weight decay.
    """
    fixed = fixed or {}
    if fixed.get("pretrained") or fixed.get("weights"):  # fine-tuning: how long to keep the backbone frozen, how fast it learns
        space = {
            "lr": Param("lr", low=1e-4, high=3e-3, log=True),
            "backbone_lr": Param("backbone_lr", low=0.01, high=0.5, log=True),
            "freeze_epochs": Param("freeze_epochs", low=1, high=3),
            "weight_decay": Param("weight_decay", low=1e-4, high=1e-1, log=True),
            "augment": Param("augment", choices=("none", "light", "standard", "trivialaugment")),
            "epochs": Param("epochs", low=3, high=6),
        }
        if "time_budget" in fixed or "epochs" in fixed:
            space.pop("epochs")
        if "model" not in fixed:
            space["model"] = Param("model", choices=("efficientnet_lite0", "efficientnet_lite2"))
        return {k: v for k, v in space.items() if k not in fixed}
    space = {
        "model": Param("model", choices=("seed_cnn", "resnet9")),
        "width": Param("width", choices=(16, 32, 48)),
        "lr": Param("lr", low=1e-4, high=1e-2, log=True),
        "batch_size": Param("batch_size", choices=(32, 64, 128)),
        "weight_decay": Param("weight_decay", low=1e-5, high=1e-1, log=True),
        "augment": Param("augment", choices=("none", "light", "standard", "strong", "randaugment", "trivialaugment")),
        "epochs": Param("epochs", low=2, high=10),
    }
    if "time_budget" in fixed or "epochs" in fixed:
        space.pop("epochs")
    if "model" in fixed:  # a fixed model without a width argument (e.g. mobilenetv2's width_mult): width is not searched
        from cnnlab.models._registry import get_model_entry

        if width_arg(get_model_entry(str(fixed["model"])).arg_names()) is None:
            space.pop("width")
    return {k: v for k, v in space.items() if k not in fixed}


def parse_space(data: Any, source: str) -> dict[str, Param]:
    """A mapping (from YAML) -> checked Params; raises ConfigError naming the key and the fix."""
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{source}: a search space is a non-empty mapping of parameter -> range, e.g. lr: {{low: 1.0e-4, high: 1.0e-2, log: true}}")
    space = {}
    for name, spec in data.items():
        space[str(name)] = _parse_param(str(name), spec, source)
    return space


def load_space_file(path: str | Path) -> dict[str, Param]:
    return parse_space(load_config_file(path), Path(path).name)


def _check_name(name: str, source: str) -> None:
    if name == "width" or name in TUNABLE:
        return
    head, _, tail = name.partition(".")
    if head in ("model_args", "aug_args") and tail:
        return
    if name in FIXED_ONLY:
        raise ConfigError(f"{source}: {name!r} cannot be tuned (the dataset and device are set once per tune run)"
                          f" — pass it as a tune option (e.g. --image-size) instead")
    raise ConfigError(f"{source}: unknown parameter {name!r} — tunable: width, model_args.NAME, aug_args.NAME, {', '.join(TUNABLE)}")


def _check_value(name: str, value: Any, source: str) -> None:
    """A candidate value must be valid for its TrainConfig field (type and range)."""
    if name in _HINTS:
        cfg = config_from_dict({"data": "x", name: value}, source=f"{source}: {name}")
        try:
            cfg.validate()
        except ConfigError as e:
            raise ConfigError(f"{source}: {name} value {value!r} is invalid ({e})") from None
    elif name == "width" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ConfigError(f"{source}: width value {value!r} is invalid — expected a whole number >= 1")


def _parse_param(name: str, spec: Any, source: str) -> Param:
    _check_name(name, source)
    if not isinstance(spec, dict):
        _check_value(name, spec, source)
        return Param(name, fixed=spec, is_fixed=True)
    unknown = set(spec) - {"low", "high", "log", "step", "choices"}
    if unknown:
        raise ConfigError(f"{source}: {name}: unknown field(s) {sorted(unknown)} — use low/high[/log/step] or choices")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"}:
            raise ConfigError(f"{source}: {name}: give either choices or low/high, not both")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{source}: {name}: empty choices — list at least one value, e.g. choices: [32, 64]")
        for c in choices:
            if not isinstance(c, (str, int, float, bool)) and c is not None:
                raise ConfigError(f"{source}: {name}: choice {c!r} must be a number, string or boolean")
            _check_value(name, c, source)
        return Param(name, choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{source}: {name}: a range needs both low and high, e.g. {{low: 1.0e-4, high: 1.0e-2}}")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    for label, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{source}: {name}: {label} = {v!r} is not a finite number")
    if not isinstance(log, bool):
        raise ConfigError(f"{source}: {name}: log = {log!r} must be true or false")
    if not low < high:
        raise ConfigError(f"{source}: {name}: empty range (low {low} >= high {high}) — make low < high, or give a fixed value")
    if log and low <= 0:
        raise ConfigError(f"{source}: {name}: a log range needs low > 0 (got {low})")
    if step is not None and (log or isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise ConfigError(f"{source}: {name}: step = {step!r} must be a positive number and cannot combine with log")
    if name in _INT_KEYS:
        if not (float(low).is_integer() and float(high).is_integer()):
            raise ConfigError(f"{source}: {name}: whole-number parameter needs whole-number bounds (got {low}, {high})")
        low, high = int(low), int(high)
    for v in (low, high):
        _check_value(name, v, source)
    return Param(name, low=low, high=high, log=log, step=step)


def check_models(space: dict[str, Param], base: TrainConfig) -> None:
    """`width` and model_args.NAME must exist for every model the space can pick (before any trial runs)."""
    from cnnlab.models._registry import get_model_entry

    p = space.get("model")
    names = list(p.choices) if p is not None and p.choices else [p.fixed] if p is not None and p.is_fixed else [base.model]
    for model in names:
        args = get_model_entry(str(model)).arg_names()
        for key in space:
            if key == "width" and width_arg(args) is None:
                raise ConfigError(f"search space: model {model!r} has no width argument (its arguments: {', '.join(args)}) — remove 'width' or use model_args.NAME")
            if key.startswith("model_args.") and key.split(".", 1)[1] not in args:
                raise ConfigError(f"search space: {key}: model {model!r} has no argument {key.split('.', 1)[1]!r} — its arguments: {', '.join(args)}")


def width_arg(arg_names: list[str]) -> str | None:
    for candidate in ("width", "filters"):
        if candidate in arg_names:
            return candidate
    return None


def sample(space: dict[str, Param], trial) -> dict[str, Any]:
    """Ask an Optuna trial for one value per parameter; returns TrainConfig overrides (model_args/aug_args nested)."""
    values: dict[str, Any] = {}
    for name, p in space.items():
        if p.is_fixed:
            values[name] = p.fixed
        elif p.choices is not None:
            values[name] = trial.suggest_categorical(name, list(p.choices))
        elif p.is_int:
            values[name] = trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            values[name] = trial.suggest_float(name, float(p.low), float(p.high), step=p.step, log=p.log)
    overrides: dict[str, Any] = {"model_args": {}, "aug_args": {}}
    for name, v in values.items():
        head, _, tail = name.partition(".")
        if head in ("model_args", "aug_args") and tail:
            overrides[head][tail] = v
        elif name != "width":
            overrides[name] = v
    if "width" in values:
        overrides["_width"] = values["width"]  # resolved against the trial's model by apply()
    return overrides


def apply(overrides: dict[str, Any], base: TrainConfig, source: str) -> TrainConfig:
    """base + sampled overrides -> a validated TrainConfig (model_args/aug_args merged over the base's)."""
    from cnnlab.models._registry import get_model_entry

    values = {k: v for k, v in overrides.items() if not k.startswith("_")}
    values["model_args"] = {**base.model_args, **overrides.get("model_args", {})}
    values["aug_args"] = {**base.aug_args, **overrides.get("aug_args", {})}
    if "_width" in overrides:
        model = values.get("model", base.model)
        arg = width_arg(get_model_entry(model).arg_names())
        if arg is None:
            raise ConfigError(f"{source}: model {model!r} has no width argument")
        values["model_args"][arg] = overrides["_width"]
    return config_from_dict(values, base=base, source=source).validate()
