"""One-to-one matching of DETR queries to boxes (Carion et al., 2020), as mmdetection 3.x.

``HungarianAssigner`` sums three match costs into a ``(Q, G)`` matrix and solves it with
``scipy.optimize.linear_sum_assignment``. DINO's settings (mmdetection
``configs/dino/dino-4scale_r50_8xb2-12e_coco.py``): ``FocalLossCost`` weight 2.0 on sigmoid
logits (alpha 0.25, gamma 2), ``BBoxL1Cost`` weight 5.0 on normalised ``(cx, cy, w, h)``
and ``IoUCost`` (GIoU) weight 2.0 on pixel boxes.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from kdforge.models.detection.boxes import bbox_overlaps, cxcywh_to_xyxy, xyxy_to_cxcywh

__all__ = ["HungarianAssigner", "bbox_l1_cost", "focal_loss_cost", "iou_cost"]


def focal_loss_cost(
    cls_logits: Tensor,
    gt_labels: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    eps: float = 1e-12,
) -> Tensor:
    """mmdetection ``FocalLossCost``: the focal loss of calling query ``q`` class ``c_g``
    minus that of not calling it, ``(Q, K)`` logits x ``(G,)`` labels -> ``(Q, G)``.

    With ``p = sigmoid(logit)``: ``pos = -log(p + eps) alpha (1 - p)^gamma`` and
    ``neg = -log(1 - p + eps) (1 - alpha) p^gamma``; the cost is ``pos - neg``.
    """
    prob = cls_logits.sigmoid()
    neg = -(1 - prob + eps).log() * (1 - alpha) * prob.pow(gamma)
    pos = -(prob + eps).log() * alpha * (1 - prob).pow(gamma)
    return pos[:, gt_labels] - neg[:, gt_labels]


def bbox_l1_cost(pred_boxes: Tensor, gt_boxes: Tensor) -> Tensor:
    """mmdetection ``BBoxL1Cost(box_format="xywh")``: ``(Q, 4)`` x ``(G, 4)`` normalised
    ``(cx, cy, w, h)`` boxes -> ``(Q, G)`` L1 distances."""
    return torch.cdist(pred_boxes, gt_boxes, p=1)


def iou_cost(pred_boxes: Tensor, gt_boxes: Tensor, mode: str = "giou") -> Tensor:
    """mmdetection ``IoUCost``: ``-IoU`` (or ``-GIoU``) of ``(Q, 4)`` x ``(G, 4)`` xyxy boxes."""
    return -bbox_overlaps(pred_boxes.float(), gt_boxes.float(), mode=mode)


class HungarianAssigner:
    """mmdetection ``HungarianAssigner`` with DETR's three costs.

    Args:
        cls_weight: ``FocalLossCost`` weight (DINO 2.0).
        l1_weight: ``BBoxL1Cost`` weight (5.0).
        iou_weight: ``IoUCost`` weight (2.0).
        alpha, gamma: focal-cost parameters.
        iou_mode: ``"giou"`` or ``"iou"``.
    """

    def __init__(
        self,
        cls_weight: float = 2.0,
        l1_weight: float = 5.0,
        iou_weight: float = 2.0,
        alpha: float = 0.25,
        gamma: float = 2.0,
        iou_mode: str = "giou",
    ) -> None:
        self.cls_weight, self.l1_weight, self.iou_weight = cls_weight, l1_weight, iou_weight
        self.alpha, self.gamma, self.iou_mode = alpha, gamma, iou_mode

    def cost(
        self,
        cls_logits: Tensor,
        pred_boxes: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        img_shape: tuple[int, int],
    ) -> Tensor:
        """The weighted ``(Q, G)`` cost matrix.

        Args:
            cls_logits: ``(Q, K)`` class logits.
            pred_boxes: ``(Q, 4)`` sigmoid ``(cx, cy, w, h)`` normalised by the image size.
            gt_boxes: ``(G, 4)`` xyxy boxes in pixels.
            gt_labels: ``(G,)`` int64 classes.
            img_shape: ``(H, W)`` of the image before padding (the normaliser).
        """
        height, width = img_shape
        factor = gt_boxes.new_tensor([width, height, width, height])
        pred_pixels = cxcywh_to_xyxy(pred_boxes) * factor  # (Q, 4) xyxy px
        cls = focal_loss_cost(cls_logits, gt_labels, self.alpha, self.gamma)
        l1 = bbox_l1_cost(xyxy_to_cxcywh(pred_pixels) / factor, xyxy_to_cxcywh(gt_boxes) / factor)
        iou = iou_cost(pred_pixels, gt_boxes, self.iou_mode)
        return self.cls_weight * cls + self.l1_weight * l1 + self.iou_weight * iou

    @torch.no_grad()
    def assign(
        self,
        cls_logits: Tensor,
        pred_boxes: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        img_shape: tuple[int, int],
    ) -> Tensor:
        """``(Q,)`` int64 ``gt_inds``: ``0`` background, ``g + 1`` matched to box ``g``
        (arguments as :meth:`cost`). Each box gets exactly one query when ``Q >= G``."""
        num_queries, num_gts = cls_logits.shape[0], gt_boxes.shape[0]
        gt_inds = torch.zeros(num_queries, dtype=torch.long, device=cls_logits.device)
        if num_gts == 0 or num_queries == 0:
            return gt_inds
        cost = self.cost(cls_logits.float(), pred_boxes.float(), gt_boxes, gt_labels, img_shape)
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        rows = torch.as_tensor(rows, dtype=torch.long, device=gt_inds.device)
        gt_inds[rows] = torch.as_tensor(cols, dtype=torch.long, device=gt_inds.device) + 1
        return gt_inds
