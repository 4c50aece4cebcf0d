"""cnnlab: learn, experiment with and deploy CNN image classifiers (PyTorch)."""

__version__ = "0.1.0"

from cnnlab.api import create_model, evaluate, list_models, load, load_dataset, predict, train  # noqa: E402
from cnnlab.config import TrainConfig  # noqa: E402
from cnnlab.errors import CnnlabError  # noqa: E402
from cnnlab.insight.explain import explain  # noqa: E402
from cnnlab.models import register_model  # noqa: E402

__all__ = ["load_dataset", "create_model", "list_models", "register_model", "train", "evaluate", "predict", "explain", "load",
           "TrainConfig", "CnnlabError", "__version__"]
