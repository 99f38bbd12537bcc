"""MGD: Yang et al., "Masked Generative Distillation", ECCV 2022 (mmrazor's implementation:
``mmrazor/models/losses/mgd_loss.py``, ``models/architectures/connectors/mgd_connector.py``).

Per level, with student ``s`` (optionally aligned by a 1×1 conv to the teacher's channels)
and teacher ``t``::

    M = 1[u ≤ 1 − λ],  u ~ U(0, 1) of shape (N, 1, H, W)   # a fraction λ of positions zeroed
    S' = conv3×3(ReLU(conv3×3(align(s) · M)))
    loss = α · Σ (S' − t)² / N                               # sum-MSE over C·H·W, per image

mmrazor defaults: ``alpha_mgd = 2e-5`` (the term's ``weight``), ``lambda_mgd = 0.65``; the
MGD RetinaNet config (``mgd_fpn_retina_x101_retina_r50_2x_coco.py``) distils all 5 FPN
levels. Quirk kept: the mask is drawn from the CPU generator (``torch.rand`` then
``.to(device)``), so ``torch.manual_seed`` fixes it on any device. The connectors keep
PyTorch's default init.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kdforge.losses._checks import describe_mismatch
from kdforge.losses._common import init_student_from_teacher
from kdforge.losses.base import DistillBatch, LayerPairTerm, ShapeTree

__all__ = ["MGDConnector", "MGDLoss", "mgd_loss", "mgd_mask"]


def mgd_mask(feature: Tensor, lambda_mgd: float = 0.65) -> Tensor:
    """``(N, C, H, W)`` -> ``(N, 1, H, W)`` mask: 0 where ``u > 1 − λ``, else 1 (``u`` on CPU)."""
    n, _, h, w = feature.shape
    u = torch.rand((n, 1, h, w)).to(feature.device)
    return (u <= 1 - lambda_mgd).to(feature.dtype)


def mgd_loss(generated: Tensor, teacher: Tensor, weight: float = 2e-5) -> Tensor:
    """``α · Σ (S' − T)² / N`` for ``(N, C, H, W)`` maps of equal shape (``weight`` = α,
    mmrazor's ``alpha_mgd``)."""
    if generated.shape != teacher.shape:
        raise ValueError(
            f"mgd_loss needs equal shapes, got {tuple(generated.shape)} and {tuple(teacher.shape)}"
        )
    return weight * (generated - teacher).pow(2).sum() / teacher.shape[0]


class MGDConnector(nn.Module):
    """mmrazor's ``MGDConncetor``: optional 1×1 align conv, random mask, conv3×3–ReLU–conv3×3.

    Args:
        student_channels: channels of the student map.
        teacher_channels: channels of the teacher map (an align conv is added if they differ).
        lambda_mgd: the masked fraction λ (0.65).
    """

    def __init__(
        self, student_channels: int, teacher_channels: int, lambda_mgd: float = 0.65
    ) -> None:
        super().__init__()
        self.lambda_mgd = lambda_mgd
        self.align = (
            nn.Conv2d(student_channels, teacher_channels, 1)
            if student_channels != teacher_channels
            else None
        )
        self.generation = nn.Sequential(
            nn.Conv2d(teacher_channels, teacher_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(teacher_channels, teacher_channels, 3, padding=1),
        )

    def forward(self, feature: Tensor) -> Tensor:
        if self.align is not None:
            feature = self.align(feature)
        return self.generation(feature * mgd_mask(feature, self.lambda_mgd))


class MGDLoss(LayerPairTerm):
    """MGD term: one :class:`MGDConnector` per tapped level, ``Σ_levels mgd_loss``.

    Usable on FPN levels (``neck.fpn_convs.0..4``, equal channels) and on segmentation
    features (``backbone.layer4``: the align conv maps student to teacher channels). Losses
    are returned per student path. mmrazor's RetinaNet config also initialises the
    student's neck and head from the teacher checkpoint (``init_from_teacher: [neck,
    bbox_head]``, see :func:`kdforge.losses.init_student_from_teacher`).

    Args:
        student_layers: module paths of the student levels.
        teacher_layers: the matching teacher paths (default: the same paths).
        weight: the loss weight α (``alpha_mgd`` in mmrazor, 2e-5).
        lambda_mgd: the masked fraction λ (0.65).
        init_from_teacher: module prefixes copied from the teacher into the student when
            attached (default: none).
    """

    needs_teacher_output = False
    needs_teacher_autograd = False

    def __init__(
        self,
        student_layers: Sequence[str],
        teacher_layers: Sequence[str] | None = None,
        *,
        weight: float = 2e-5,
        lambda_mgd: float = 0.65,
        init_from_teacher: Sequence[str] = (),
    ) -> None:
        super().__init__(student_layers, teacher_layers, weight=weight)
        self.lambda_mgd = lambda_mgd
        self.init_from_teacher = list(init_from_teacher)
        self.connectors = nn.ModuleList()

    def attach(self, student: nn.Module, teacher: nn.Module | None) -> None:
        if self.init_from_teacher and teacher is not None:
            init_student_from_teacher(student, teacher, self.init_from_teacher)

    def build(
        self, student_shapes: dict[str, ShapeTree], teacher_shapes: dict[str, ShapeTree]
    ) -> None:
        for s_path, t_path in zip(self.student_layers, self.teacher_layers, strict=True):
            s, t = student_shapes[s_path], teacher_shapes[t_path]
            if s[0] != t[0] or s[2:] != t[2:]:
                raise ValueError(
                    describe_mismatch("mgd", s_path, s, t_path, t, "Tap levels of equal stride.")
                )
            self.connectors.append(MGDConnector(s[1], t[1], self.lambda_mgd))

    def forward(self, batch: DistillBatch) -> dict[str, Tensor]:
        losses = {}
        pairs = zip(self.student_layers, self.teacher_layers, self.connectors, strict=True)
        for s_path, t_path, connector in pairs:
            generated = connector(batch.student_features[s_path])
            losses[s_path] = mgd_loss(generated, batch.teacher_features[t_path], self.weight)
        return losses

    def extra_repr(self) -> str:
        return (
            f"student_layers={self.student_layers}, teacher_layers={self.teacher_layers}, "
            f"weight={self.weight:g}, lambda_mgd={self.lambda_mgd:g}"
        )
