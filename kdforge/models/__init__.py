"""Model zoo: ``create_model(name, num_classes=..., pretrained=PATH)`` and ``list_models()``."""

from kdforge.models import cifar, detection, imagenet, segmentation, vit  # noqa: F401  (registers)
from kdforge.models._registry import ModelInfo, list_models, register_model
from kdforge.models.factory import create_model, get_model_info, load_pretrained, read_state_dict

__all__ = [
    "ModelInfo",
    "create_model",
    "get_model_info",
    "list_models",
    "load_pretrained",
    "read_state_dict",
    "register_model",
]
