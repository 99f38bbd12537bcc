"""ATSS head (Zhang et al., 2020, "Bridging the Gap Between Anchor-based and Anchor-free
Detection via Adaptive Training Sample Selection").

mmdetection ``configs/atss/atss_r50_fpn_1x_coco.py``: 4 stacked 3x3 convs with GN(32) per
tower; one square anchor per location (``octave_base_scale=8``, ratio 1, strides 8-128);
``DeltaXYWHBBoxCoder`` with stds (0.1, 0.1, 0.2, 0.2); ``ATSSAssigner(topk=9)``; focal loss
(gamma 2, alpha 0.25), GIoU loss (weight 2) on decoded boxes weighted by the centerness
target, centerness BCE; test: score 0.05, 1000 per level, NMS 0.6, 100 per image, scores
multiplied by the predicted centerness.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from kdforge.models.detection._anchor_head import AnchorHead
from kdforge.models.detection._dense_head import Scale, flatten_levels, reduce_mean
from kdforge.models.detection.anchors import AnchorGenerator
from kdforge.models.detection.assigners import atss_assign, centerness_target
from kdforge.models.detection.boxes import box_centers
from kdforge.models.detection.coders import DeltaXYWHCoder, bbox2distance
from kdforge.models.detection.det_losses import (
    binary_cross_entropy,
    giou_loss,
    sigmoid_focal_loss,
)
from kdforge.models.detection.postprocess import PostprocessConfig

__all__ = ["ATSSHead"]


class ATSSHead(AnchorHead):
    """ATSS head with mmdetection's parameter names (``atss_cls``, ``atss_reg``,
    ``atss_centerness``, ``scales.{l}.scale``).

    Outputs per level: ``"cls"`` ``(N, K, H, W)``, ``"reg"`` ``(N, 4, H, W)`` deltas
    (``scales[l]`` applied, no exp) and ``"centerness"`` ``(N, 1, H, W)`` logits from the
    regression tower.

    Args:
        num_classes, in_channels, feat_channels, stacked_convs, strides: as RetinaHead.
        norm_groups: GroupNorm groups of the towers.
        octave_base_scale, scales_per_octave, ratios: anchor shapes.
        target_stds: delta normalisation.
        topk: ATSS candidates per level.
        ignore_iof_thr: crowd-box IoF above which anchors are ignored (-1: off).
        loss_*_weight: loss multipliers (cls 1, bbox 2, centerness 1).
        score_thr, nms_pre, nms_iou, max_per_img: test settings.
    """

    score_factor_key = "centerness"

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        feat_channels: int = 256,
        stacked_convs: int = 4,
        norm_groups: int | None = 32,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        octave_base_scale: float = 8,
        scales_per_octave: int = 1,
        ratios: Sequence[float] = (1.0,),
        target_stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
        topk: int = 9,
        ignore_iof_thr: float = -1.0,
        focal_gamma: float = 2.0,
        focal_alpha: float = 0.25,
        loss_cls_weight: float = 1.0,
        loss_bbox_weight: float = 2.0,
        loss_centerness_weight: float = 1.0,
        score_thr: float = 0.05,
        nms_pre: int = 1000,
        nms_iou: float = 0.6,
        max_per_img: int = 100,
    ) -> None:
        super().__init__(
            AnchorGenerator(strides, ratios, octave_base_scale, scales_per_octave),
            num_classes=num_classes,
            in_channels=in_channels,
            feat_channels=feat_channels,
            stacked_convs=stacked_convs,
            norm_groups=norm_groups,
        )
        a = self.num_anchors
        self.atss_cls = nn.Conv2d(feat_channels, a * num_classes, 3, padding=1)
        self.atss_reg = nn.Conv2d(feat_channels, a * 4, 3, padding=1)
        self.atss_centerness = nn.Conv2d(feat_channels, a, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.strides)
        self.coder = DeltaXYWHCoder(stds=target_stds)
        self.topk, self.ignore_iof_thr = topk, ignore_iof_thr
        self.focal_gamma, self.focal_alpha = focal_gamma, focal_alpha
        self.loss_cls_weight = loss_cls_weight
        self.loss_bbox_weight = loss_bbox_weight
        self.loss_centerness_weight = loss_centerness_weight
        self.test_cfg = PostprocessConfig(score_thr, nms_pre, nms_iou, max_per_img)
        self._init_weights(self.atss_cls)

    def predict_level(self, level: int, cls_feat: Tensor, reg_feat: Tensor) -> dict[str, Tensor]:
        return {
            "cls": self.atss_cls(cls_feat),
            "reg": self.scales[level](self.atss_reg(reg_feat)).float(),
            "centerness": self.atss_centerness(reg_feat),
        }

    def assign_priors(
        self,
        anchors: Tensor,
        num_level_anchors: list[int],
        gt_boxes: Tensor,
        ignore_boxes: Tensor | None,
    ) -> Tensor:
        return atss_assign(
            anchors, num_level_anchors, gt_boxes, self.topk, ignore_boxes, self.ignore_iof_thr
        )

    def _decode(
        self, level: int, priors: Tensor, reg: Tensor, max_shape: tuple[int, int]
    ) -> Tensor:
        return self.coder.decode(priors, reg, max_shape)

    def loss(
        self,
        outputs: dict[str, list[Tensor]],
        targets: Sequence[dict[str, Tensor]],
        image_size: tuple[int, int] | Sequence[tuple[int, int]],
    ) -> dict[str, Tensor]:
        """``{"loss_cls", "loss_bbox", "loss_centerness"}`` as mmdetection's ATSSHead.

        Focal loss and centerness BCE are divided by the number of positives (averaged
        over processes); the GIoU loss of the decoded positives, weighted by their
        centerness targets ``c``, is divided by ``max(sum c, 1)``.
        """
        cls_outs = outputs["cls"]
        sizes = [tuple(o.shape[-2:]) for o in cls_outs]
        t = self.anchor_targets(sizes, targets, image_size, True, cls_outs[0].device)
        cls = flatten_levels(cls_outs, self.num_classes).reshape(-1, self.num_classes)
        reg = flatten_levels(outputs["reg"], 4).reshape(-1, 4)
        ctr = flatten_levels(outputs["centerness"], 1).reshape(-1)
        pos = t.pos.reshape(-1)
        loss_cls = sigmoid_focal_loss(
            cls,
            t.labels.reshape(-1),
            t.label_weights.reshape(-1),
            self.focal_gamma,
            self.focal_alpha,
            avg_factor=t.avg_factor,
        )
        anchors = t.anchors.repeat(len(targets), 1)[pos]
        gt = t.gt_boxes.reshape(-1, 4)[pos]
        ctr_target = centerness_target(bbox2distance(box_centers(anchors), gt))
        # every process joins the all-reduce, with or without positives
        bbox_avg = reduce_mean(ctr_target.sum().detach()).clamp(min=1).item()
        if pos.any():
            boxes = self.coder.decode(anchors, reg[pos])
            loss_bbox = giou_loss(boxes, gt, ctr_target, avg_factor=1.0) / bbox_avg
            loss_ctr = binary_cross_entropy(ctr[pos], ctr_target, avg_factor=t.avg_factor)
        else:
            loss_bbox, loss_ctr = reg.sum() * 0, ctr.sum() * 0
        return {
            "loss_cls": self.loss_cls_weight * loss_cls,
            "loss_bbox": self.loss_bbox_weight * loss_bbox,
            "loss_centerness": self.loss_centerness_weight * loss_ctr,
        }
