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
OPTIMIZERS = ("adam",)


@dataclass
class TrainConfig:
    data: str = ""
    model: str = "seed_cnn"
    model_args: dict[str, Any] = field(default_factory=dict)
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    image_size: int | None = None  # resize images to N x N (None: keep the dataset's size; folders: 100)
    image_shape: list[int] | None = None  # H, W, C for seed CSV rows (None: infer a square shape)
    channels: int | None = None  # 3 (RGB) or 1 (grey) for image folders (None: 3)
    classes: list[str] | None = None  # class names for numeric labels (CSV / npz)
    val_split: float = 0.1  # fraction of train held out for validation when the data has no val split
    seed: int = 0
    precision: str = "auto"  # auto: bf16 autocast where the CPU/GPU runs it natively, else fp32
    device: str = "auto"
    deterministic: bool = False
    max_bad_fraction: float = 0.01  # unreadable images skipped up to this fraction, then an error

    def validate(self) -> "TrainConfig":
        if not self.data:
            raise ConfigError("no dataset given — pass --data PATH or --data builtin:shapes")
        _check(self.epochs >= 1, "epochs", self.epochs, "a whole number >= 1")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "a whole number >= 1")
        _check(math.isfinite(self.lr) and self.lr > 0, "lr", self.lr, "a positive number such as 0.001")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        _check(0 <= self.val_split < 1, "val_split", self.val_split, "a fraction in [0, 1), e.g. 0.1")
        _check(0 <= self.max_bad_fraction <= 1, "max_bad_fraction", self.max_bad_fraction, "a fraction in [0, 1]")
        _check(self.image_size is None or self.image_size >= 8, "image_size", self.image_size, "a size in pixels >= 8")
        _check(self.channels in (None, 1, 3), "channels", self.channels, "1 (grey) or 3 (RGB)")
        _check(self.precision in PRECISIONS, "precision", self.precision, "one of " + ", ".join(PRECISIONS))
        _check(self.device in DEVICES, "device", self.device, "one of " + ", ".join(DEVICES))
        _check(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, "one of " + ", ".join(OPTIMIZERS))
        if self.image_shape is not None:
            ok = len(self.image_shape) == 3 and all(v >= 1 for v in self.image_shape) and self.image_shape[2] in (1, 3)
            _check(ok, "image_shape", self.image_shape, "H,W,C with C 1 or 3, e.g. 100,100,3")
        return self

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
