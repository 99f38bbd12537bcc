"""Sun & Ohyama, "CanKD: Cross-Attention-based Non-local operation for Feature-based
Knowledge Distillation", WACV 2026 (official code: ``tori-hotaru/CanKD``,
``mmrazor/models/losses/nlkd_IN_loss.py``).

Per feature level, with student ``s`` and teacher ``t`` of equal shape ``(N, C, H, W)``::

    θ = conv_θ(s)              φ = maxpool2×2(conv_φ(t))    g = maxpool2×2(conv_g(t))
    y = (θᵀ φ / M) gᵀ          # NO softmax; M = ⌊H/2⌋·⌊W/2⌋ pooled key positions
    z_s = BN(conv_W(y)) + s    z_t = t                      # residual on the student only
    loss = w · MSE(IN(z_s), IN(z_t)) / 2                    # IN: per (n, c), eps 1e-5

Queries come from the student, keys and values from the teacher. ``BN`` starts at
weight = bias = 0, so at initialisation the loss is exactly ``w/2 · MSE(IN(s), IN(t))``
and the gradient to θ/φ/g is zero. Quirks kept from the official code: the loss weight
is applied after ``/2`` (``loss_weight=10`` in every detection config is an effective
5); ``tau`` is stored but never used (dropped here); the BN uses per-GPU batch statistics.
Without a softmax the product reassociates, ``(θᵀφ)gᵀ = θᵀ(φgᵀ)``: ``product="reordered"``
(default) never builds the ``HW × M`` affinity matrix; ``"affinity"`` is the official order
(same loss and gradients to float32 round-off; forward + backward of the whole loss on a
``2×256×100×168`` P3 level on 2 CPU threads, ``benchmarks/cankd_product.py``: 0.63 s and
310 MiB reordered vs 2.7 s and 1,244 MiB affinity; the product alone 39× faster).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.losses._checks import check_choice, describe_mismatch
from kdforge.losses._common import init_student_from_teacher
from kdforge.losses.base import DistillBatch, LayerPairTerm, ShapeTree

__all__ = [
    "CanKDAlignLoss",
    "CanKDLevelLoss",
    "CanKDLoss",
    "cross_nonlocal_attention",
    "instance_normalized_mse",
]

PRODUCTS = ("reordered", "affinity")


def cross_nonlocal_attention(
    query: Tensor, key: Tensor, value: Tensor, product: str = "reordered"
) -> Tensor:
    """Non-local attention without softmax: ``y = (θᵀ φ / M) gᵀ``.

    Args:
        query: ``(N, Ci, H, W)`` student queries ``θ``.
        key: ``(N, Ci, h, w)`` pooled teacher keys ``φ``; ``M = h·w``.
        value: ``(N, Ci, h, w)`` pooled teacher values ``g``.
        product: ``"reordered"`` computes ``θᵀ (φ gᵀ) / M`` (``Ci × Ci`` intermediate),
            ``"affinity"`` computes ``(θᵀ φ / M) gᵀ`` (``HW × M`` intermediate, official).

    Returns:
        ``(N, Ci, H, W)``.
    """
    n, ci, h, w = query.shape
    theta = query.reshape(n, ci, h * w).transpose(1, 2)  # (N, HW, Ci)
    phi = key.reshape(n, ci, -1)  # (N, Ci, M)
    g = value.reshape(n, ci, -1).transpose(1, 2)  # (N, M, Ci)
    m = phi.shape[-1]
    if product == "reordered":
        y = theta @ (phi @ g / m)  # (N, HW, Ci) @ (N, Ci, Ci)
    elif product == "affinity":
        y = (theta @ phi / m) @ g  # (N, HW, M) @ (N, M, Ci)
    else:
        raise ValueError(f"product must be one of {PRODUCTS}, got {product!r}")
    return y.transpose(1, 2).reshape(n, ci, h, w)


def instance_normalized_mse(student: Tensor, teacher: Tensor) -> Tensor:
    """``MSE(IN(s), IN(t)) / 2``: element-mean of squared differences of maps normalised
    per sample and channel over space (biased variance, eps 1e-5; ``InstanceNorm2d``)."""
    return F.mse_loss(F.instance_norm(student), F.instance_norm(teacher)) / 2


class _Attention(nn.Module):
    """The official ``attentionMatrix``: ``theta`` (student) and ``phi`` (teacher, pooled)."""

    def __init__(self, in_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.theta = nn.Conv2d(in_channels, inter_channels, 1)
        self.phi = nn.Sequential(nn.Conv2d(in_channels, inter_channels, 1), nn.MaxPool2d(2))


class _NonLocal(nn.Module):
    """The official ``NonLocalAttention`` (``dimension=2``, ``sub_sample``, ``bn_layer``)."""

    def __init__(self, in_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.att = _Attention(in_channels, inter_channels)
        self.g = nn.Sequential(nn.Conv2d(in_channels, inter_channels, 1), nn.MaxPool2d(2))
        self.W = nn.Sequential(
            nn.Conv2d(inter_channels, in_channels, 1), nn.BatchNorm2d(in_channels)
        )
        nn.init.zeros_(self.W[1].weight)
        nn.init.zeros_(self.W[1].bias)

    def forward(self, student: Tensor, teacher: Tensor, product: str) -> Tensor:  # -> z_s
        y = cross_nonlocal_attention(
            self.att.theta(student), self.att.phi(teacher), self.g(teacher), product
        )
        return self.W(y) + student


class CanKDLevelLoss(nn.Module):
    """One CanKD level: ``weight · MSE(IN(BN(W(y)) + s), IN(t)) / 2`` (official
    ``NLKD_IN_Loss``; state-dict keys, shapes, order and init are the official ones:
    ``non_local_att.{att.theta, att.phi.0, g.0, W.0, W.1}``).

    Args:
        in_channels: ``C`` of both maps (256 on FPN levels, 2048 on a ResNet-101 stage 4).
        inter_channels: ``Ci``; default ``C // 2`` (at least 1), as in every config.
        weight: ``loss_weight``, applied after the ``/2`` (official default 1; configs use 10).
        product: ``"reordered"`` (default) or ``"affinity"``; see the module docstring.
    """

    def __init__(
        self,
        in_channels: int,
        inter_channels: int | None = None,
        *,
        weight: float = 1.0,
        product: str = "reordered",
    ) -> None:
        super().__init__()
        check_choice("product", product, PRODUCTS)
        self.in_channels, self.weight, self.product = in_channels, float(weight), product
        self.inter_channels = inter_channels or max(in_channels // 2, 1)
        self.non_local_att = _NonLocal(in_channels, self.inter_channels)

    def _level(self, student: Tensor, teacher: Tensor) -> Tensor:
        if student.shape != teacher.shape:
            raise ValueError(
                f"CanKDLevelLoss needs equal shapes, got student {tuple(student.shape)} and "
                f"teacher {tuple(teacher.shape)}"
            )
        z_s = self.non_local_att(student, teacher, self.product)
        return instance_normalized_mse(z_s, teacher)

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        return self.weight * self._level(student, teacher)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, inter_channels={self.inter_channels}, "
            f"weight={self.weight:g}, product={self.product!r}"
        )


class CanKDAlignLoss(CanKDLevelLoss):
    """The official ``NLKD_IN_align_Loss``: one shared module for a list of levels.

    A list/tuple input gives ``weight · mean_l loss_l`` over the first
    ``min(len(s), len(t))`` levels; a student level whose ``(H, W)`` differs from the
    teacher's is resized to it first (bilinear, ``align_corners=False``). Channels must
    agree. Used by the Swin → RetinaNet CanKD† config.
    """

    def forward(
        self, student: Tensor | Sequence[Tensor], teacher: Tensor | Sequence[Tensor]
    ) -> Tensor:
        if isinstance(student, Tensor) and isinstance(teacher, Tensor):
            return self.weight * self._aligned(student, teacher)
        levels = min(len(student), len(teacher))
        total = sum(self._aligned(student[i], teacher[i]) for i in range(levels))
        return self.weight * total / levels

    def _aligned(self, student: Tensor, teacher: Tensor) -> Tensor:
        if student.shape[-2:] != teacher.shape[-2:]:
            student = F.interpolate(student, size=teacher.shape[-2:], mode="bilinear")
        return self._level(student, teacher)


class CanKDLoss(LayerPairTerm):
    """CanKD term: one independent :class:`CanKDLevelLoss` per tapped level, summed.

    Detection (official ``nlkdIN_*`` configs): FPN levels 0–3 on both nets
    (``neck.fpn_convs.0..3``; level 4 is not distilled), ``weight=10`` (≙ 5, see the module
    docstring). Segmentation: ``backbone.layer4`` (MobileNetV2: ``backbone.layer7``) through a
    learnable 1×1 conv with bias (mmcv ``ConvModuleConnector``, kaiming init) from the
    student's channels to the teacher's, ``weight=10`` (20 in the ``_w10_`` files).
    ``in_channels`` of each loss is the teacher's channel count, read from the probed shapes.
    The official teacher runs backbone + neck only: ``teacher.truncate`` does the same (the
    recipes set it); the term never reads the teacher's output. Its φ and g convolutions save
    the teacher maps for backward, so the teacher runs under ``no_grad``, not inference mode.

    Args:
        student_layers: module paths of the student levels.
        teacher_layers: the matching teacher paths (default: the same paths).
        weight: each level's ``loss_weight`` (``NLKD_IN_Loss`` defaults to 1; 10 in every
            official config, the default here).
        inter_channels: ``Ci`` (default ``C // 2``).
        connector: ``"auto"`` (1×1 conv where channels differ), ``"conv1x1"`` or ``"none"``.
        product: ``"reordered"`` or ``"affinity"`` (see :func:`cross_nonlocal_attention`).
        init_from_teacher: CanKD† — module prefixes copied from the teacher into the
            student when attached, e.g. ``["neck", "bbox_head"]``, or a mapping of student
            to teacher paths (default: none; see
            :func:`kdforge.losses.init_student_from_teacher`).
        init_strict: every student tensor under ``init_from_teacher`` must come from the
            teacher (default). False loads as mmengine does: tensors the teacher lacks keep
            their init and a warning names them (the FCOS† student's tower-conv biases).
    """

    needs_teacher_output = False

    def __init__(
        self,
        student_layers: Sequence[str],
        teacher_layers: Sequence[str] | None = None,
        *,
        weight: float = 10.0,
        inter_channels: int | None = None,
        connector: str = "auto",
        product: str = "reordered",
        init_from_teacher: Sequence[str] | Mapping[str, str] = (),
        init_strict: bool = True,
    ) -> None:
        super().__init__(student_layers, teacher_layers, weight=weight)
        check_choice("connector", connector, ("auto", "conv1x1", "none"))
        check_choice("product", product, PRODUCTS)
        self.inter_channels, self.connector_kind, self.product = inter_channels, connector, product
        self.init_from_teacher, self.init_strict = init_from_teacher, init_strict
        self.connectors = nn.ModuleList()
        self.levels = nn.ModuleList()

    def attach(self, student: nn.Module, teacher: nn.Module | None) -> None:
        if self.init_from_teacher and teacher is not None:
            init_student_from_teacher(
                student, teacher, self.init_from_teacher, strict=self.init_strict
            )

    def build(
        self, student_shapes: dict[str, ShapeTree], teacher_shapes: dict[str, ShapeTree]
    ) -> None:
        for s_path, t_path in zip(self.student_layers, self.teacher_layers, strict=True):
            s, t = student_shapes[s_path], teacher_shapes[t_path]
            conv = self.connector_kind == "conv1x1" or (
                self.connector_kind == "auto" and s[1] != t[1]
            )
            if s[2:] != t[2:] or (s[1] != t[1] and not conv):
                fix = "Tap levels of equal stride" + ("" if conv else ", or set connector='auto'")
                raise ValueError(describe_mismatch("cankd", s_path, s, t_path, t, fix + "."))
            connector: nn.Module = nn.Identity()
            if conv:
                connector = nn.Conv2d(s[1], t[1], 1)
                nn.init.kaiming_normal_(connector.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(connector.bias)
            self.connectors.append(connector)
            level = CanKDLevelLoss(
                t[1], self.inter_channels, weight=self.weight, product=self.product
            )
            self.levels.append(level)

    def forward(self, batch: DistillBatch) -> dict[str, Tensor]:
        losses = {}
        pairs = zip(
            self.student_layers, self.teacher_layers, self.connectors, self.levels, strict=True
        )
        for s_path, t_path, connector, level in pairs:
            student = connector(batch.student_features[s_path])
            losses[s_path] = level(student, batch.teacher_features[t_path])
        return losses

    def extra_repr(self) -> str:
        return (
            f"student_layers={self.student_layers}, teacher_layers={self.teacher_layers}, "
            f"weight={self.weight:g}, connector={self.connector_kind!r}, "
            f"init_from_teacher={self.init_from_teacher}, init_strict={self.init_strict}"
        )
