"""Models from other libraries, named by prefix wherever kdforge takes a model name.

* ``torchvision/<arch>``: ``torchvision.models.get_model(arch, num_classes=...)``; a
  ``pretrained`` file loads strictly, so ImageNet weights need ``num_classes`` 1000, as
  torchvision itself requires.
* ``timm/<arch>``: ``timm.create_model(arch, num_classes=...)``; a ``pretrained`` file goes
  through timm's own loader, which drops a classifier whose size differs (fine-tuning), as
  ``timm.create_model(..., pretrained=True)`` does.
* ``hf/<folder>``: ``transformers.AutoModelForImageClassification`` from a local folder
  (``save_pretrained`` layout; the hub is never asked). ``num_classes`` sets ``num_labels``;
  a classifier of another size is re-initialised, as ``ignore_mismatched_sizes=True`` does.
  The model is wrapped in :class:`HuggingFaceClassifier`, which returns the logits tensor.

Nothing here imports torchvision, timm or transformers until such a name is used; a missing
package is a :class:`~kdforge.errors.MissingDependencyError` naming what to install.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import Tensor, nn

from kdforge.errors import ConfigError, MissingDependencyError
from kdforge.models._registry import ModelInfo
from kdforge.models.loading import load_pretrained

__all__ = ["PREFIXES", "HuggingFaceClassifier", "create_external", "external_info", "logits_of"]

# prefix -> the package it needs
PREFIXES = {"torchvision": "torchvision", "timm": "timm", "hf": "transformers"}


def split_name(name: str) -> tuple[str, str] | None:
    """``("timm", "resnet18")`` for ``"timm/resnet18"``; None for a zoo name."""
    prefix, sep, rest = name.partition("/")
    return (prefix, rest) if sep and prefix in PREFIXES else None


def _package(prefix: str, name: str) -> ModuleType:
    package = PREFIXES[prefix]
    try:
        return importlib.import_module(package)
    except (ImportError, RuntimeError) as err:  # RuntimeError: torchvision built for another torch
        raise MissingDependencyError(
            f"model {name!r} needs {package}, which does not import ({err}); "
            f"`pip install {package}` (or use `make test-interop`'s environment)"
        ) from None


def logits_of(output: Any) -> Any:
    """The logits of a model-output object (``.logits`` of a transformers ``ModelOutput`` or
    any mapping with a ``logits`` entry); other outputs are returned unchanged."""
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    return output


class HuggingFaceClassifier(nn.Module):
    """A transformers image classifier that returns its logits tensor (not a ModelOutput)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor) -> Tensor:
        return logits_of(self.model(pixel_values=pixel_values))


def _hf_folder(name: str, rest: str) -> Path:
    folder = Path(rest).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"model {name!r}: {folder} is not a Hugging Face model folder (no config.json); "
            "give a folder written by save_pretrained (the hub is not used)"
        )
    return folder


def _build_torchvision(arch: str, num_classes: int, **kwargs: Any) -> nn.Module:
    torchvision = _package("torchvision", f"torchvision/{arch}")
    if arch not in torchvision.models.list_models():
        raise ConfigError(_unknown("torchvision", arch, torchvision.models.list_models()))
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)


def _build_timm(
    arch: str, num_classes: int, pretrained: str | Path | None = None, **kwargs: Any
) -> nn.Module:
    timm = _package("timm", f"timm/{arch}")
    if not timm.is_model(arch):
        raise ConfigError(_unknown("timm", arch, timm.list_models()))
    if pretrained is None:
        return timm.create_model(arch, num_classes=num_classes, **kwargs)
    overlay = {"file": str(pretrained), "hf_hub_id": None, "url": None}
    return timm.create_model(
        arch, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=num_classes, **kwargs
    )


def _build_hf(folder: Path, num_classes: int | None, **kwargs: Any) -> nn.Module:
    transformers = _package("hf", f"hf/{folder}")
    auto = transformers.AutoModelForImageClassification
    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    options: dict[str, Any] = dict(kwargs)
    if num_classes is not None and num_classes != config.num_labels:
        options.update(num_labels=num_classes, ignore_mismatched_sizes=True)
    has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
    if has_weights:
        model = auto.from_pretrained(folder, local_files_only=True, **options)
    else:  # a config alone: a new model of that architecture
        model = auto.from_config(config.__class__.from_dict({**config.to_dict(), **options}))
    return HuggingFaceClassifier(model)


def _unknown(prefix: str, arch: str, known: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(arch, known, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(f'{prefix}/{c}' for c in close)}?" if close else ""
    return f"unknown model {prefix}/{arch}{hint}"


def external_info(name: str) -> ModelInfo:
    """What :func:`kdforge.models.get_model_info` says of a prefixed name (family
    ``external``; the builder takes ``num_classes`` and the library's keywords)."""
    prefix, rest = split_name(name) or ("", "")
    if prefix == "torchvision":
        torchvision = _package(prefix, name)
        if rest not in torchvision.models.list_models():
            raise ConfigError(_unknown(prefix, rest, torchvision.models.list_models()))
        weights = list(torchvision.models.get_model_weights(rest))
        crop = weights[0].transforms().crop_size[0] if weights else 224
        return ModelInfo(name, partial(_build_torchvision, rest), (3, crop, crop), "external", 1000)
    if prefix == "timm":
        timm = _package(prefix, name)
        if not timm.is_model(rest):
            raise ConfigError(_unknown(prefix, rest, timm.list_models()))
        cfg = timm.get_pretrained_cfg(rest)
        size = tuple(cfg.input_size) if cfg is not None else (3, 224, 224)
        classes = cfg.num_classes if cfg is not None else 1000
        return ModelInfo(name, partial(_build_timm, rest), size, "external", classes)
    folder = _hf_folder(name, rest)
    transformers = _package(prefix, name)
    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    side = getattr(config, "image_size", 224)
    side = side if isinstance(side, int) else side[0]
    channels = getattr(config, "num_channels", 3)
    size = (channels, side, side)
    return ModelInfo(name, partial(_build_hf, folder), size, "external", config.num_labels)


def create_external(
    name: str, num_classes: int | None, pretrained: str | Path | None, **kwargs: Any
) -> nn.Module:
    """Build a prefixed model, loading ``pretrained`` the way its library does."""
    prefix, _ = split_name(name) or ("", "")
    info = external_info(name)
    if prefix == "timm":
        return info.builder(num_classes or info.default_num_classes, pretrained, **kwargs)
    model = info.builder(num_classes or info.default_num_classes, **kwargs)
    if pretrained is not None:
        load_pretrained(model, pretrained)
    return model
