"""Build zoo models (and prefixed models of other libraries) with optional weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from kdforge.errors import ConfigError
from kdforge.models._registry import ModelInfo, registered_model_info
from kdforge.models.external import create_external, external_info, split_name
from kdforge.models.loading import load_pretrained, read_model_metadata, read_state_dict

__all__ = [
    "build_model",
    "create_model",
    "get_model_info",
    "load_model",
    "load_pretrained",
    "read_state_dict",
]


def get_model_info(name: str) -> ModelInfo:
    """What kdforge knows of model ``name`` (input size, family, default classes): the zoo's
    entry, or for ``torchvision/``, ``timm/`` and ``hf/`` names what their library says."""
    return external_info(name) if split_name(name) else registered_model_info(name)


def create_model(
    name: str, num_classes: int | None = None, pretrained: str | Path | None = None, **kwargs
) -> nn.Module:
    """Build the model ``name``, optionally loading weights from ``pretrained``.

    Args:
        name: a name from :func:`kdforge.models.list_models`, or a model of another library:
            ``torchvision/<arch>``, ``timm/<arch>`` or ``hf/<local folder>``
            (:mod:`kdforge.models.external`).
        num_classes: classifier outputs; the model's default (e.g. 100 for CIFAR) if None.
        pretrained: a ``.pth``/``.pt``/``.safetensors`` file (RepDistiller, mdistiller,
            torchvision or a ``kdforge export``) to load strictly (timm models: through
            timm's loader, which drops a classifier of another size).
        **kwargs: passed to the model's builder.
    """
    if split_name(name):
        return create_external(name, num_classes, pretrained, **kwargs)
    info = registered_model_info(name)
    model = info.builder(num_classes=num_classes or info.default_num_classes, **kwargs)
    if pretrained is not None:
        load_pretrained(model, pretrained)
    return model


def load_model(path: str | Path) -> nn.Module:
    """Rebuild the model a ``kdforge export`` or ``kdforge convert`` file holds, with its weights.

    The file's metadata names the model and its builder keywords, so nothing else is needed.

    Raises:
        CheckpointError: the file names no model (load it with
            ``create_model(name, pretrained=path)``) or does not fit the model it names.
    """
    name, num_classes, kwargs = read_model_metadata(path)
    return create_model(name, num_classes=num_classes, pretrained=path, **kwargs)


def build_model(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """``create_model(name, **kwargs)``; keywords the builder rejects (an unknown one, a bad
    value) are a :class:`~kdforge.errors.ConfigError` naming the model and the keywords."""
    try:
        return create_model(name, **kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name} cannot be built with {kwargs}: {err}") from None
