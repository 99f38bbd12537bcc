"""CrossKD's loss functions (Wang et al., CVPR 2024, "CrossKD: Cross-Head Knowledge
Distillation for Object Detection"), as pure functions with mmdetection's reduction.

Every function multiplies its element-wise loss by ``weight`` (broadcast over trailing
dimensions) and returns ``sum / (avg_factor + EPS32)``, or the mean without
``avg_factor`` (mmdetection's ``weight_reduce_loss(reduction="mean")``, see
:func:`kdforge.models.detection.det_losses.weight_reduce`). Loss weights are applied by
the term. The box losses (mmdetection's ``GIoULoss`` and ``IoULoss(mode="log")``) are
:func:`~kdforge.models.detection.det_losses.giou_loss` and ``iou_loss``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdforge.losses._checks import check_choice
from kdforge.models.detection.det_losses import weight_reduce

__all__ = ["align_scale", "kd_quality_focal_loss", "kl_div_distill_loss"]


def kd_quality_focal_loss(
    pred_logits: Tensor,
    teacher_logits: Tensor,
    weight: Tensor | None = None,
    avg_factor: float | None = None,
    beta: float = 1.0,
) -> Tensor:
    """Quality focal loss with the teacher's probabilities as soft targets (``KDQualityFocalLoss``).

    ``t = sigmoid(teacher).detach()``, ``l = BCEWithLogits(pred, t) * |sigmoid(pred) - t| ** beta``
    per element; ``weight`` ``(M,)`` (the label weights) is broadcast over the classes, so
    with ``avg_factor`` the sum runs over priors *and* classes.

    Args:
        pred_logits: ``(M, K)`` cross-head (or student) logits.
        teacher_logits: ``(M, K)`` teacher logits.
        weight: ``(M,)`` per-prior weights.
        avg_factor: normaliser (the number of positives in CrossKD).
        beta: focusing exponent (CrossKD: 1).
    """
    target = teacher_logits.sigmoid().detach().to(pred_logits.dtype)
    scale = (pred_logits.sigmoid() - target).abs().pow(beta)
    loss = F.binary_cross_entropy_with_logits(pred_logits, target, reduction="none") * scale
    return weight_reduce(loss, weight, avg_factor)


def kl_div_distill_loss(
    pred: Tensor,
    teacher: Tensor,
    temperature: float = 10.0,
    class_reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | None = None,
) -> Tensor:
    """``KnowledgeDistillationKLDivLoss`` (mmdetection; LD, Zheng et al., 2022) per row.

    ``p = softmax(teacher / T).detach()``, row loss
    ``T**2 * sum_k p_k (log p_k - log_softmax(pred / T)_k)`` (``class_reduction="sum"``)
    or its mean over ``k`` (``"mean"``, the default), then weighted and reduced.

    Args:
        pred, teacher: ``(M, B)`` logits over ``B`` bins/classes (GFL: 17 distance bins).
        temperature: ``T`` (mmdetection default 10; CrossKD GFL: 1).
        class_reduction: ``"mean"`` or ``"sum"`` over the last dimension.
        weight: ``(M,)`` row weights.
        avg_factor: normaliser.
    """
    check_choice("class_reduction", class_reduction, ("mean", "sum"))
    target = F.softmax(teacher / temperature, dim=1).detach()
    loss = F.kl_div(F.log_softmax(pred / temperature, dim=1), target, reduction="none")
    loss = loss.mean(1) if class_reduction == "mean" else loss.sum(1)
    return weight_reduce(loss * temperature**2, weight, avg_factor)


def align_scale(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """Re-standardise the student's feature to the teacher's per-channel statistics.

    Per channel ``c`` over all ``(N, H, W)`` positions of the batch, with unbiased std:
    ``s' = (s - mean(s)) / (std(s) + 1e-6) * std(t) + mean(t)`` (the ``1e-6`` only on the
    student). Whole-batch statistics: the result depends on the batch composition and
    padding, as in the official code.

    Args:
        student_feat: ``(N, C, H, W)``.
        teacher_feat: ``(N', C, H', W')`` (same channels).

    Returns:
        ``(N, C, H, W)``.
    """
    n, c, h, w = student_feat.shape
    s = student_feat.transpose(0, 1).reshape(c, -1)  # (C, N*H*W)
    t = teacher_feat.transpose(0, 1).reshape(teacher_feat.shape[1], -1)
    s = (s - s.mean(1, keepdim=True)) / (s.std(1, keepdim=True) + 1e-6)
    s = s * t.std(1, keepdim=True) + t.mean(1, keepdim=True)
    return s.reshape(c, n, h, w).transpose(0, 1)
