"""Read weight files into flat state dicts and load them strictly, naming what differs."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kdforge.errors import CheckpointError
from kdforge.models._convert import read_weights_file

__all__ = ["load_pretrained", "read_state_dict"]

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
