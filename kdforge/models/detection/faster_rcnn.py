"""Faster R-CNN (Ren et al., 2015) with a ResNet/ResNeXt-FPN, as mmdetection 3.x's
``configs/_base_/models/faster-rcnn_r50_fpn.py``.

Backbone: pytorch style, ``frozen_stages=1``, ``norm_eval=True``, trainable BN affine (the
``-caffe`` configs: caffe style with frozen BN affine parameters).
Neck: FPN on ``C2..C5`` (``start_level=0``), 256 channels, ``P6`` by max-pooling ``P5``
(no extra convs). RPN on ``P2..P6`` (:mod:`~kdforge.models.detection.rpn_head`); RoI head
on ``P2..P5`` (:mod:`~kdforge.models.detection.roi_head`). State-dict keys equal
mmdetection's (``rpn_head.rpn_conv.weight``, ``roi_head.bbox_head.shared_fcs.0.weight``).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from kdforge.models.detection.backbone import ResNetBackbone
from kdforge.models.detection.fpn import FPN
from kdforge.models.detection.roi_head import StandardRoIHead
from kdforge.models.detection.rpn_head import RPNHead
from kdforge.models.detection.two_stage import TwoStageDetector

__all__ = ["build_faster_rcnn", "build_rcnn_trunk", "split_trunk_kwargs"]


def build_rcnn_trunk(
    depth: int = 50,
    *,
    frozen_stages: int = 1,
    norm_eval: bool = True,
    style: str = "pytorch",
    norm_requires_grad: bool = True,
    backbone_pretrained: str | Path | None = None,
    groups: int = 1,
    base_width: int = 4,
    fpn_channels: int = 256,
    feat_channels: int | None = None,
) -> tuple[ResNetBackbone, FPN, RPNHead]:
    """The backbone, FPN and RPN that the R-CNN family shares.

    Args:
        depth: ResNet depth (18, 34, 50, 101).
        frozen_stages, norm_eval, style, norm_requires_grad, groups, base_width: see
            :class:`ResNetBackbone` (``style="caffe"`` with ``norm_requires_grad=False`` for
            mmdetection's ``-caffe`` configs).
        backbone_pretrained: a torchvision-keyed ImageNet ResNet/ResNeXt checkpoint.
        fpn_channels: FPN output channels.
        feat_channels: channels of the RPN's 3x3 conv (``fpn_channels`` when None).
    """
    backbone = ResNetBackbone(
        depth,
        style=style,
        frozen_stages=frozen_stages,
        norm_eval=norm_eval,
        norm_requires_grad=norm_requires_grad,
        groups=groups,
        base_width=base_width,
    )
    if backbone_pretrained is not None:
        backbone.load_torchvision(backbone_pretrained)
    neck = FPN(
        [info["num_chs"] for info in backbone.feature_info],
        fpn_channels,
        start_level=0,
        num_outs=5,
        add_extra_convs=None,
    )
    return backbone, neck, RPNHead(fpn_channels, feat_channels or fpn_channels)


def split_trunk_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``kwargs`` split into :func:`build_rcnn_trunk`'s keywords and the rest (the RoI
    head's), so each R-CNN builder passes the trunk's through without restating them."""
    trunk = {k: v for k, v in kwargs.items() if k in _TRUNK_KEYWORDS}
    return trunk, {k: v for k, v in kwargs.items() if k not in _TRUNK_KEYWORDS}


def build_faster_rcnn(
    depth: int = 50, num_classes: int = 80, *, fc_out_channels: int = 1024, **kwargs: Any
) -> TwoStageDetector:
    """Build a Faster R-CNN ResNet(-X)-FPN with mmdetection's defaults.

    Args:
        depth: ResNet depth (18, 34, 50, 101).
        num_classes: object classes.
        fc_out_channels: width of the box head's two shared layers.
        **kwargs: :func:`build_rcnn_trunk`'s keywords (``style``, ``frozen_stages``,
            ``backbone_pretrained``, ``fpn_channels``, ``groups``...), then further
            :class:`StandardRoIHead` keywords (``score_thr``, ``nms_iou``, ``num_samples``...).
    """
    trunk, roi_head_kwargs = split_trunk_kwargs(kwargs)
    backbone, neck, rpn_head = build_rcnn_trunk(depth, **trunk)
    fpn_channels = neck.fpn_convs[0].conv.out_channels
    roi_head = StandardRoIHead(
        num_classes, fpn_channels, fc_out_channels=fc_out_channels, **roi_head_kwargs
    )
    return TwoStageDetector(backbone, neck, rpn_head, roi_head)


_TRUNK_KEYWORDS = frozenset(inspect.signature(build_rcnn_trunk).parameters) - {"depth"}
