"""The task loss of a segmentor: pixel cross-entropy of the decode and auxiliary heads."""

from __future__ import annotations

from torch import Tensor, nn

from kdforge.losses.base import DistillBatch, LossTerm
from kdforge.models.segmentation.seg_loss import segmentation_loss

__all__ = ["SegmentationLoss"]


class SegmentationLoss(LossTerm):
    """``weight · (CE(decode) + aux_weight · CE(auxiliary))`` at label resolution.

    mmsegmentation's ``EncoderDecoder`` losses: each head's logits are upsampled
    bilinearly (``align_corners=False``) to the label size; pixels labelled
    ``ignore_index`` are skipped but, by mmsegmentation's default, still count in the
    mean (``avg_non_ignore=False``). The auxiliary FCN head (weight 0.4) is read by a tap
    on the student's ``aux_name`` module, which runs only in training mode.
    """

    needs_teacher = False

    def __init__(
        self,
        *,
        weight: float = 1.0,
        aux_weight: float = 0.4,
        ignore_index: int = 255,
        avg_non_ignore: bool = False,
    ) -> None:
        super().__init__(weight)
        self.aux_weight, self.ignore_index = aux_weight, ignore_index
        self.avg_non_ignore = avg_non_ignore
        self.aux_path: str | None = None

    def attach(self, student: nn.Module, teacher: nn.Module | None) -> None:
        if self.aux_weight:
            self.aux_path = getattr(student, "aux_name", None)
            if self.aux_path is None:
                raise ValueError(
                    f"{type(student).__name__} has no auxiliary head (aux_name); set "
                    "loss.<name>.aux_weight=0 to train without one"
                )

    @property
    def student_taps(self) -> list[str]:
        return [self.aux_path] if self.aux_path else []

    def _loss(self, logits: Tensor, target: Tensor) -> Tensor:
        return segmentation_loss(logits, target, self.ignore_index, self.avg_non_ignore)

    def forward(self, batch: DistillBatch) -> dict[str, Tensor]:
        losses = {"decode": self.weight * self._loss(batch.student_output, batch.targets)}
        if self.aux_path:
            aux = batch.student_features[self.aux_path]
            losses["aux"] = self.weight * self.aux_weight * self._loss(aux, batch.targets)
        return losses
