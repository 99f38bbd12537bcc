"""Load mmdetection checkpoints of RetinaNet, FCOS, ATSS, GFL, Faster R-CNN and Cascade
(Mask) R-CNN (ResNet/ResNeXt-FPN; RetinaNet also on Swin-FPN), DINO and Grounding DINO into
ours (Grounding DINO also needs ``text_folder`` and ``class_names``, which no weight holds).

Our parameter names are mmdetection's (``backbone.layer1.0.conv1.weight``,
``neck.lateral_convs.0.conv.weight``, ``bbox_head.cls_convs.0.gn.weight``,
``bbox_head.scales.0.scale`` ...), so conversion is: unwrap the checkpoint, rename the
mmdetection 1.x FCOS predictors (``fcos_cls`` -> ``conv_cls``, as mmdetection's own
upgrade hook does), and check every key and shape against the detector it describes.
A ResNeXt backbone is recognised by its grouped 3x3 convs (``layer1.0.conv2.weight`` of
shape ``(groups * base_width, base_width, 3, 3)``).

Some settings change the outputs but leave no trace in the weights: the backbone style
(caffe or pytorch) and FCOS's ``norm_on_bbox``, ``centerness_on_reg`` (plus its training
and test settings). :func:`convert_mmdet` reads them from the mmdetection config name that
the checkpoint's file name carries (``fcos_r50-caffe_fpn_gn-head-center-normbbox-
centeronreg-giou_1x_coco_20200603-67b3859f.pth``) and refuses to guess them otherwise.
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
from kdforge.models._registry import list_models
from kdforge.models.detection._grounding_convert import (
    BERT_PREFIX,
    GROUNDING_FLAGS,
    dino_kwargs,
    drop_unkept_bert_keys,
    grounding_dino_kwargs,
)
from kdforge.models.detection.swin import SWIN_ARCHS
from kdforge.models.factory import build_model

__all__ = [
    "MMDET_FLAGS",
    "convert_mmdet",
    "convert_mmdet_checkpoint",
    "detect_mmdet_model",
    "mmdet_name_flags",
]

_HEAD_KINDS = {"retina_cls": "retinanet", "conv_cls": "fcos", "atss_cls": "atss", "gfl_cls": "gfl"}
# keys some checkpoints lack and that carry no learned value: taken from the model
_OPTIONAL = ("num_batches_tracked", "bbox_head.integral.project")
# builder keywords per head kind that the weights cannot carry, with their values
MMDET_FLAGS: dict[str, dict[str, str]] = {
    "retinanet": {"style": "caffe|pytorch"},
    "fcos": {
        "style": "caffe|pytorch",
        "norm_on_bbox": "true|false",
        "centerness_on_reg": "true|false",
        "center_sampling": "true|false",
        "loss_bbox": "iou|giou",
        "nms_iou": "0.5|0.6",
    },
    "atss": {"style": "caffe|pytorch"},
    "gfl": {"style": "caffe|pytorch"},
    "faster_rcnn": {"style": "caffe|pytorch"},
    "cascade_mask_rcnn": {"style": "caffe|pytorch"},
    "dino": {},  # DINO's ResNet: pytorch style with frozen BN, fixed by its configs
    "reppoints": {"style": "caffe|pytorch"},
    "grounding_dino": GROUNDING_FLAGS,
}
_TWO_STAGE = ("faster_rcnn", "cascade_mask_rcnn")
_DEFORMABLE = ("dcn", "dconv", "mdconv")  # name tokens of deformable-conv configs


def _rename(key: str) -> str:
    """mmdetection 1.x names to the current ones: the FCOS predictors (``fcos_cls`` ->
    ``conv_cls``, mmdetection's upgrade hook) and the DCN offset convs (``conv2_offset`` ->
    ``conv2.conv_offset``, what mmcv's ``DeformConv2dPack`` does when loading a version-1
    state dict)."""
    key = re.sub(r"^bbox_head\.fcos_(cls|reg|centerness)\.", r"bbox_head.conv_\1.", key)
    return re.sub(r"\.conv2_offset\.(weight|bias)$", r".conv2.conv_offset.\1", key)


def _count(state: dict[str, Tensor], pattern: str) -> int:
    """Number of distinct integers ``i`` in keys matching ``pattern`` (with one ``(\\d+)``)."""
    return len({m.group(1) for k in state if (m := re.match(pattern, k))})


def _swin_name(state: dict[str, Tensor]) -> str:
    """``"swin_t"`` ...: the :data:`SWIN_ARCHS` entry whose widths, depths, heads and
    window (7: a 13x13 bias table) the checkpoint has."""
    stages = range(_count(state, r"backbone\.stages\.(\d+)\."))
    tables = [state[f"backbone.stages.{i}.blocks.0.attn.w_msa.relative_position_bias_table"]
              for i in stages]  # fmt: skip
    found = {
        "embed_dims": state["backbone.patch_embed.projection.weight"].shape[0],
        "depths": tuple(_count(state, rf"backbone\.stages\.{i}\.blocks\.(\d+)\.") for i in stages),
        "num_heads": tuple(table.shape[1] for table in tables),
    }
    table = tables[0]
    arch = next((a for a, spec in SWIN_ARCHS.items() if spec == found), None)
    if arch is None or table.shape[0] != 13 * 13:
        raise CheckpointError(
            f"unsupported Swin backbone {found}, bias table {tuple(table.shape)}; "
            f"implemented (window 7): {SWIN_ARCHS}"
        )
    return arch


def _backbone_name(state: dict[str, Tensor]) -> str:
    """``"r50"``, ``"x101_64x4d"``, ``"swin_t"`` ...: the backbone part of a registered
    detector name."""
    if "backbone.patch_embed.projection.weight" in state:
        return _swin_name(state)
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


def _kind_of(name: str) -> tuple[str, list[str]]:
    """``"faster_rcnn_x101_64x4d_fpn"`` -> ``("faster_rcnn", ["x101", "64x4d"])``."""
    kinds = (*_TWO_STAGE, "grounding_dino")
    kind = next((k for k in kinds if name.startswith(f"{k}_")), name.split("_")[0])
    return kind, name.removeprefix(f"{kind}_").split("_")[:-1]


def _detect_faster_rcnn(state: dict[str, Tensor]) -> tuple[str, dict[str, Any]]:
    name = f"faster_rcnn_{_backbone_name(state)}_fpn"
    if name not in list_models("detection"):
        raise CheckpointError(f"no registered detector {name!r} for this checkpoint")
    return name, {
        "num_classes": state["roi_head.bbox_head.fc_cls.weight"].shape[0] - 1,  # + background
        "fpn_channels": state["neck.lateral_convs.0.conv.weight"].shape[0],
        "feat_channels": state["rpn_head.rpn_conv.weight"].shape[0],
        "fc_out_channels": state["roi_head.bbox_head.shared_fcs.0.weight"].shape[0],
    }


def _detect_cascade(state: dict[str, Tensor]) -> tuple[str, dict[str, Any]]:
    stages = _count(state, r"roi_head\.bbox_head\.(\d+)\.fc_cls\.weight")
    if stages != 3:
        raise CheckpointError(f"a Cascade R-CNN with {stages} stages; only 3 are implemented")
    name = f"cascade_mask_rcnn_{_backbone_name(state)}_fpn"
    if name not in list_models("detection"):
        raise CheckpointError(
            f"no registered detector {name!r} for this checkpoint; registered: "
            + ", ".join(n for n in list_models("detection") if n.startswith("cascade"))
        )
    kwargs = {
        "num_classes": state["roi_head.bbox_head.0.fc_cls.weight"].shape[0] - 1,
        "with_mask": "roi_head.mask_head.0.conv_logits.weight" in state,
        "fpn_channels": state["neck.lateral_convs.0.conv.weight"].shape[0],
        "feat_channels": state["rpn_head.rpn_conv.weight"].shape[0],
        "fc_out_channels": state["roi_head.bbox_head.0.shared_fcs.0.weight"].shape[0],
    }
    if kwargs["with_mask"]:
        kwargs["mask_channels"] = state["roi_head.mask_head.0.conv_logits.weight"].shape[1]
    return name, kwargs


def _detect_reppoints(state: dict[str, Tensor]) -> tuple[str, dict[str, Any]]:
    """RepPoints moment with GN in the FPN and head; DCN from ``layer2``'s ``conv_offset``."""
    dcn = "_dcn" if "backbone.layer2.0.conv2.conv_offset.weight" in state else ""
    name = f"reppoints_moment_{_backbone_name(state)}{dcn}_fpn_gn"
    if name not in list_models("detection") or "neck.lateral_convs.0.gn.weight" not in state:
        raise CheckpointError(
            f"no registered RepPoints detector for this checkpoint ({name}, FPN GroupNorm "
            f"{'neck.lateral_convs.0.gn.weight' in state}); registered: "
            + ", ".join(n for n in list_models("detection") if n.startswith("reppoints"))
        )
    head = "bbox_head.reppoints"
    return name, {
        "num_classes": state[f"{head}_cls_out.weight"].shape[0],
        "fpn_channels": state["neck.lateral_convs.0.conv.weight"].shape[0],
        "feat_channels": state["bbox_head.cls_convs.0.conv.weight"].shape[0],
        "point_feat_channels": state[f"{head}_cls_out.weight"].shape[1],
        "stacked_convs": _count(state, r"bbox_head\.cls_convs\.(\d+)\."),
        "num_points": state[f"{head}_pts_init_out.weight"].shape[0] // 2,
    }


def detect_mmdet_model(state: dict[str, Tensor]) -> tuple[str, dict[str, Any]]:
    """The registered name and builder keywords of the detector a state dict describes.

    Returns:
        e.g. ``("gfl_r50_fpn", {"num_classes": 80, "feat_channels": 256, ...})``.
    """
    if "rpn_head.rpn_conv.weight" in state and "roi_head.bbox_head.fc_cls.weight" in state:
        return _detect_faster_rcnn(state)
    if "rpn_head.rpn_conv.weight" in state and "roi_head.bbox_head.0.fc_cls.weight" in state:
        return _detect_cascade(state)
    if "bbox_head.reppoints_cls_out.weight" in state:
        return _detect_reppoints(state)
    if f"{BERT_PREFIX}embeddings.word_embeddings.weight" in state:
        return grounding_dino_kwargs(state, _backbone_name(state))
    if "dn_query_generator.label_embedding.weight" in state:
        return dino_kwargs(state, _backbone_name(state))
    kind = next((k for p, k in _HEAD_KINDS.items() if f"bbox_head.{p}.weight" in state), None)
    if kind is None:
        raise CheckpointError(
            "not an mmdetection RetinaNet/FCOS/ATSS/GFL/(Cascade/Faster) R-CNN checkpoint: "
            "no bbox_head."
            f"{{{','.join(_HEAD_KINDS)}}}.weight key and no rpn_head + roi_head"
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


def _reppoints_tokens(config_name: str, tokens: list[str]) -> list[str]:
    """RepPoints name tokens in our names' terms (``dconv`` -> ``dcn``; ``x101`` is 32x4d,
    mmdetection's only RepPoints ResNeXt); variants other than moment + GN are refused."""
    if "moment" not in tokens or "gn" not in tokens:
        raise CheckpointError(
            f"{config_name}: only RepPoints moment with GroupNorm in the FPN and head "
            "(reppoints-moment_*_fpn-gn_head-gn) is implemented"
        )
    tokens = ["dcn" if t == "dconv" else t for t in tokens]
    return tokens + (["32x4d"] if "x101" in tokens else [])


def mmdet_name_flags(config_name: str, model_name: str) -> dict[str, Any] | None:
    """The keywords of registered detector ``model_name`` that an mmdetection config or
    checkpoint name sets beyond the weights; ``None`` if ``config_name`` is not one.

    Tokens: ``caffe`` (caffe style with frozen BN affine parameters, else pytorch style with
    trainable ones); for FCOS ``center`` (center sampling), ``normbbox``, ``centeronreg``
    and ``giou`` (GIoU loss; the configs with it also test with NMS IoU 0.6).

    Raises:
        CheckpointError: the name describes another detector or backbone than the weights,
            or deformable convolutions (not implemented).
    """
    tokens = config_tokens(config_name)
    if tokens[:2] == ["faster", "rcnn"]:  # faster-rcnn_r50_fpn_1x_coco, faster_rcnn_r101_...
        tokens = ["faster_rcnn", *tokens[2:]]
    if tokens[:3] == ["cascade", "mask", "rcnn"]:  # box-only cascade_rcnn_*: the same model
        tokens = ["cascade_mask_rcnn", *tokens[3:]]
    elif tokens[:2] == ["cascade", "rcnn"]:
        tokens = ["cascade_mask_rcnn", *tokens[2:]]
    if not tokens or tokens[0] not in MMDET_FLAGS or "fpn" not in tokens:
        return None
    if tokens[0] == "reppoints":
        tokens = _reppoints_tokens(config_name, tokens)
    kind, backbone = _kind_of(model_name)  # "fcos", ["r50"] or ["x101", "64x4d"]
    if tokens[0] != kind or not set(backbone) <= set(tokens):
        raise CheckpointError(
            f"{config_name} names a {tokens[0]} config, but the weights are a "
            f"{'_'.join([kind, *backbone])}; check the file, or pass --config with its config"
        )
    if (deformable := sorted(set(tokens) & set(_DEFORMABLE))) and "dcn" not in backbone:
        raise CheckpointError(
            f"{config_name}: deformable convolutions ({deformable[0]}) are not implemented"
        )
    if "swin" in backbone:  # no ResNet style; drop_path_rate (training only) keeps 0.2
        return {}
    style = "caffe" if "caffe" in tokens else "pytorch"
    flags: dict[str, Any] = {"style": style, "norm_requires_grad": style == "pytorch"}
    if kind == "fcos":
        giou = "giou" in tokens
        flags |= {
            "norm_on_bbox": "normbbox" in tokens,
            "centerness_on_reg": "centeronreg" in tokens,
            "center_sampling": "center" in tokens,
            "loss_bbox": "giou" if giou else "iou",
            "nms_iou": 0.6 if giou else 0.5,
        }
    return flags


def convert_mmdet(
    path_or_state: str | Path | dict[str, Any],
    config: str | None = None,
    model: str | None = None,
    **overrides: Any,
) -> Conversion:
    """Choose the detector an mmdetection checkpoint needs and map the checkpoint onto it.

    The keywords come from the weights (classes, widths, ResNeXt groups...), then from the
    config name (:func:`mmdet_name_flags`), then from ``overrides``. An explicit ``style``
    sets ``norm_requires_grad`` as mmdetection's configs do (False for caffe).

    Args:
        path_or_state: a ``.pth`` file or its loaded dict.
        config: the mmdetection config name; by default the file name of ``path_or_state``.
        model: a registered detector name instead of the detected one.
        **overrides: builder keywords that win over the detected ones.

    Raises:
        CheckpointError: a flag of :data:`MMDET_FLAGS` that neither the name nor
            ``overrides`` gives (the message names them), or a checkpoint that does not fit.
    """
    state = drop_unkept_bert_keys(unwrap_checkpoint(path_or_state, rename=_rename))
    detected_name, detected = detect_mmdet_model(state)
    name = model or detected_name
    if config is None and not isinstance(path_or_state, dict):
        config = Path(path_or_state).name
    from_name = mmdet_name_flags(config, name) if config else None
    if "style" in overrides and "norm_requires_grad" not in overrides:
        overrides["norm_requires_grad"] = overrides["style"] == "pytorch"
    kind, backbone = _kind_of(name)
    flags = {} if "swin" in backbone else MMDET_FLAGS[kind]

    def refusal(missing: list[str]) -> str:
        given = " ".join(f"{k}={flags[k]}" for k in missing)
        return (
            f"{config or 'this checkpoint'} is not an mmdetection config name, and the "
            f"{name} weights do not carry {', '.join(missing)}: pass --kwarg {given}, "
            "or --config <the mmdetection config it was trained with>"
        )

    kwargs, origin = choose_keywords(detected, from_name, overrides, tuple(flags), refusal)
    built = build_model(name, kwargs)
    state = match_state_dict(state, built, "mmdetection", _OPTIONAL)
    return Conversion(name, kwargs, origin, state)


def convert_mmdet_checkpoint(
    path_or_state: str | Path | dict[str, Any], model: nn.Module
) -> dict[str, Tensor]:
    """Map an mmdetection checkpoint onto ``model``'s state dict (to choose the model as
    well, use :func:`convert_mmdet`).

    Args:
        path_or_state: a ``.pth`` file or its loaded dict (``state_dict`` nesting and
            ``module.`` prefixes are unwrapped).
        model: the detector to load into.

    Returns:
        a state dict that ``model.load_state_dict`` accepts strictly.

    Raises:
        CheckpointError: listing the checkpoint keys that match nothing, the model keys
            left without a value and the shape mismatches.
    """
    state = drop_unkept_bert_keys(unwrap_checkpoint(path_or_state, rename=_rename))
    return match_state_dict(state, model, "mmdetection", _OPTIONAL)
