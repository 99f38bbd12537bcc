"""Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdforge.losses._checks import check_same_classes
from kdforge.losses.base import DistillBatch, LossTerm

__all__ = ["DKDLoss", "dkd_loss"]


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> Tensor:
    """DKD = α·TCKD + β·NCKD, exactly as mdistiller computes it (without the warm-up).

    With ``p = softmax(z / T)`` and the binary masses ``b = [p_gt, 1 − p_gt]``:
    ``TCKD = T²/N · Σ_n KL(b_t ‖ b_s)`` (log of the summed probability, no epsilon) and
    ``NCKD = T²/N · Σ_n KL(softmax(z_t/T − 1000·gt) ‖ softmax(z_s/T − 1000·gt))``,
    where subtracting 1000 from the target logit removes it from the softmax.

    Args:
        student_logits: (N, K). teacher_logits: (N, K). target: (N,) class indices.
        alpha: TCKD weight (1). beta: NCKD weight (8; per CIFAR pair 2, 6 or 8).
        temperature: ``T`` (4).
    """
    n = target.shape[0]
    gt = F.one_hot(target, student_logits.shape[1]).to(student_logits.dtype)  # (N, K)
    p_student = F.softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    # (N, K) -> (N, 2): probability of the target class and of all the others
    b_student = torch.stack([(p_student * gt).sum(1), (p_student * (1 - gt)).sum(1)], dim=1)
    b_teacher = torch.stack([(p_teacher * gt).sum(1), (p_teacher * (1 - gt)).sum(1)], dim=1)
    tckd = F.kl_div(torch.log(b_student), b_teacher, reduction="sum") * temperature**2 / n
    log_p_student_nt = F.log_softmax(student_logits / temperature - 1000.0 * gt, dim=1)
    p_teacher_nt = F.softmax(teacher_logits / temperature - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_p_student_nt, p_teacher_nt, reduction="sum") * temperature**2 / n
    return alpha * tckd + beta * nckd


class DKDLoss(LossTerm):
    """DKD on the model outputs with mdistiller's linear warm-up.

    ``loss = weight · min(epoch / warmup, 1) · dkd_loss(...)`` where ``epoch`` is
    mdistiller's 1-based epoch number, i.e. ``batch.epoch + 1`` (the first epoch already
    gets ``1/warmup``).

    Args:
        weight: overall weight (1: mdistiller has none; its CE weight is 1 too).
        alpha: TCKD weight (``DKD.ALPHA`` 1).
        beta: NCKD weight (``DKD.BETA`` 8; 2 or 6 for some CIFAR pairs).
        temperature: ``T`` (``DKD.T`` 4).
        warmup_epochs: length of the linear warm-up (``DKD.WARMUP`` 20; 0 for none).
    """

    needs_teacher_autograd = False

    def __init__(
        self,
        *,
        weight: float = 1.0,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup_epochs: int = 20,
    ) -> None:
        super().__init__(weight)
        self.alpha, self.beta, self.temperature = alpha, beta, temperature
        self.warmup_epochs = warmup_epochs

    def build(self, student_shapes, teacher_shapes) -> None:
        check_same_classes("dkd", student_shapes, teacher_shapes)

    def forward(self, batch: DistillBatch) -> Tensor:
        ramp = min((batch.epoch + 1) / self.warmup_epochs, 1.0) if self.warmup_epochs else 1.0
        loss = dkd_loss(
            batch.student_output,
            batch.teacher_output,
            batch.targets,
            self.alpha,
            self.beta,
            self.temperature,
        )
        return self.weight * ramp * loss

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight:g}, alpha={self.alpha:g}, beta={self.beta:g}, "
            f"temperature={self.temperature:g}, warmup_epochs={self.warmup_epochs}"
        )
