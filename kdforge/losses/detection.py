"""The task loss of a dense detector: its own ground-truth losses, computed by the model."""

from __future__ import annotations

from torch import Tensor, nn

from kdforge.losses._common import pad_shapes
from kdforge.losses.base import DistillBatch, LossTerm

__all__ = ["DetectionLoss"]


class DetectionLoss(LossTerm):
    """``weight ·`` the student detector's ground-truth losses (``model.loss``), by name.

    The detector (see :class:`kdforge.models.detection.DenseDetector`) assigns its priors
    and computes mmdetection's losses, e.g. ``{"cls": focal, "bbox": GIoU, "dfl": ...}``.
    Each image's valid region is mmdetection's ``pad_shape``: the target's (which
    ``collate_detection`` records with the recipe's ``data.options.size_divisor``), else its
    ``img_shape`` padded to ``size_divisor``; priors outside it get no loss. Needs no teacher.
    """

    needs_teacher = False

    def __init__(self, *, weight: float = 1.0, size_divisor: int = 32) -> None:
        super().__init__(weight)
        self.size_divisor = size_divisor

    def attach(self, student: nn.Module, teacher: nn.Module | None) -> None:
        if not hasattr(student, "loss"):
            raise TypeError(
                f"the detection loss needs a detector with a loss() method; "
                f"{type(student).__name__} has none (use a kdforge.models.detection model)"
            )
        self._student = (student,)  # a tuple keeps it out of this term's module tree

    def forward(self, batch: DistillBatch) -> dict[str, Tensor]:
        pads = pad_shapes(batch.targets, self.size_divisor)
        losses = self._student[0].loss(batch.student_output, batch.targets, pads)
        return {name.removeprefix("loss_"): self.weight * value for name, value in losses.items()}
