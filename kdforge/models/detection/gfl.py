"""GFL head (Li et al., 2020, "Generalized Focal Loss: Learning Qualified and Distributed
Bounding Boxes for Dense Object Detection").

mmdetection ``configs/gfl/gfl_r50_fpn_1x_coco.py``: ATSS-like towers (4 convs, GN(32));
one square anchor per location (``octave_base_scale=8``), used only for its centre and
for ATSS assignment (``topk=9``); each box side is a discrete distribution over
``0..reg_max`` (16) stride units, read out by its expectation (``Integral``). Losses:
quality focal loss (beta 2) with the IoU of the predicted box as soft target, DFL
(weight 0.25) and GIoU (weight 2) weighted by the predicted class confidence; test:
score 0.05, 1000 per level, NMS 0.6, 100 per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.models.detection._anchor_head import AnchorHead
from kdforge.models.detection._dense_head import Scale, flatten_levels, reduce_mean
from kdforge.models.detection.anchors import AnchorGenerator
from kdforge.models.detection.assigners import atss_assign
from kdforge.models.detection.boxes import bbox_overlaps, box_centers
from kdforge.models.detection.coders import bbox2distance, distance2bbox
from kdforge.models.detection.det_losses import (
    distribution_focal_loss,
    giou_loss,
    quality_focal_loss,
)
from kdforge.models.detection.postprocess import PostprocessConfig

__all__ = ["GFLHead", "Integral"]


class Integral(nn.Module):
    """Expected value ``sum_i softmax(x)_i * i`` of each side's distribution over ``0..n``.

    Holds the buffer ``project = linspace(0, reg_max, reg_max + 1)`` as mmdetection does
    (it is in GFL checkpoints as ``bbox_head.integral.project``).
    """

    def __init__(self, reg_max: int = 16) -> None:
        super().__init__()
        self.reg_max = reg_max
        self.register_buffer("project", torch.linspace(0, reg_max, reg_max + 1))

    def forward(self, x: Tensor) -> Tensor:
        """``(M, 4 * (n + 1))`` logits -> ``(M, 4)`` distances (in strides)."""
        x = F.softmax(x.reshape(-1, self.reg_max + 1), dim=1)
        return F.linear(x, self.project.type_as(x)).reshape(-1, 4)


class GFLHead(AnchorHead):
    """GFL head with mmdetection's parameter names (``gfl_cls``, ``gfl_reg``,
    ``scales.{l}.scale``, ``integral.project``).

    Outputs per level: ``"cls"`` ``(N, K, H, W)`` joint class-IoU logits and ``"reg"``
    ``(N, 4 * (reg_max + 1), H, W)`` distribution logits (``scales[l]`` applied).

    Args:
        num_classes, in_channels, feat_channels, stacked_convs, norm_groups, strides,
        octave_base_scale, scales_per_octave, ratios, topk, ignore_iof_thr: as ATSSHead.
        reg_max: largest distance bin, in strides.
        qfl_beta: QFL exponent.
        loss_cls_weight, loss_bbox_weight, loss_dfl_weight: 1, 2 and 0.25.
        score_thr, nms_pre, nms_iou, max_per_img: test settings.
    """

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
        reg_max: int = 16,
        topk: int = 9,
        ignore_iof_thr: float = -1.0,
        qfl_beta: float = 2.0,
        loss_cls_weight: float = 1.0,
        loss_bbox_weight: float = 2.0,
        loss_dfl_weight: float = 0.25,
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
        if self.num_anchors != 1:
            raise ValueError("GFL is anchor-free: use one anchor per location")
        self.reg_max = reg_max
        self.gfl_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.gfl_reg = nn.Conv2d(feat_channels, 4 * (reg_max + 1), 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.strides)
        self.integral = Integral(reg_max)
        self.topk, self.ignore_iof_thr, self.qfl_beta = topk, ignore_iof_thr, qfl_beta
        self.loss_cls_weight = loss_cls_weight
        self.loss_bbox_weight = loss_bbox_weight
        self.loss_dfl_weight = loss_dfl_weight
        self.test_cfg = PostprocessConfig(score_thr, nms_pre, nms_iou, max_per_img)
        self._init_weights(self.gfl_cls)

    def predict_level(self, level: int, cls_feat: Tensor, reg_feat: Tensor) -> dict[str, Tensor]:
        return {
            "cls": self.gfl_cls(cls_feat),
            "reg": self.scales[level](self.gfl_reg(reg_feat)).float(),
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
        distance = self.integral(reg) * self.strides[level]
        return distance2bbox(box_centers(priors), distance, max_shape)

    def loss(
        self,
        outputs: dict[str, list[Tensor]],
        targets: Sequence[dict[str, Tensor]],
        image_size: tuple[int, int] | Sequence[tuple[int, int]],
    ) -> dict[str, Tensor]:
        """``{"loss_cls", "loss_bbox", "loss_dfl"}`` as mmdetection's GFLHead.

        Boxes are compared in stride units. QFL's soft target at a positive is the IoU of
        the (detached) predicted box with its ground truth; QFL is divided by the number
        of positives (averaged over processes). GIoU and DFL (``avg_factor`` 1 and 4) are
        weighted by ``w = max_k sigmoid(cls)`` (detached) and divided by ``max(sum w, 1)``.
        """
        cls_outs = outputs["cls"]
        sizes = [tuple(o.shape[-2:]) for o in cls_outs]
        t = self.anchor_targets(sizes, targets, image_size, True, cls_outs[0].device)
        cls = flatten_levels(cls_outs, self.num_classes).reshape(-1, self.num_classes)
        reg = flatten_levels(outputs["reg"], 4 * (self.reg_max + 1))
        reg = reg.reshape(-1, 4 * (self.reg_max + 1))
        pos = t.pos.reshape(-1)
        counts = torch.tensor([h * w for h, w in sizes], device=cls.device)
        strides = torch.repeat_interleave(cls.new_tensor(self.strides), counts)
        stride = strides.repeat(len(targets))[pos, None]  # (n, 1)
        centers = box_centers(t.anchors.repeat(len(targets), 1)[pos]) / stride
        gt = t.gt_boxes.reshape(-1, 4)[pos] / stride
        weight = cls.detach().sigmoid().amax(1)[pos]
        pred = distance2bbox(centers, self.integral(reg[pos]))
        scores = cls.new_zeros(cls.shape[0])
        scores[pos] = bbox_overlaps(pred.detach(), gt, is_aligned=True)
        loss_cls = quality_focal_loss(
            cls,
            t.labels.reshape(-1),
            scores,
            t.label_weights.reshape(-1),
            self.qfl_beta,
            avg_factor=t.avg_factor,
        )
        # every process joins the all-reduce, with or without positives
        weight_sum = reduce_mean(weight.sum()).clamp(min=1).item()
        if pos.any():
            loss_bbox = giou_loss(pred, gt, weight, avg_factor=1.0) / weight_sum
            target = bbox2distance(centers, gt, self.reg_max).reshape(-1)
            loss_dfl = distribution_focal_loss(
                reg[pos].reshape(-1, self.reg_max + 1),
                target,
                weight[:, None].expand(-1, 4).reshape(-1),
                avg_factor=4.0,
            )
            loss_dfl = loss_dfl / weight_sum
        else:
            loss_bbox = loss_dfl = reg.sum() * 0
        return {
            "loss_cls": self.loss_cls_weight * loss_cls,
            "loss_bbox": self.loss_bbox_weight * loss_bbox,
            "loss_dfl": self.loss_dfl_weight * loss_dfl,
        }
