"""Inference post-processing of dense heads, as mmdetection 3.x's ``BaseDenseHead``.

Per image and level: sigmoid scores, keep (prior, class) pairs with score ``> score_thr``,
then the ``nms_pre`` best of them; decode their boxes (clipped to the image). Over all
levels: multiply by the score factor (centerness) if the head has one, drop boxes with a
side ``<= min_bbox_size``, class-aware NMS, keep the ``max_per_img`` best.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kdforge.models.detection.nms import batched_nms

__all__ = ["PostprocessConfig", "filter_scores_and_topk", "select_detections"]


@dataclass(frozen=True)
class PostprocessConfig:
    """mmdetection's ``test_cfg`` of the dense detectors.

    Attributes:
        score_thr: minimum class score before NMS (0.05 in all four configs).
        nms_pre: candidates kept per level before NMS (1000).
        iou_threshold: NMS IoU (RetinaNet and FCOS 0.5, ATSS and GFL 0.6).
        max_per_img: detections kept per image (100).
        min_bbox_size: boxes need both sides ``> min_bbox_size`` (0; negative disables).
    """

    score_thr: float = 0.05
    nms_pre: int = 1000
    iou_threshold: float = 0.5
    max_per_img: int = 100
    min_bbox_size: float = 0.0


def filter_scores_and_topk(
    scores: Tensor, score_thr: float, topk: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Keep ``(prior, class)`` pairs above ``score_thr``, then the ``topk`` best.

    Args:
        scores: ``(P, K)`` probabilities of one level.

    Returns:
        ``(k,)`` scores (descending), class labels and prior indices.
    """
    valid = scores > score_thr
    kept = scores[valid]
    idxs = valid.nonzero()  # (n, 2): prior, class
    kept, order = kept.sort(descending=True)
    order = order[: min(topk, order.numel())] if topk > 0 else order
    prior_idx, labels = idxs[order].unbind(1)
    return kept[: order.numel()], labels, prior_idx


def select_detections(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    cfg: PostprocessConfig,
    score_factors: Tensor | None = None,
) -> dict[str, Tensor]:
    """Score factors, size filter, class-aware NMS and ``max_per_img`` over all levels.

    Returns:
        ``{"boxes": (n, 4), "scores": (n,), "labels": (n,)}`` by decreasing score.
    """
    if score_factors is not None:
        scores = scores * score_factors
    if cfg.min_bbox_size >= 0:
        wh = boxes[:, 2:] - boxes[:, :2]
        valid = (wh > cfg.min_bbox_size).all(dim=1)
        boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
    keep = batched_nms(boxes, scores, labels, cfg.iou_threshold)[: cfg.max_per_img]
    if keep.numel() == 0:
        keep = torch.zeros(0, dtype=torch.long, device=boxes.device)
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
