"""Cao et al., "PKD: General Distillation Framework for Object Detectors via Pearson
Correlation Coefficient", NeurIPS 2022.

Each feature map is standardised per channel over all ``(N, H, W)`` positions of the
batch, then the halved element-mean squared error is taken: with
``norm(x)_c = (x_c - mean(x_c)) / (std(x_c) + 1e-6)`` (unbiased std),
``PKD(S, T) = MSE(norm(S), norm(T)) / 2 ≈ (1 - pearson(S_c, T_c)) · (n - 1) / n`` averaged
over channels. Semantics of mmrazor's ``PKDLoss(loss_weight=1.0, resize_stu=True)``:
levels are summed (not averaged); when the *heights* differ (only ``size(2)`` is compared)
the student (or the teacher with ``resize_student=False``) is bilinearly resized
(``align_corners=False``) to the other's ``(H, W)``. CrossKD's copy applies it to all five
FPN levels (weights: GFL 6, RetinaNet 2, ATSS 1, FCOS 2); mmrazor's own configs use
levels 0-3 (Faster R-CNN 6, RetinaNet 10).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from kdforge.losses._checks import describe_mismatch
from kdforge.losses.base import DistillBatch, LayerPairTerm, ShapeTree

__all__ = ["PKDLoss", "pkd_loss"]

FPN_LEVELS = tuple(f"neck.fpn_convs.{i}" for i in range(5))


def _standardise(x: Tensor) -> Tensor:
    """``(N, C, H, W)`` -> ``(C, N*H*W)`` standardised per channel (unbiased std + 1e-6)."""
    x = x.transpose(0, 1).reshape(x.shape[1], -1)
    return (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-6)


def pkd_loss(student_feat: Tensor, teacher_feat: Tensor, resize_student: bool = True) -> Tensor:
    """``MSE(norm(S), norm(T)) / 2`` of one level, without a loss weight.

    Args:
        student_feat: ``(N, C, H_s, W_s)``.
        teacher_feat: ``(N, C, H_t, W_t)``.
        resize_student: if ``H_s != H_t``, resize the student to the teacher's size
            (else the teacher to the student's).
    """
    if student_feat.shape[2] != teacher_feat.shape[2]:
        if resize_student:
            student_feat = F.interpolate(student_feat, teacher_feat.shape[2:], mode="bilinear")
        else:
            teacher_feat = F.interpolate(teacher_feat, student_feat.shape[2:], mode="bilinear")
    return F.mse_loss(_standardise(student_feat), _standardise(teacher_feat)) / 2


class PKDLoss(LayerPairTerm):
    """``weight · sum_l PKD(S_l, T_l)`` over pairs of student/teacher feature maps.

    Args:
        student_layers: module paths of the student maps (default the five FPN levels
            ``neck.fpn_convs.0..4``).
        teacher_layers: the teacher's, paired in order (default: ``student_layers``).
        weight: ``loss_weight`` of mmrazor's ``PKDLoss`` (default 1; the configs' values
            are in the module docstring).
        resize_student: which side is resized when heights differ (``resize_stu``).
    """

    needs_teacher_output = False
    needs_teacher_autograd = False

    def __init__(
        self,
        student_layers: Sequence[str] = FPN_LEVELS,
        teacher_layers: Sequence[str] | None = None,
        *,
        weight: float = 1.0,
        resize_student: bool = True,
    ) -> None:
        super().__init__(student_layers, teacher_layers, weight=weight)
        self.resize_student = resize_student

    def build(
        self, student_shapes: dict[str, ShapeTree], teacher_shapes: dict[str, ShapeTree]
    ) -> None:
        for s_path, t_path in zip(self.student_layers, self.teacher_layers, strict=True):
            s, t = student_shapes[s_path], teacher_shapes[t_path]
            if len(s) != 4 or len(t) != 4 or s[1] != t[1]:
                raise ValueError(
                    describe_mismatch(
                        "pkd",
                        s_path,
                        s,
                        t_path,
                        t,
                        "PKD needs (N, C, H, W) maps with the same channels; tap layers of "
                        "equal width (e.g. FPN levels with the same fpn_channels).",
                    )
                )

    def forward(self, batch: DistillBatch) -> Tensor:
        pairs = zip(self.student_layers, self.teacher_layers, strict=True)
        return self.weight * sum(
            pkd_loss(batch.student_features[s], batch.teacher_features[t], self.resize_student)
            for s, t in pairs
        )

    def extra_repr(self) -> str:
        return (
            f"student_layers={self.student_layers}, teacher_layers={self.teacher_layers}, "
            f"weight={self.weight:g}, resize_student={self.resize_student}"
        )
