"""Model zoo. Importing this package registers every family."""

from cnnlab.models._registry import create_model, get_model_entry, list_models, register_model
from cnnlab.models import seed_cnn as _seed_cnn  # noqa: F401  (registers)
from cnnlab.models import vgg as _vgg  # noqa: F401
from cnnlab.models import resnet as _resnet  # noqa: F401
from cnnlab.models import mobilenet as _mobilenet  # noqa: F401
from cnnlab.models import convnext as _convnext  # noqa: F401
from cnnlab.models import efficientnet as _efficientnet  # noqa: F401
from cnnlab.models import torchvision_nets as _torchvision_nets  # noqa: F401
from cnnlab.models import layer_list as _layer_list  # noqa: F401

__all__ = ["create_model", "get_model_entry", "list_models", "register_model"]
