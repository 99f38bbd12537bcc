"""What the OpenMMLab checkpoint converters share: unwrapping a checkpoint and matching it
key by key against the model it should load into."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from kdforge.errors import CheckpointError

__all__ = [
    "Conversion",
    "choose_keywords",
    "config_tokens",
    "match_state_dict",
    "read_weights_file",
    "unwrap_checkpoint",
]


class Conversion(NamedTuple):
    """A converted checkpoint: the model to build, its keywords, where each keyword came from
    (``"weights"``, ``"file name"`` or ``"option"``) and the state dict it loads strictly."""

    name: str
    kwargs: dict[str, Any]
    origin: dict[str, str]
    state: dict[str, Tensor]


def config_tokens(config_name: str) -> list[str]:
    """The lower-case tokens of an OpenMMLab config or checkpoint file name, split at ``_``,
    ``-`` and ``.``: ``fcos_r50-caffe_fpn_gn-head_1x_coco-821213aa.pth`` -> ``["fcos",
    "r50", "caffe", "fpn", "gn", "head", "1x", "coco", "821213aa"]``."""
    stem = re.sub(r"\.(pth|pt|safetensors|py)$", "", Path(config_name).name.lower())
    return [t for t in re.split(r"[_.-]", stem) if t]


def choose_keywords(
    detected: Mapping[str, Any],
    from_name: Mapping[str, Any] | None,
    overrides: Mapping[str, Any],
    required: Sequence[str],
    refusal: Callable[[list[str]], str],
) -> tuple[dict[str, Any], dict[str, str]]:
    """Builder keywords from the weights, then the file name, then explicit ``overrides``
    (each wins over the one before), and the origin of each.

    Raises:
        CheckpointError: ``refusal(missing)`` when ``required`` keywords come from neither
            the file name nor ``overrides``.
    """
    missing = [k for k in required if k not in overrides and k not in (from_name or {})]
    if missing:
        raise CheckpointError(refusal(missing))
    kwargs, origin = {}, {}
    for source, values in (("weights", detected), ("file name", from_name), ("option", overrides)):
        for key, value in (values or {}).items():
            kwargs[key], origin[key] = value, source
    return kwargs, origin


def read_weights_file(path: str | Path) -> Any:
    """What a ``.safetensors`` or ``.pth`` file holds; a missing, damaged or foreign file is a
    :class:`~kdforge.errors.CheckpointError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated, corrupt or not a weights file at all
        raise CheckpointError(
            f"{path} cannot be read ({type(err).__name__}: {err}); it is damaged or not a "
            ".pth/.safetensors weights file"
        ) from None


def unwrap_checkpoint(
    path_or_state: str | Path | dict[str, Any],
    prefix: str = "",
    rename: Callable[[str], str] | None = None,
) -> dict[str, Tensor]:
    """The tensors of an OpenMMLab checkpoint, keyed as in its model.

    Args:
        path_or_state: a ``.pth`` file or its loaded dict; a ``state_dict`` entry (mmengine's
            ``{"meta", "state_dict", "optimizer"}``) is unwrapped and ``module.`` stripped.
        prefix: keep only keys starting with it, stripped (``"architecture."`` reads the
            student of an mmrazor distillation checkpoint).
        rename: applied to every kept key (old names of renamed layers).
    """
    state = path_or_state
    if not isinstance(state, dict):
        state = read_weights_file(path_or_state)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path_or_state} holds a {type(state).__name__}, not a checkpoint")
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if prefix:
            if not key.startswith(prefix):
                continue
            key = key[len(prefix) :]
        if isinstance(value, Tensor):
            out[rename(key) if rename else key] = value
    return out


def match_state_dict(
    state: dict[str, Tensor], model: nn.Module, source: str, optional: Sequence[str] = ()
) -> dict[str, Tensor]:
    """``state`` restricted to ``model``'s keys, checked to load strictly.

    Model keys ending with one of ``optional`` (buffers that old checkpoints lack, e.g.
    ``num_batches_tracked``) are taken from the model when the checkpoint has none.

    Raises:
        ValueError: naming the ``source`` checkpoint's keys that match nothing, the model
            keys left without a value and the shape mismatches, with their counts.
    """
    own = model.state_dict()
    out = {k: v for k, v in state.items() if k in own}
    unmatched = sorted(k for k in state if k not in own)
    for key, value in own.items():
        if key not in out and key.endswith(tuple(optional)):
            out[key] = value.clone()
    missing = [k for k in own if k not in out]
    wrong = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in out.items()
        if v.shape != own[k].shape
    ]
    if unmatched or missing or wrong:
        lines = [f"{source} checkpoint does not match {type(model).__name__}:"]
        for title, keys in (("unmatched", unmatched), ("missing", missing), ("shape", wrong)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys))
        raise CheckpointError("\n".join(lines))
    return out
