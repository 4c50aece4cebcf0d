"""cnnlab: learn, experiment with and deploy CNN image classifiers (PyTorch).

The public names are loaded on first use (PEP 562 `__getattr__`), so `import cnnlab` — and with it the CLI's
`--help` — does not import torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from cnnlab._version import __version__

_EXPORTS = {  # public name -> the module that defines it
    "load_dataset": "cnnlab.api", "create_model": "cnnlab.api", "list_models": "cnnlab.api", "train": "cnnlab.api",
    "evaluate": "cnnlab.api", "predict": "cnnlab.api", "load": "cnnlab.api", "cross_validate": "cnnlab.api", "register_model": "cnnlab.models",
    "explain": "cnnlab.insight.explain", "TrainConfig": "cnnlab.config", "CnnlabError": "cnnlab.errors",
    "Callback": "cnnlab.engine.callbacks", "StopTraining": "cnnlab.engine.trainer",
    "show_batch": "cnnlab.insight.notebook", "show_augmented": "cnnlab.insight.notebook", "interpret": "cnnlab.insight.notebook",
}

__all__ = ["load_dataset", "create_model", "list_models", "register_model", "train", "cross_validate", "evaluate", "predict", "explain", "load",
           "TrainConfig", "CnnlabError", "Callback", "StopTraining", "show_batch", "show_augmented", "interpret", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")  # `cnnlab.models` etc. without importing them first
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what type checkers and IDEs see
    from cnnlab.api import create_model, cross_validate, evaluate, list_models, load, load_dataset, predict, train
    from cnnlab.config import TrainConfig
    from cnnlab.engine.callbacks import Callback
    from cnnlab.engine.trainer import StopTraining
    from cnnlab.errors import CnnlabError
    from cnnlab.insight.explain import explain
    from cnnlab.insight.notebook import interpret, show_augmented, show_batch
    from cnnlab.models import register_model
