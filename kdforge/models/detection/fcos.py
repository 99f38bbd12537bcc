"""FCOS head (Tian et al., 2019, "FCOS: Fully Convolutional One-Stage Object Detection").

mmdetection ``configs/fcos/fcos_r50_caffe_fpn_gn-head_1x_coco.py`` (``FCOSHead``
defaults): 4 stacked 3x3 convs with GN(32) per tower, one point per location at
``(x + 0.5) * stride``, regress ranges ``(-1, 64), (64, 128), (128, 256), (256, 512),
(512, 1e8)`` for strides 8-128, ``exp(scale * reg)`` distances, centerness from the
classification tower; focal loss (gamma 2, alpha 0.25), IoU loss (``-log IoU``) weighted
by the centerness target, centerness BCE; test: score 0.05, 1000 per level, NMS 0.5,
100 per image, scores multiplied by the predicted centerness. The "tricks"
(``center_sampling`` radius 1.5, ``norm_on_bbox``, ``centerness_on_reg``, GIoU loss) are
options. Crowd ``ignore_boxes`` and image sizes are not used by FCOS's targets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kdforge.models.detection._dense_head import DenseHead, Scale, flatten_levels, reduce_mean
from kdforge.models.detection.anchors import grid_points
from kdforge.models.detection.assigners import centerness_target, fcos_targets
from kdforge.models.detection.coders import distance2bbox
from kdforge.models.detection.det_losses import (
    binary_cross_entropy,
    giou_loss,
    iou_loss,
    sigmoid_focal_loss,
)
from kdforge.models.detection.postprocess import PostprocessConfig

__all__ = ["FCOSHead"]

_INF = 1e8


class FCOSHead(DenseHead):
    """FCOS head with mmdetection's parameter names (``conv_cls``, ``conv_reg``,
    ``conv_centerness``, ``scales.{l}.scale``).

    Outputs per level: ``"cls"`` ``(N, K, H, W)``, ``"reg"`` ``(N, 4, H, W)`` non-negative
    ``(l, t, r, b)`` distances — in pixels, or in strides with ``norm_on_bbox``
    (mmdetection multiplies those by the stride inside ``forward`` in eval mode; here
    ``predict`` does, so the outputs do not depend on train/eval mode) — and
    ``"centerness"`` ``(N, 1, H, W)`` logits.

    Args:
        num_classes, in_channels, feat_channels, stacked_convs, norm_groups, strides: as
            the other heads.
        conv_bias: tower convs with a bias before their GroupNorm. ``None`` (default) is
            mmdetection's ``conv_bias="auto"``: no bias with GN, as in its FCOS configs
            (R-50/R-101 caffe, X-101 64x4d); the "center-normbbox-centeronreg-giou"
            configs and CanKD's FCOS student set ``True``.
        regress_ranges: ``(lo, hi)`` object sizes per level.
        center_sampling, center_sample_radius: positives only near box centres.
        norm_on_bbox: regress distances in strides with ``relu`` instead of ``exp``.
        centerness_on_reg: centerness branch on the regression tower.
        loss_bbox: ``"iou"`` (``-log IoU``, FCOS) or ``"giou"``.
        loss_*_weight: loss multipliers (all 1).
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
        conv_bias: bool | None = None,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        regress_ranges: Sequence[tuple[float, float]] = (
            (-1, 64),
            (64, 128),
            (128, 256),
            (256, 512),
            (512, _INF),
        ),
        center_sampling: bool = False,
        center_sample_radius: float = 1.5,
        norm_on_bbox: bool = False,
        centerness_on_reg: bool = False,
        loss_bbox: str = "iou",
        focal_gamma: float = 2.0,
        focal_alpha: float = 0.25,
        loss_cls_weight: float = 1.0,
        loss_bbox_weight: float = 1.0,
        loss_centerness_weight: float = 1.0,
        score_thr: float = 0.05,
        nms_pre: int = 1000,
        nms_iou: float = 0.5,
        max_per_img: int = 100,
    ) -> None:
        super().__init__(
            num_classes, in_channels, feat_channels, stacked_convs, norm_groups, conv_bias
        )
        if loss_bbox not in ("iou", "giou"):
            raise ValueError(f"loss_bbox must be 'iou' or 'giou', got {loss_bbox!r}")
        if len(regress_ranges) != len(strides):
            raise ValueError("one regress range per stride is needed")
        self.strides = tuple(strides)
        self.regress_ranges = tuple(tuple(r) for r in regress_ranges)
        self.center_sampling, self.center_sample_radius = center_sampling, center_sample_radius
        self.norm_on_bbox, self.centerness_on_reg = norm_on_bbox, centerness_on_reg
        self.loss_bbox_type = loss_bbox
        self.conv_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.conv_reg = nn.Conv2d(feat_channels, 4, 3, padding=1)
        self.conv_centerness = nn.Conv2d(feat_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.strides)
        self.focal_gamma, self.focal_alpha = focal_gamma, focal_alpha
        self.loss_cls_weight = loss_cls_weight
        self.loss_bbox_weight = loss_bbox_weight
        self.loss_centerness_weight = loss_centerness_weight
        self.test_cfg = PostprocessConfig(score_thr, nms_pre, nms_iou, max_per_img)
        self._init_weights(self.conv_cls)

    def predict_level(self, level: int, cls_feat: Tensor, reg_feat: Tensor) -> dict[str, Tensor]:
        reg = self.scales[level](self.conv_reg(reg_feat)).float()
        reg = reg.clamp(min=0) if self.norm_on_bbox else reg.exp()
        ctr_feat = reg_feat if self.centerness_on_reg else cls_feat
        return {
            "cls": self.conv_cls(cls_feat),
            "reg": reg,
            "centerness": self.conv_centerness(ctr_feat),
        }

    def _priors(self, featmap_sizes: list[tuple[int, int]], device, dtype) -> list[Tensor]:
        return grid_points(featmap_sizes, self.strides, device, dtype)

    def _decode(
        self, level: int, priors: Tensor, reg: Tensor, max_shape: tuple[int, int]
    ) -> Tensor:
        distance = reg * self.strides[level] if self.norm_on_bbox else reg
        return distance2bbox(priors, distance, max_shape)

    def loss(
        self,
        outputs: dict[str, list[Tensor]],
        targets: Sequence[dict[str, Tensor]],
        image_size: tuple[int, int] | Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor]:
        """``{"loss_cls", "loss_bbox", "loss_centerness"}`` as mmdetection's FCOSHead.

        Focal loss over all points and centerness BCE over the positives are divided by
        ``max(#positives, 1)``; the box loss of the positives, weighted by their
        centerness targets ``c``, by ``max(sum c, 1e-6)`` (both averaged over processes).
        """
        cls_outs = outputs["cls"]
        device = cls_outs[0].device
        sizes = [tuple(o.shape[-2:]) for o in cls_outs]
        points_per_level = grid_points(sizes, self.strides, device)
        counts = [p.shape[0] for p in points_per_level]
        points = torch.cat(points_per_level)
        stride = torch.repeat_interleave(
            points.new_tensor(self.strides), torch.tensor(counts, device=device)
        )[:, None]
        labels, box_targets = [], []
        for target in targets:
            lab, box = fcos_targets(
                points,
                counts,
                self.strides,
                self.regress_ranges,
                target["boxes"].to(device, torch.float32).reshape(-1, 4),
                target["labels"].to(device, torch.long).reshape(-1),
                self.num_classes,
                self.center_sampling,
                self.center_sample_radius,
            )
            labels.append(lab)
            box_targets.append(box / stride if self.norm_on_bbox else box)
        labels, box_targets = torch.cat(labels), torch.cat(box_targets)
        cls = flatten_levels(cls_outs, self.num_classes).reshape(-1, self.num_classes)
        reg = flatten_levels(outputs["reg"], 4).reshape(-1, 4)
        ctr = flatten_levels(outputs["centerness"], 1).reshape(-1)
        pos = (labels >= 0) & (labels < self.num_classes)
        num_pos = max(reduce_mean(pos.sum().float()).item(), 1.0)
        loss_cls = sigmoid_focal_loss(
            cls, labels, None, self.focal_gamma, self.focal_alpha, avg_factor=num_pos
        )
        pos_points = points.repeat(len(targets), 1)[pos]
        pos_targets = box_targets[pos]
        ctr_target = centerness_target(pos_targets)
        denorm = max(reduce_mean(ctr_target.sum().detach()).item(), 1e-6)
        if pos.any():
            pred_boxes = distance2bbox(pos_points, reg[pos])
            target_boxes = distance2bbox(pos_points, pos_targets)
            if self.loss_bbox_type == "iou":
                loss_bbox = iou_loss(pred_boxes, target_boxes, ctr_target, avg_factor=denorm)
            else:
                loss_bbox = giou_loss(pred_boxes, target_boxes, ctr_target, avg_factor=denorm)
            loss_ctr = binary_cross_entropy(ctr[pos], ctr_target, avg_factor=num_pos)
        else:
            loss_bbox, loss_ctr = reg[pos].sum(), ctr[pos].sum()
        return {
            "loss_cls": self.loss_cls_weight * loss_cls,
            "loss_bbox": self.loss_bbox_weight * loss_bbox,
            "loss_centerness": self.loss_centerness_weight * loss_ctr,
        }
