"""Load mmdetection checkpoints of RetinaNet, FCOS, ATSS and GFL (ResNet/ResNeXt-FPN) into ours.

Our parameter names are mmdetection's (``backbone.layer1.0.conv1.weight``,
``neck.lateral_convs.0.conv.weight``, ``bbox_head.cls_convs.0.gn.weight``,
``bbox_head.scales.0.scale`` ...), so conversion is: unwrap the checkpoint, rename the
mmdetection 1.x FCOS predictors (``fcos_cls`` -> ``conv_cls``, as mmdetection's own
upgrade hook does), and check every key and shape against the detector it describes.
A ResNeXt backbone is recognised by its grouped 3x3 convs (``layer1.0.conv2.weight`` of
shape ``(groups * base_width, base_width, 3, 3)``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from kdforge.errors import CheckpointError
from kdforge.models._convert import match_state_dict, unwrap_checkpoint
from kdforge.models._registry import list_models
from kdforge.models.factory import create_model

__all__ = ["convert_mmdet_checkpoint", "detect_mmdet_model"]

_HEAD_KINDS = {"retina_cls": "retinanet", "conv_cls": "fcos", "atss_cls": "atss", "gfl_cls": "gfl"}
# keys some checkpoints lack and that carry no learned value: taken from the model
_OPTIONAL = ("num_batches_tracked", "bbox_head.integral.project")


def _rename(key: str) -> str:
    """mmdetection's old FCOS predictor names (``fcos_cls``) to the current ``conv_cls``."""
    return re.sub(r"^bbox_head\.fcos_(cls|reg|centerness)\.", r"bbox_head.conv_\1.", key)


def _count(state: dict[str, Tensor], pattern: str) -> int:
    """Number of distinct integers ``i`` in keys matching ``pattern`` (with one ``(\\d+)``)."""
    return len({m.group(1) for k in state if (m := re.match(pattern, k))})


def _backbone_name(state: dict[str, Tensor]) -> str:
    """``"r50"``, ``"x101_64x4d"`` ...: the backbone part of a registered detector name."""
    blocks = _count(state, r"backbone\.layer3\.(\d+)\.")
    bottleneck = "backbone.layer1.0.conv3.weight" in state
    depth = {(2, False): 18, (6, False): 34, (6, True): 50, (23, True): 101}.get(
        (blocks, bottleneck)
    )
    if depth is None:
        raise CheckpointError(
            f"unsupported ResNet: {blocks} blocks in layer3, bottleneck={bottleneck}"
        )
    inner, per_group = state["backbone.layer1.0.conv2.weight"].shape[:2]
    if inner == per_group:
        return f"r{depth}"
    return f"x{depth}_{inner // per_group}x{per_group}d"  # layer1: inner = groups * base_width


def detect_mmdet_model(state: dict[str, Tensor]) -> tuple[str, dict[str, Any]]:
    """The registered name and builder keywords of the detector a state dict describes.

    Returns:
        e.g. ``("gfl_r50_fpn", {"num_classes": 80, "feat_channels": 256, ...})``.
    """
    kind = next((k for p, k in _HEAD_KINDS.items() if f"bbox_head.{p}.weight" in state), None)
    if kind is None:
        raise CheckpointError(
            "not an mmdetection RetinaNet/FCOS/ATSS/GFL checkpoint: no bbox_head."
            f"{{{','.join(_HEAD_KINDS)}}}.weight key"
        )
    name = f"{kind}_{_backbone_name(state)}_fpn"
    if name not in list_models("detection"):
        raise CheckpointError(
            f"no registered detector {name!r} for this checkpoint; registered: "
            + ", ".join(list_models("detection"))
        )
    cls_key = next(p for p, k in _HEAD_KINDS.items() if k == kind)
    num_outputs = state[f"bbox_head.{cls_key}.weight"].shape[0]
    kwargs: dict[str, Any] = {
        "num_classes": num_outputs,
        "fpn_channels": state["neck.lateral_convs.0.conv.weight"].shape[0],
        "feat_channels": state["bbox_head.cls_convs.0.conv.weight"].shape[0],
        "stacked_convs": _count(state, r"bbox_head\.cls_convs\.(\d+)\."),
    }
    if kind == "retinanet":
        kwargs["num_classes"] = num_outputs // (state["bbox_head.retina_reg.weight"].shape[0] // 4)
    tower = "bbox_head.cls_convs.0"
    if kind == "fcos" and f"{tower}.gn.weight" in state and f"{tower}.conv.bias" in state:
        kwargs["conv_bias"] = True  # mmdetection's conv_bias=True on the GN towers
    if kind == "gfl":
        kwargs["reg_max"] = state["bbox_head.gfl_reg.weight"].shape[0] // 4 - 1
    return name, kwargs


def convert_mmdet_checkpoint(
    path_or_state: str | Path | dict[str, Any], model: nn.Module | None = None
) -> dict[str, Tensor]:
    """Map an mmdetection checkpoint onto a kdforge detector's state dict.

    Args:
        path_or_state: a ``.pth`` file or its loaded dict (``state_dict`` nesting and
            ``module.`` prefixes are unwrapped).
        model: the detector to load into; by default the registered one that
            :func:`detect_mmdet_model` names.

    Returns:
        a state dict that ``model.load_state_dict`` accepts strictly.

    Raises:
        ValueError: listing the checkpoint keys that match nothing, the model keys left
            without a value and the shape mismatches.
    """
    state = unwrap_checkpoint(path_or_state, rename=_rename)
    if model is None:
        name, kwargs = detect_mmdet_model(state)
        model = create_model(name, **kwargs)
    return match_state_dict(state, model, "mmdetection", _OPTIONAL)
