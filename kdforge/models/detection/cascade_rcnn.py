"""Cascade (Mask) R-CNN (Cai and Vasconcelos, 2018) with a ResNet/ResNeXt-FPN, as
mmdetection 3.x's ``configs/_base_/models/cascade-mask-rcnn_r50_fpn.py``.

Backbone, FPN and RPN as Faster R-CNN's (:func:`build_rcnn_trunk`; pytorch style,
``frozen_stages=1``, ``norm_eval=True``, trainable BN affine), except that training keeps
2000 RPN proposals per image (``rpn_proposal.max_per_img=2000``); the three R-CNN stages
and mask heads are :class:`CascadeRoIHead`'s. State-dict keys equal mmdetection's
(``roi_head.bbox_head.0.shared_fcs.0.weight``, ``roi_head.mask_head.2.conv_logits.weight``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from kdforge.models.detection.cascade_roi_head import CascadeRoIHead
from kdforge.models.detection.faster_rcnn import build_rcnn_trunk, split_trunk_kwargs
from kdforge.models.detection.rpn_head import RPN_TRAIN_CFG
from kdforge.models.detection.two_stage import TwoStageDetector

__all__ = ["CASCADE_RPN_TRAIN_CFG", "build_cascade_rcnn"]

CASCADE_RPN_TRAIN_CFG = replace(RPN_TRAIN_CFG, max_per_img=2000)


def build_cascade_rcnn(
    depth: int = 50,
    num_classes: int = 80,
    *,
    with_mask: bool = True,
    fc_out_channels: int = 1024,
    **kwargs: Any,
) -> TwoStageDetector:
    """Build a Cascade Mask R-CNN (or, ``with_mask=False``, Cascade R-CNN) ResNet(-X)-FPN.

    Args:
        depth: ResNet depth (18, 34, 50, 101).
        num_classes: object classes.
        with_mask: add the three mask heads.
        fc_out_channels: width of each box head's two shared layers.
        **kwargs: :func:`build_rcnn_trunk`'s keywords (``style``, ``groups``, ``base_width``,
            ``fpn_channels``...), then further :class:`CascadeRoIHead` keywords
            (``score_thr``, ``stage_ious``, ``mask_thr_binary``...).
    """
    trunk, roi_head_kwargs = split_trunk_kwargs(kwargs)
    backbone, neck, rpn_head = build_rcnn_trunk(depth, **trunk)
    roi_head = CascadeRoIHead(
        num_classes,
        neck.fpn_convs[0].conv.out_channels,
        fc_out_channels=fc_out_channels,
        with_mask=with_mask,
        **roi_head_kwargs,
    )
    return TwoStageDetector(backbone, neck, rpn_head, roi_head, CASCADE_RPN_TRAIN_CFG)
