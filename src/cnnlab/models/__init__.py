"""Model zoo. Importing this package registers every family."""

from cnnlab.models._registry import create_model, get_model_entry, list_models, register_model
from cnnlab.models import seed_cnn as _seed_cnn  # noqa: F401  (registers)

__all__ = ["create_model", "get_model_entry", "list_models", "register_model"]
