"""Detection losses as pure functions with mmdetection's reduction.

Every function computes an element-wise loss ``l``, multiplies it by ``weight`` (broadcast
over trailing dimensions, e.g. a per-prior weight over the classes) and reduces it like
mmdetection's ``weight_reduce_loss(reduction="mean")``:

* ``avg_factor`` given: ``sum(w * l) / (avg_factor + EPS32)`` with
  ``EPS32 = torch.finfo(torch.float32).eps`` (the sum runs over priors *and* classes);
* otherwise: ``mean(w * l)``.

Loss weights (``loss_weight`` in mmdetection configs) are applied by the heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdforge.models.detection.boxes import bbox_overlaps

__all__ = [
    "binary_cross_entropy",
    "distribution_focal_loss",
    "giou_loss",
    "iou_loss",
    "l1_loss",
    "quality_focal_loss",
    "sigmoid_focal_loss",
    "smooth_l1_loss",
    "weight_reduce",
]

EPS32 = torch.finfo(torch.float32).eps


def weight_reduce(
    loss: Tensor, weight: Tensor | None = None, avg_factor: float | None = None
) -> Tensor:
    """``sum(weight * loss) / (avg_factor + EPS32)``, or the mean without ``avg_factor``."""
    if weight is not None:
        while weight.dim() < loss.dim():  # (M,) -> (M, 1): broadcast over classes/sides
            weight = weight.unsqueeze(-1)
        loss = loss * weight
    if avg_factor is None:
        return loss.mean()
    return loss.sum() / (avg_factor + EPS32)


def _one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """``(M,)`` labels with ``num_classes`` = background -> ``(M, K)`` float one-hot."""
    return F.one_hot(labels, num_classes + 1)[:, :num_classes].float()


def sigmoid_focal_loss(
    pred: Tensor,
    labels: Tensor,
    weight: Tensor | None = None,
    gamma: float = 2.0,
    alpha: float = 0.25,
    avg_factor: float | None = None,
) -> Tensor:
    """Focal loss (Lin et al., 2017, RetinaNet) on per-class sigmoids.

    With ``t`` the one-hot target (background = all zeros) and ``p = sigmoid(pred)``:
    ``l = BCE(pred, t) * (alpha t + (1 - alpha)(1 - t)) * (p (1 - t) + (1 - p) t) ** gamma``.

    Args:
        pred: ``(M, K)`` logits.
        labels: ``(M,)`` int64 classes in ``[0, K]``, ``K`` = background.
        weight: ``(M,)`` per-prior weights (mmdetection's ``label_weights``).
    """
    target = _one_hot(labels, pred.shape[1])
    prob = pred.sigmoid()
    pt = (1 - prob) * target + prob * (1 - target)
    focal_weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none") * focal_weight
    return weight_reduce(loss, weight, avg_factor)


def quality_focal_loss(
    pred: Tensor,
    labels: Tensor,
    scores: Tensor,
    weight: Tensor | None = None,
    beta: float = 2.0,
    avg_factor: float | None = None,
) -> Tensor:
    """Quality focal loss (Li et al., 2020, GFL): ``|y - sigmoid(pred)| ** beta * BCE(pred, y)``.

    The soft target ``y`` is the IoU ``scores[m]`` at the positive class ``labels[m]`` and
    0 elsewhere (background rows all 0). The per-prior loss is summed over classes.

    Args:
        pred: ``(M, K)`` joint class-quality logits.
        labels: ``(M,)`` int64 classes, ``K`` = background.
        scores: ``(M,)`` IoU targets of the positives (ignored elsewhere).
        weight: ``(M,)`` per-prior weights.
    """
    prob = pred.sigmoid()
    loss = F.binary_cross_entropy_with_logits(
        pred, torch.zeros_like(pred), reduction="none"
    ) * prob.pow(beta)
    pos = ((labels >= 0) & (labels < pred.shape[1])).nonzero().squeeze(1)
    if pos.numel() > 0:
        cls = labels[pos]
        logit, target = pred[pos, cls], scores[pos].to(pred.dtype)
        loss = loss.index_put(
            (pos, cls),
            F.binary_cross_entropy_with_logits(logit, target, reduction="none")
            * (target - prob[pos, cls]).abs().pow(beta),
        )
    return weight_reduce(loss.sum(dim=1), weight, avg_factor)


def distribution_focal_loss(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, avg_factor: float | None = None
) -> Tensor:
    """Distribution focal loss (Li et al., 2020, GFL).

    For a continuous target ``y`` between bins ``y_l = floor(y)`` and ``y_r = y_l + 1``:
    ``l = (y_r - y) CE(pred, y_l) + (y - y_l) CE(pred, y_r)``.

    Args:
        pred: ``(M, n + 1)`` logits over the bins ``0..n`` (``n = reg_max``).
        target: ``(M,)`` distances in ``[0, n)``.
    """
    left = target.long()
    right = left + 1
    loss = F.cross_entropy(pred, left, reduction="none") * (right.float() - target) + (
        F.cross_entropy(pred, right, reduction="none") * (target - left.float())
    )
    return weight_reduce(loss, weight, avg_factor)


def _all_zero_weight(pred: Tensor, weight: Tensor | None) -> Tensor | None:
    """mmdetection's IoU-loss shortcut: with no positive weight return ``sum(pred * w)`` = 0."""
    if weight is not None and not torch.any(weight > 0):
        return (pred * weight[:, None]).sum()
    return None


def iou_loss(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    mode: str = "log",
    eps: float = 1e-6,
    avg_factor: float | None = None,
) -> Tensor:
    """IoU loss (Yu et al., 2016, UnitBox; FCOS's box loss): ``-log(IoU)`` by default.

    ``IoU`` is clamped below by ``eps``; ``mode="linear"`` gives ``1 - IoU`` and
    ``"square"`` gives ``1 - IoU**2``.

    Args:
        pred, target: ``(M, 4)`` aligned boxes.
        weight: ``(M,)`` (FCOS: centerness targets).
    """
    zero = _all_zero_weight(pred, weight)
    if zero is not None:
        return zero
    ious = bbox_overlaps(pred, target, is_aligned=True).clamp(min=eps)
    if mode == "log":
        loss = -ious.log()
    elif mode == "linear":
        loss = 1 - ious
    elif mode == "square":
        loss = 1 - ious**2
    else:
        raise ValueError(f"mode must be 'log', 'linear' or 'square', got {mode!r}")
    return weight_reduce(loss, weight, avg_factor)


def giou_loss(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    eps: float = 1e-6,
    avg_factor: float | None = None,
) -> Tensor:
    """Generalised IoU loss (Rezatofighi et al., 2019): ``1 - GIoU`` of aligned boxes."""
    zero = _all_zero_weight(pred, weight)
    if zero is not None:
        return zero
    loss = 1 - bbox_overlaps(pred, target, mode="giou", is_aligned=True, eps=eps)
    return weight_reduce(loss, weight, avg_factor)


def l1_loss(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, avg_factor: float | None = None
) -> Tensor:
    """``|pred - target|`` (RetinaNet's box loss on deltas); 0 for empty inputs."""
    if target.numel() == 0:
        return pred.sum() * 0
    return weight_reduce((pred - target).abs(), weight, avg_factor)


def smooth_l1_loss(
    pred: Tensor,
    target: Tensor,
    beta: float = 1.0,
    weight: Tensor | None = None,
    avg_factor: float | None = None,
) -> Tensor:
    """Smooth L1 (Girshick, 2015): ``0.5 d**2 / beta`` if ``d < beta`` else ``d - beta / 2``."""
    if target.numel() == 0:
        return pred.sum() * 0
    diff = (pred - target).abs()
    loss = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    return weight_reduce(loss, weight, avg_factor)


def binary_cross_entropy(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, avg_factor: float | None = None
) -> Tensor:
    """Sigmoid BCE with soft targets (FCOS/ATSS centerness): ``BCEWithLogits(pred, target)``."""
    loss = F.binary_cross_entropy_with_logits(pred, target.to(pred.dtype), reduction="none")
    return weight_reduce(loss, weight, avg_factor)
