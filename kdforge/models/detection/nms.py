"""Non-maximum suppression in plain PyTorch, or torchvision's kernel when it imports.

Greedy NMS (Neubeck and Van Gool, 2006) as mmcv/torchvision define it: boxes are visited
by decreasing score and a box is dropped when its IoU with a kept box is *greater* than
the threshold. Class-aware ("batched") NMS runs it per class, as mmcv's ``batched_nms``
does above its ``split_thr`` (below it mmcv offsets the classes apart, same result).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from kdforge.models.detection.boxes import bbox_overlaps

try:  # torchvision is optional: its compiled NMS is faster, the results are the same
    from torchvision.ops import batched_nms as _tv_batched_nms
except Exception:  # ImportError, or a torchvision built against another torch
    _tv_batched_nms = None

__all__ = ["batched_nms", "nms"]

_ROWS = 256  # rows of the IoU matrix computed at once: bounds the temporary memory


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices of the kept ``(N, 4)`` boxes, by decreasing score.

    The ``N x N`` "higher-scored box suppresses lower one" matrix is computed in row
    blocks, then one pass in score order keeps a box unless an already kept box
    suppresses it.
    """
    order = scores.argsort(descending=True)
    n = order.numel()
    if n == 0:
        return order
    boxes = boxes[order].float()
    suppress = torch.empty(n, n, dtype=torch.bool, device=boxes.device)
    for start in range(0, n, _ROWS):
        ious = bbox_overlaps(boxes[start : start + _ROWS], boxes, eps=0.0)
        suppress[start : start + _ROWS] = ious > iou_threshold  # NaN (empty boxes): False
    suppress = suppress.triu(1).cpu().numpy()
    removed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if not removed[i]:
            keep.append(i)
            removed[i + 1 :] |= suppress[i, i + 1 :]
    return order[torch.as_tensor(keep, device=order.device)]


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware NMS: indices of the kept boxes over all classes, by decreasing score.

    Args:
        boxes: ``(N, 4)`` boxes.
        scores: ``(N,)`` scores.
        labels: ``(N,)`` class of each box; only boxes of one class suppress each other.
        iou_threshold: suppress at IoU ``> iou_threshold``.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    if _tv_batched_nms is not None:
        return _tv_batched_nms(boxes.float(), scores.float(), labels, iou_threshold)
    keep = []
    for label in labels.unique():
        idx = (labels == label).nonzero().squeeze(1)
        keep.append(idx[nms(boxes[idx], scores[idx], iou_threshold)])
    keep = torch.cat(keep)
    return keep[scores[keep].argsort(descending=True)]
