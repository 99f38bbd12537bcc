"""The task loss: cross-entropy between the student's logits and the labels."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdforge.losses.base import DistillBatch, LossTerm

__all__ = ["CrossEntropyLoss"]


class CrossEntropyLoss(LossTerm):
    """``weight · CE(student_logits, targets)`` (batch mean); needs no teacher.

    Args:
        weight: 1 for a plain student and DKD/FitNet, 0.1 with Hinton KD (mdistiller).
        label_smoothing: as in :func:`torch.nn.functional.cross_entropy`.
        ignore_index: targets with this value are skipped (segmentation uses 255).
    """

    needs_teacher = False

    def __init__(
        self, *, weight: float = 1.0, label_smoothing: float = 0.0, ignore_index: int = -100
    ) -> None:
        super().__init__(weight)
        self.label_smoothing = label_smoothing
        self.ignore_index = ignore_index

    def forward(self, batch: DistillBatch) -> Tensor:
        loss = F.cross_entropy(
            batch.student_output,
            batch.targets,
            label_smoothing=self.label_smoothing,
            ignore_index=self.ignore_index,
        )
        return self.weight * loss
