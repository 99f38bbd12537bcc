"""Load mmsegmentation PSPNet / DeepLabV3 checkpoints (ResNet-V1c-D8, MobileNetV2-D8) into ours.

Our parameter names are mmsegmentation's (``backbone.stem.0.weight``,
``backbone.layer1.0.conv1.weight``, ``decode_head.psp_modules.0.1.conv.weight``,
``decode_head.aspp_modules.1.conv.weight``, ``decode_head.image_pool.1.bn.weight``,
``auxiliary_head.convs.0.conv.weight`` ...), so conversion is: unwrap the checkpoint,
optionally strip a prefix (``architecture.`` for an mmrazor distillation student), and
check every key and shape against the segmentor it describes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from kdforge.errors import CheckpointError
from kdforge.models._convert import match_state_dict, unwrap_checkpoint
from kdforge.models.factory import create_model

__all__ = ["convert_mmseg_checkpoint", "detect_mmseg_model"]

_HEAD_KINDS = {
    "decode_head.psp_modules.0.1.conv.weight": "pspnet",
    "decode_head.aspp_modules.0.conv.weight": "deeplabv3",
}
_DEPTHS = {(2, False): 18, (6, True): 50, (23, True): 101}  # (layer3 blocks, bottleneck)


def detect_mmseg_model(state: dict[str, Tensor]) -> tuple[str, dict[str, Any]]:
    """The registered name and builder keywords of the segmentor a state dict describes.

    Returns:
        e.g. ``("pspnet_r18", {"num_classes": 19})``.
    """
    kind = next((k for key, k in _HEAD_KINDS.items() if key in state), None)
    if kind is None:
        raise CheckpointError(
            "not an mmsegmentation PSPNet/DeepLabV3 checkpoint: no key " + " or ".join(_HEAD_KINDS)
        )
    if "backbone.layer7.0.conv.0.conv.weight" in state:
        backbone = "mobilenetv2"
    elif "backbone.stem.0.weight" in state:
        blocks = len({m[1] for k in state if (m := re.match(r"backbone\.layer3\.(\d+)\.", k))})
        depth = _DEPTHS.get((blocks, "backbone.layer1.0.conv3.weight" in state))
        if depth is None:
            raise CheckpointError(f"unsupported ResNet-V1c: {blocks} blocks in backbone.layer3")
        backbone = f"r{depth}"
    else:
        raise CheckpointError("unsupported backbone: neither ResNet-V1c (stem.*) nor MobileNetV2")
    return f"{kind}_{backbone}", {"num_classes": state["decode_head.conv_seg.weight"].shape[0]}


def convert_mmseg_checkpoint(
    path_or_state: str | Path | dict[str, Any], model: nn.Module | None = None, prefix: str = ""
) -> dict[str, Tensor]:
    """Map an mmsegmentation checkpoint onto a kdforge segmentor's state dict.

    Args:
        path_or_state: a ``.pth`` file or its loaded dict (``state_dict`` nesting and
            ``module.`` prefixes are unwrapped).
        model: the segmentor to load into; by default the registered one that
            :func:`detect_mmseg_model` names.
        prefix: keep only keys starting with it, stripped (``"architecture."`` reads the
            student of an mmrazor distillation checkpoint).

    Returns:
        a state dict that ``model.load_state_dict`` accepts strictly (``num_batches_tracked``
        buffers missing from old checkpoints are taken from the model).

    Raises:
        ValueError: listing the checkpoint keys that match nothing, the model keys left
            without a value and the shape mismatches.
    """
    state = unwrap_checkpoint(path_or_state, prefix)
    if model is None:
        name, kwargs = detect_mmseg_model(state)
        model = create_model(name, **kwargs)
    return match_state_dict(state, model, "mmsegmentation", ("num_batches_tracked",))
