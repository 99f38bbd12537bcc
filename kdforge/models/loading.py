"""Read weight files into flat state dicts and load them strictly, naming what differs; write
weight files that name the model they belong to."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdforge.errors import CheckpointError
from kdforge.models._convert import read_weights_file

__all__ = [
    "load_pretrained",
    "model_metadata",
    "read_model_metadata",
    "read_state_dict",
    "save_weights",
]

# The metadata of a weights file written by kdforge (export, convert): safetensors' string
# header, or the "kdforge" entry of a .pth file next to its "state_dict".
_NAME, _CLASSES, _KWARGS = "model_name", "num_classes", "model_kwargs"

# Keys under which released checkpoints nest their weights (RepDistiller: "model",
# mdistiller: "model"/"net", kdforge training checkpoints: "student", many others).
_NESTED_KEYS = ("student", "model", "net", "state_dict", "model_state_dict")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``.pth`` file and return a flat state dict.

    Weights nested under ``student``/``model``/``net``/``state_dict`` are unwrapped and a
    ``module.`` prefix left by DataParallel/DDP is stripped.
    """
    path = Path(path)
    state = read_weights_file(path)
    if path.suffix != ".safetensors":
        for key in _NESTED_KEYS:
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_pretrained(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights from ``path`` into ``model`` strictly, naming missing/unexpected keys."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        lines = [f"{path} does not match {type(model).__name__}:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
            if keys:
                lines.append(
                    f"  {title} ({len(keys)}): {', '.join(keys[:8])}"
                    + (" ..." if len(keys) > 8 else "")
                )
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state)
    return model


def model_metadata(
    name: str, num_classes: int | None, kwargs: dict[str, Any], **extra: Any
) -> dict[str, str]:
    """The string metadata that lets :func:`kdforge.load_model` rebuild a model: its name,
    classes and builder keywords (JSON), plus ``extra`` entries (strings, or JSON)."""
    metadata = {
        _NAME: name,
        _CLASSES: "" if num_classes is None else str(num_classes),
        _KWARGS: json.dumps(kwargs, sort_keys=True),
    }
    for key, value in extra.items():
        metadata[key] = value if isinstance(value, str) else json.dumps(value)
    return metadata


def read_model_metadata(path: str | Path) -> tuple[str, int | None, dict[str, Any]]:
    """``(name, num_classes, builder keywords)`` stored by :func:`save_weights`.

    Raises:
        CheckpointError: the file does not exist, cannot be read or names no model.
    """
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                metadata = f.metadata() or {}
        except Exception as err:  # a damaged header
            raise CheckpointError(f"{path} cannot be read ({type(err).__name__}: {err})") from None
    else:
        state = read_weights_file(path)
        metadata = state.get("kdforge") if isinstance(state, dict) else None
    if not isinstance(metadata, dict) or not metadata.get(_NAME):
        raise CheckpointError(
            f"{path} does not name its model (not written by kdforge export or convert); "
            "load it with create_model(name, pretrained=...)"
        )
    classes = metadata.get(_CLASSES) or None
    return metadata[_NAME], classes and int(classes), json.loads(metadata.get(_KWARGS) or "{}")


def save_weights(
    state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]
) -> Path:
    """Write ``state`` with ``metadata`` atomically (a temporary file renamed over ``path``):
    ``.safetensors`` with a metadata header, any other suffix as ``torch.save`` of
    ``{"state_dict": state, "kdforge": metadata}``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in state.items()}, tmp, metadata=metadata)
        else:
            torch.save({"state_dict": state, "kdforge": metadata}, tmp)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # as any new file, not mkstemp's 0o600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
