"""Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.losses._checks import check_choice, describe_mismatch
from kdforge.losses.base import DistillBatch, LossTerm

__all__ = ["ConvRegressor", "FitNetLoss", "fitnet_loss"]


def fitnet_loss(student_hint: Tensor, teacher_hint: Tensor) -> Tensor:
    """Hint loss: element-mean squared error ``mean((r(f_s) − f_t)²)`` of equal-shape maps."""
    return F.mse_loss(student_hint, teacher_hint)


class ConvRegressor(nn.Module):
    """mdistiller's ``ConvReg`` connector: conv → BN → ReLU from student to teacher shape.

    The conv is chosen from the spatial sizes: stride-2 3×3 when the student map is twice
    as large, stride-2 4×4 transposed conv when it is half as large, else a valid conv of
    kernel ``1 + H_s − H_t`` (1×1 when the sizes agree).
    """

    def __init__(self, student_shape: tuple, teacher_shape: tuple, use_relu: bool = True) -> None:
        super().__init__()
        _, c_s, h_s, w_s = student_shape
        _, c_t, h_t, w_t = teacher_shape
        # mdistiller compares heights only (its maps are square); both sides are checked
        # here so that a non-square map cannot yield a wrong-size hint that MSE broadcasts.
        if h_s == 2 * h_t and w_s == 2 * w_t:
            self.conv = nn.Conv2d(c_s, c_t, kernel_size=3, stride=2, padding=1)
        elif 2 * h_s == h_t and 2 * w_s == w_t:
            self.conv = nn.ConvTranspose2d(c_s, c_t, kernel_size=4, stride=2, padding=1)
        elif h_s >= h_t and w_s >= w_t:
            self.conv = nn.Conv2d(c_s, c_t, kernel_size=(1 + h_s - h_t, 1 + w_s - w_t))
        else:
            raise ValueError(
                f"ConvRegressor cannot map a {h_s}x{w_s} student map onto a {h_t}x{w_t} teacher "
                "map (only x2, /2 or a larger student map); tap layers with closer strides."
            )
        self.bn = nn.BatchNorm2d(c_t)
        self.relu = nn.ReLU(inplace=True) if use_relu else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class FitNetLoss(LossTerm):
    """``weight · MSE(r(f_s), f_t)`` between a student and a teacher feature map.

    ``r`` is a learnable connector built from the probed shapes (``"convreg"``:
    mdistiller's conv-BN-ReLU; ``"none"``: shapes must already agree). It trains with the
    student and is dropped at export. mdistiller's hint layer is 2: the output of the second
    stage, e.g. ``layer2`` of a CIFAR ResNet; its CE weight is 1.

    Args:
        student_layer: module path of the student feature (the hint's input).
        teacher_layer: module path of the teacher feature (the hint).
        weight: loss weight (mdistiller ``FITNET.LOSS.FEAT_WEIGHT`` 100).
        connector: ``"convreg"`` or ``"none"``.
    """

    needs_teacher_output = False

    def __init__(
        self,
        student_layer: str,
        teacher_layer: str,
        *,
        weight: float = 100.0,
        connector: str = "convreg",
    ) -> None:
        super().__init__(weight)
        check_choice("connector", connector, ("convreg", "none"))
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        self.connector_kind = connector
        self.connector: nn.Module = nn.Identity()

    @property
    def student_taps(self) -> list[str]:
        return [self.student_layer]

    @property
    def teacher_taps(self) -> list[str]:
        return [self.teacher_layer]

    def build(self, student_shapes, teacher_shapes) -> None:
        s = student_shapes[self.student_layer]
        t = teacher_shapes[self.teacher_layer]
        if self.connector_kind == "convreg" and (len(s) != 4 or len(t) != 4):
            raise ValueError(
                describe_mismatch(
                    "fitnet",
                    self.student_layer,
                    s,
                    self.teacher_layer,
                    t,
                    "The convreg connector maps (N, C, H, W) feature maps; tap convolutional "
                    "layers on both sides (token features (B, N, C) have no H and W).",
                )
            )
        if self.connector_kind == "convreg":
            try:
                self.connector = ConvRegressor(tuple(s), tuple(t))
            except ValueError as err:
                raise ValueError(
                    describe_mismatch(
                        "fitnet", self.student_layer, s, self.teacher_layer, t, str(err)
                    )
                ) from None
        elif s[1:] != t[1:]:
            raise ValueError(
                describe_mismatch(
                    "fitnet",
                    self.student_layer,
                    s,
                    self.teacher_layer,
                    t,
                    "Set connector='convreg' (conv + BN + ReLU built from these shapes) to map "
                    "the student feature onto the teacher's.",
                )
            )

    def forward(self, batch: DistillBatch) -> Tensor:
        hint = self.connector(batch.student_features[self.student_layer])
        return self.weight * fitnet_loss(hint, batch.teacher_features[self.teacher_layer])

    def extra_repr(self) -> str:
        return (
            f"student_layer={self.student_layer!r}, teacher_layer={self.teacher_layer!r}, "
            f"weight={self.weight:g}, connector={self.connector_kind!r}"
        )
