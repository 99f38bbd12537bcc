"""A small, loud model registry: a dict of builders keyed by name."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from kdforge.errors import ConfigError

__all__ = ["ModelInfo", "list_models", "register_model", "registered_model_info"]


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model besides its builder."""

    name: str
    builder: Callable[..., nn.Module]
    input_size: tuple[int, int, int]  # (C, H, W) the model is usually trained at
    family: str  # "cifar", "imagenet", "detection", "segmentation"; "external" (other libraries)
    default_num_classes: int


_MODELS: dict[str, ModelInfo] = {}


def register_model(
    name: str, *, input_size: tuple[int, int, int], family: str, num_classes: int
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``builder(num_classes=...) -> nn.Module`` under ``name``; duplicates raise."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = ModelInfo(name, builder, input_size, family, num_classes)
        return builder

    return decorator


def registered_model_info(name: str) -> ModelInfo:
    """Return the registry entry for ``name``; an unknown name lists the close and valid ones."""
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=5, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown model {name!r}.{hint} Known models: {', '.join(sorted(_MODELS))}"
        )
    return _MODELS[name]


def list_models(family: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally of one family."""
    return sorted(n for n, info in _MODELS.items() if family in (None, info.family))
