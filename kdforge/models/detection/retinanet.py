"""RetinaNet head (Lin et al., 2017, "Focal Loss for Dense Object Detection").

mmdetection ``configs/_base_/models/retinanet_r50_fpn.py``: 4 stacked 3x3 convs of 256
channels with bias and ReLU (no norm) per tower; 9 anchors per location
(``octave_base_scale=4``, ``scales_per_octave=3``, ratios 0.5/1/2, strides 8-128);
``DeltaXYWHBBoxCoder`` with stds (1, 1, 1, 1); ``MaxIoUAssigner`` (pos 0.5, neg 0.4,
min_pos 0); sigmoid focal loss (gamma 2, alpha 0.25) and L1 on the deltas, both divided
by the number of positives; test: score 0.05, 1000 per level, NMS 0.5, 100 per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from torch import Tensor, nn

from kdforge.models.detection._anchor_head import AnchorHead
from kdforge.models.detection._dense_head import flatten_levels
from kdforge.models.detection.anchors import AnchorGenerator
from kdforge.models.detection.assigners import max_iou_assign
from kdforge.models.detection.coders import DeltaXYWHCoder
from kdforge.models.detection.det_losses import l1_loss, sigmoid_focal_loss
from kdforge.models.detection.postprocess import PostprocessConfig

__all__ = ["RetinaHead"]


class RetinaHead(AnchorHead):
    """RetinaNet's classification and box subnets, with mmdetection's parameter names.

    Outputs per level: ``"cls"`` ``(N, A * K, H, W)`` logits and ``"reg"`` ``(N, A * 4, H, W)``
    deltas. mmdetection's RetinaHead has no per-level ``Scale``, so ``scales`` is None.

    Args:
        num_classes: object classes ``K``.
        in_channels: FPN channels.
        feat_channels: tower channels.
        stacked_convs: convs per tower.
        strides: FPN strides.
        octave_base_scale, scales_per_octave, ratios: anchor shapes (see ``AnchorGenerator``).
        target_stds: delta normalisation.
        pos_iou_thr, neg_iou_thr, min_pos_iou, ignore_iof_thr: ``max_iou_assign`` settings.
        focal_gamma, focal_alpha: focal-loss parameters.
        loss_cls_weight, loss_bbox_weight: loss multipliers.
        score_thr, nms_pre, nms_iou, max_per_img: test settings (``PostprocessConfig``).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        feat_channels: int = 256,
        stacked_convs: int = 4,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        octave_base_scale: float = 4,
        scales_per_octave: int = 3,
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        target_stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        pos_iou_thr: float = 0.5,
        neg_iou_thr: float = 0.4,
        min_pos_iou: float = 0.0,
        ignore_iof_thr: float = -1.0,
        focal_gamma: float = 2.0,
        focal_alpha: float = 0.25,
        loss_cls_weight: float = 1.0,
        loss_bbox_weight: float = 1.0,
        score_thr: float = 0.05,
        nms_pre: int = 1000,
        nms_iou: float = 0.5,
        max_per_img: int = 100,
    ) -> None:
        super().__init__(
            AnchorGenerator(strides, ratios, octave_base_scale, scales_per_octave),
            num_classes=num_classes,
            in_channels=in_channels,
            feat_channels=feat_channels,
            stacked_convs=stacked_convs,
            norm_groups=None,
        )
        self.retina_cls = nn.Conv2d(feat_channels, self.num_anchors * num_classes, 3, padding=1)
        self.retina_reg = nn.Conv2d(feat_channels, self.num_anchors * 4, 3, padding=1)
        self.scales = None
        self.coder = DeltaXYWHCoder(stds=target_stds)
        self.assign = partial(
            max_iou_assign,
            pos_iou_thr=pos_iou_thr,
            neg_iou_thr=neg_iou_thr,
            min_pos_iou=min_pos_iou,
            ignore_iof_thr=ignore_iof_thr,
        )
        self.focal_gamma, self.focal_alpha = focal_gamma, focal_alpha
        self.loss_cls_weight, self.loss_bbox_weight = loss_cls_weight, loss_bbox_weight
        self.test_cfg = PostprocessConfig(score_thr, nms_pre, nms_iou, max_per_img)
        self._init_weights(self.retina_cls)

    def predict_level(self, level: int, cls_feat: Tensor, reg_feat: Tensor) -> dict[str, Tensor]:
        return {"cls": self.retina_cls(cls_feat), "reg": self.retina_reg(reg_feat)}

    def assign_priors(
        self,
        anchors: Tensor,
        num_level_anchors: list[int],
        gt_boxes: Tensor,
        ignore_boxes: Tensor | None,
    ) -> Tensor:
        return self.assign(anchors, gt_boxes, ignore_boxes=ignore_boxes)

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
        """``{"loss_cls", "loss_bbox"}``: focal loss over all valid anchors and L1 on the
        positives' deltas, each summed and divided by ``sum_i max(#pos_i, 1)``."""
        cls_outs, reg_outs = outputs["cls"], outputs["reg"]
        sizes = [tuple(o.shape[-2:]) for o in cls_outs]
        t = self.anchor_targets(sizes, targets, image_size, False, cls_outs[0].device)
        cls = flatten_levels(cls_outs, self.num_classes).reshape(-1, self.num_classes)
        reg = flatten_levels(reg_outs, 4).reshape(-1, 4)
        pos = t.pos.reshape(-1)
        anchors = t.anchors.repeat(len(targets), 1)[pos]
        deltas = self.coder.encode(anchors, t.gt_boxes.reshape(-1, 4)[pos])
        loss_cls = sigmoid_focal_loss(
            cls,
            t.labels.reshape(-1),
            t.label_weights.reshape(-1),
            self.focal_gamma,
            self.focal_alpha,
            avg_factor=t.avg_factor,
        )
        loss_bbox = l1_loss(reg[pos], deltas, avg_factor=t.avg_factor)
        return {
            "loss_cls": self.loss_cls_weight * loss_cls,
            "loss_bbox": self.loss_bbox_weight * loss_bbox,
        }
