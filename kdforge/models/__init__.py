"""Model zoo: ``create_model(name, num_classes=..., pretrained=PATH)``, ``list_models()`` and
``load_model(PATH)`` for files that name their model (``kdforge export``/``convert``)."""

from kdforge.models import cifar, detection, imagenet, segmentation, vit  # noqa: F401  (registers)
from kdforge.models._registry import ModelInfo, list_models, register_model
from kdforge.models.factory import (
    create_model,
    get_model_info,
    load_model,
    load_pretrained,
    read_state_dict,
)

__all__ = [
    "ModelInfo",
    "create_model",
    "get_model_info",
    "list_models",
    "load_model",
    "load_pretrained",
    "read_state_dict",
    "register_model",
]
