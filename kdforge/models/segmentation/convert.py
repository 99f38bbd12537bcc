"""Load mmsegmentation PSPNet / DeepLabV3 checkpoints (ResNet-V1c-D8, MobileNetV2-D8) into ours.

Our parameter names are mmsegmentation's (``backbone.stem.0.weight``,
``backbone.layer1.0.conv1.weight``, ``decode_head.psp_modules.0.1.conv.weight``,
``decode_head.aspp_modules.1.conv.weight``, ``decode_head.image_pool.1.bn.weight``,
``auxiliary_head.convs.0.conv.weight`` ...), so conversion is: unwrap the checkpoint,
optionally strip a prefix (``architecture.`` for an mmrazor distillation student), and
check every key and shape against the segmentor it describes.

Two settings change the outputs but leave no trace in the weights: the backbone's output
stride (``-d8``: strides (1, 2, 1, 1), dilations (1, 1, 2, 4), contract_dilation; ``-d16``,
``-d32`` and multi-grid ``-mg124`` differ) and ``align_corners`` (True in the 769x769
Cityscapes configs). kdforge builds the ``-d8`` models with ``align_corners=False``, so
:func:`convert_mmseg` reads both from the config name the file name carries
(``pspnet_r50-d8_512x1024_40k_cityscapes_20200605_003338-2966598c.pth``), refuses the
others, and refuses to guess when the name is not a config name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from kdforge.errors import CheckpointError
from kdforge.models._convert import (
    Conversion,
    choose_keywords,
    config_tokens,
    match_state_dict,
    unwrap_checkpoint,
)
from kdforge.models.factory import build_model

__all__ = ["convert_mmseg", "convert_mmseg_checkpoint", "detect_mmseg_model", "mmseg_name_flags"]

_HEAD_KINDS = {
    "decode_head.psp_modules.0.1.conv.weight": "pspnet",
    "decode_head.aspp_modules.0.conv.weight": "deeplabv3",
}
_DEPTHS = {(2, False): 18, (6, True): 50, (23, True): 101}  # (layer3 blocks, bottleneck)
_NAME_BACKBONES = {"mobilenetv2": {"m", "v2"}}  # our backbone -> its tokens in mmseg's names


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


def mmseg_name_flags(config_name: str, model_name: str) -> dict[str, Any] | None:
    """The keywords of registered segmentor ``model_name`` that an mmsegmentation config or
    checkpoint name sets beyond the weights (none: kdforge builds one setting), or ``None``
    if ``config_name`` is not such a name (no ``-d8``/``-d16``/``-d32`` token).

    Raises:
        CheckpointError: the name describes another head or backbone than the weights, or a
            setting kdforge does not build (output stride 16 or 32, multi-grid, the
            ``align_corners=True`` of the 769x769 configs).
    """
    tokens = config_tokens(config_name)
    strides = [t for t in tokens if re.fullmatch(r"d(8|16|32)", t)]
    if not strides:
        return None
    head, backbone = model_name.split("_", 1)
    if tokens[0] != head or not _NAME_BACKBONES.get(backbone, {backbone}) <= set(tokens):
        raise CheckpointError(
            f"{config_name} names another model than the weights' {model_name}; check the "
            "file, or pass --config with its config"
        )
    unsupported = [
        what
        for what, found in (
            (f"output stride {strides[0][1:]} (kdforge builds -d8)", strides[0] != "d8"),
            ("multi-grid dilations", any(t.startswith("mg") for t in tokens)),
            ("align_corners=True (769x769 configs)", "769x769" in tokens),
        )
        if found
    ]
    if unsupported:
        raise CheckpointError(f"{config_name}: not implemented: {'; '.join(unsupported)}")
    return {}


def convert_mmseg(
    path_or_state: str | Path | dict[str, Any],
    config: str | None = None,
    model: str | None = None,
    prefix: str = "",
    **overrides: Any,
) -> Conversion:
    """Choose the segmentor an mmsegmentation checkpoint needs and map the checkpoint onto it.

    The keywords come from the weights (classes), then the config name
    (:func:`mmseg_name_flags`, which must confirm the ``-d8`` setting), then ``overrides``.

    Args:
        path_or_state: a ``.pth`` file or its loaded dict.
        config: the mmsegmentation config name; by default the file name of ``path_or_state``.
        model: a registered segmentor name instead of the detected one.
        prefix: keep only keys starting with it, stripped (``"architecture."`` reads the
            student of an mmrazor distillation checkpoint).
        **overrides: builder keywords that win over the detected ones.

    Raises:
        CheckpointError: a name that does not confirm the setting, or a checkpoint that
            does not fit.
    """
    state = unwrap_checkpoint(path_or_state, prefix)
    detected_name, detected = detect_mmseg_model(state)
    name = model or detected_name
    if config is None and not isinstance(path_or_state, dict):
        config = Path(path_or_state).name
    from_name = mmseg_name_flags(config, name) if config else None
    if from_name is None:
        raise CheckpointError(
            f"{config or 'this checkpoint'} is not an mmsegmentation config name, and the "
            f"{name} weights do not carry the output stride (-d8/-d16/-d32) or align_corners: "
            "pass --config <the mmsegmentation config it was trained with> (kdforge builds "
            "-d8 with align_corners=False, e.g. pspnet_r50-d8_4xb2-80k_cityscapes-512x1024)"
        )
    kwargs, origin = choose_keywords(detected, from_name, overrides, (), str)
    built = build_model(name, kwargs)
    state = match_state_dict(state, built, "mmsegmentation", ("num_batches_tracked",))
    return Conversion(name, kwargs, origin, state)


def convert_mmseg_checkpoint(
    path_or_state: str | Path | dict[str, Any], model: nn.Module, prefix: str = ""
) -> dict[str, Tensor]:
    """Map an mmsegmentation checkpoint onto ``model``'s state dict (to choose the model as
    well, use :func:`convert_mmseg`).

    Args:
        path_or_state: a ``.pth`` file or its loaded dict (``state_dict`` nesting and
            ``module.`` prefixes are unwrapped).
        model: the segmentor to load into.
        prefix: keep only keys starting with it, stripped (``"architecture."`` reads the
            student of an mmrazor distillation checkpoint).

    Returns:
        a state dict that ``model.load_state_dict`` accepts strictly (``num_batches_tracked``
        buffers missing from old checkpoints are taken from the model).

    Raises:
        CheckpointError: listing the checkpoint keys that match nothing, the model keys
            left without a value and the shape mismatches.
    """
    state = unwrap_checkpoint(path_or_state, prefix)
    return match_state_dict(state, model, "mmsegmentation", ("num_batches_tracked",))
