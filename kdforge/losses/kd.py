"""Hinton et al., "Distilling the Knowledge in a Neural Network", NIPS-W 2015."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdforge.losses._checks import check_same_classes
from kdforge.losses.base import DistillBatch, LossTerm

__all__ = ["KDLoss", "kd_loss"]


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Soft-target KD loss, exactly as mdistiller computes it.

    ``T² · mean_n Σ_k p_t,k (log p_t,k − log softmax(z_s / T)_k)`` with
    ``p_t = softmax(z_t / T)``: the KL divergence summed over classes and averaged over
    the batch, scaled by ``T²`` so gradients keep their size as ``T`` changes.

    Args:
        student_logits: (N, K) student logits.
        teacher_logits: (N, K) teacher logits.
        temperature: softmax temperature ``T`` (mdistiller default 4).
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_p_student, p_teacher, reduction="none").sum(dim=1)  # (N,)
    return kl.mean() * temperature**2


class KDLoss(LossTerm):
    """``weight · kd_loss(z_s, z_t, T)`` on the model outputs.

    Args:
        weight: loss weight (mdistiller ``KD.LOSS.KD_WEIGHT`` 0.9, with CE 0.1).
        temperature: ``T`` (mdistiller ``KD.TEMPERATURE`` 4).
    """

    needs_teacher_autograd = False

    def __init__(self, *, weight: float = 0.9, temperature: float = 4.0) -> None:
        super().__init__(weight)
        self.temperature = temperature

    def build(self, student_shapes, teacher_shapes) -> None:
        check_same_classes("kd", student_shapes, teacher_shapes)

    def forward(self, batch: DistillBatch) -> Tensor:
        return self.weight * kd_loss(batch.student_output, batch.teacher_output, self.temperature)

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}, temperature={self.temperature:g}"
