"""Box geometry on ``(x1, y1, x2, y2)`` boxes in absolute pixels, as mmdetection computes it.

``bbox_overlaps`` follows ``mmdet.structures.bbox.bbox_overlaps``: areas are not clamped,
intersection sides are clamped at 0, and the union (and, for GIoU, the enclosing area) is
clamped below by ``eps``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "bbox_overlaps",
    "box_area",
    "box_centers",
    "cxcywh_to_xyxy",
    "inverse_sigmoid",
    "xyxy_to_cxcywh",
]


def box_area(boxes: Tensor) -> Tensor:
    """``(x2 - x1) * (y2 - y1)`` of ``(..., 4)`` boxes (negative for inverted boxes)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_centers(boxes: Tensor) -> Tensor:
    """``(..., 4)`` boxes -> ``(..., 2)`` centres ``((x1 + x2) / 2, (y1 + y2) / 2)``."""
    return torch.stack(
        ((boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2), dim=-1
    )


def bbox_overlaps(
    boxes1: Tensor,
    boxes2: Tensor,
    mode: str = "iou",
    is_aligned: bool = False,
    eps: float = 1e-6,
) -> Tensor:
    """IoU, IoF or GIoU between two sets of boxes.

    Args:
        boxes1: ``(M, 4)`` boxes.
        boxes2: ``(N, 4)`` boxes (``(M, 4)`` when ``is_aligned``).
        mode: ``"iou"`` (intersection over union), ``"iof"`` (intersection over the area
            of ``boxes1``, "foreground") or ``"giou"`` (Rezatofighi et al., 2019:
            ``IoU - (C - U) / C`` with ``C`` the smallest enclosing box).
        is_aligned: pairwise ``(M,)`` values for row ``i`` of both sets instead of the
            ``(M, N)`` matrix.
        eps: lower bound of the union (and of the enclosing area for GIoU).

    Returns:
        ``(M, N)`` or, aligned, ``(M,)`` overlaps.
    """
    if mode not in ("iou", "iof", "giou"):
        raise ValueError(f"mode must be 'iou', 'iof' or 'giou', got {mode!r}")
    if not is_aligned:
        boxes1, boxes2 = boxes1[:, None, :], boxes2[None, :, :]  # (M, 1, 4), (1, N, 4)
    area1, area2 = box_area(boxes1), box_area(boxes2)
    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = area1 if mode == "iof" else area1 + area2 - overlap
    union = union.clamp(min=eps)
    ious = overlap / union
    if mode != "giou":
        return ious
    enclose_wh = (
        torch.maximum(boxes1[..., 2:], boxes2[..., 2:])
        - torch.minimum(boxes1[..., :2], boxes2[..., :2])
    ).clamp(min=0)
    enclose = (enclose_wh[..., 0] * enclose_wh[..., 1]).clamp(min=eps)
    return ious - (enclose - union) / enclose


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(..., 4)`` ``(cx, cy, w, h)`` -> ``(x1, y1, x2, y2)`` (mmdet ``bbox_cxcywh_to_xyxy``)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``(..., 4)`` ``(x1, y1, x2, y2)`` -> ``(cx, cy, w, h)`` (mmdet ``bbox_xyxy_to_cxcywh``)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``log(x / (1 - x))`` with ``x`` clamped to ``[0, 1]`` and both terms below by ``eps``
    (mmdetection ``layers.transformer.utils.inverse_sigmoid``)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
