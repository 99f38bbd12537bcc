"""CrossKD (Wang et al., CVPR 2024, "CrossKD: Cross-Head Knowledge Distillation for Object
Detection"): the student head's intermediate features run through the teacher's head.

One step (official ``CrossKDSingleStageDetector`` data flow):

1. ``hold_s``, ``hold_t``: the features after tower stage ``i`` of the student's and the
   teacher's heads (per level, per tower), read by forward hooks on
   ``bbox_head.{cls,reg}_convs.{i-1}`` (the FPN features for ``i = 0``).
2. ``r = relu(align_scale(hold_s, hold_t))`` (no ReLU for ``i = 0``): the student feature
   re-standardised to the teacher's per-channel batch statistics.
3. ``reused = teacher.bbox_head.forward_from(i, r_cls, r_reg)``: the teacher's remaining
   stages, predictors and level ``Scale``.
4. KD losses between ``reused`` and the teacher's own predictions (the KD targets), per
   detector (see :mod:`kdforge.losses._crosskd_heads`); the student's own predictions
   keep only their ground-truth losses (the ``detection`` term).

Gradients reach the student only through ``hold_s`` (its first ``i`` head stages, FPN
and backbone); the teacher is frozen.

Quirk matched by default: mmcv's ``ConvModule`` applies an **in-place** ReLU to the
tensor the official code holds as the "pre-activation" feature, so the held features are
**post**-activation; then ``align_scale`` and a second ReLU follow. Here the hooks on
the stage modules read the post-activation outputs. ``pre_activation=True`` gives the
variant the code was written for: the stage's conv (+ GN) is re-run on the hooked stage
input without its ReLU (for both heads).

Official defaults (``configs/crosskd/``): ``reused_teacher_head_idx`` 3 (FCOS: 2);
KDQFL beta 1, weight 1 (FCOS 0.4); GFL box KD: KL with T 1, ``class_reduction="sum"``,
weight 4; RetinaNet/ATSS: GIoU weight 1, ATSS centerness KD weight 1; FCOS: IoU (log)
weight 0.75.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.losses._checks import describe_mismatch
from kdforge.losses._common import pad_shapes
from kdforge.losses._crosskd_heads import KD_FUNCTIONS
from kdforge.losses._crosskd_losses import align_scale, kd_quality_focal_loss, kl_div_distill_loss
from kdforge.losses.base import DistillBatch, LossTerm, ShapeTree
from kdforge.models.detection._dense_head import DenseHead

__all__ = [
    "CrossKDLoss",
    "align_scale",
    "cross_head_forward",
    "kd_quality_focal_loss",
    "kl_div_distill_loss",
]


def cross_head_forward(
    teacher_head: DenseHead,
    stage: int,
    student_cls: Sequence[Tensor],
    student_reg: Sequence[Tensor],
    teacher_cls: Sequence[Tensor],
    teacher_reg: Sequence[Tensor],
) -> dict[str, list[Tensor]]:
    """Run the teacher head from ``stage`` on the aligned student features of every level.

    Args:
        teacher_head: the teacher's dense head.
        stage: the split point ``i`` (features are outputs of stage ``i``; 0 = FPN).
        student_cls, student_reg: the student's held ``(N, C, H_l, W_l)`` features.
        teacher_cls, teacher_reg: the teacher's, for the per-channel statistics.

    Returns:
        the teacher head's outputs ``{"cls": [...], "reg": [...], ...}`` (the cross-head
        predictions).
    """
    act = F.relu if stage > 0 else (lambda x: x)
    cls = [act(align_scale(s, t)) for s, t in zip(student_cls, teacher_cls, strict=True)]
    reg = [act(align_scale(s, t)) for s, t in zip(student_reg, teacher_reg, strict=True)]
    return teacher_head.forward_from(stage, cls, reg)


class CrossKDLoss(LossTerm):
    """CrossKD's prediction-mimicking losses on the cross-head predictions.

    For GFL, RetinaNet, ATSS and FCOS heads (student and teacher of the same kind and tower
    width). Returns ``{"cls", "reg"}`` (ATSS also ``"center"``), each ``weight ×`` its own
    loss weight × the unweighted KD loss; see the module docstring for the data flow.

    Args:
        weight: multiplies every part (1; the official configs weight each part, below).
        stage: the split point ``i`` in ``0..stacked_convs`` (official 3; FCOS 2).
        pre_activation: hold the stage's output before its ReLU (the official code holds
            the post-ReLU one because of mmcv's in-place ReLU).
        loss_cls_weight: KDQFL weight (FCOS recipe 0.4).
        loss_reg_weight: box KD weight (GFL 4, FCOS 0.75, else 1).
        loss_center_weight: ATSS centerness KD weight.
        beta: KDQFL exponent.
        temperature: GFL's KL temperature.
        size_divisor: batch padding of each image's ``img_shape`` (anchor validity), for
            targets without the ``pad_shape`` that ``collate_detection`` records.
    """

    def __init__(
        self,
        *,
        weight: float = 1.0,
        stage: int = 3,
        pre_activation: bool = False,
        loss_cls_weight: float = 1.0,
        loss_reg_weight: float = 1.0,
        loss_center_weight: float = 1.0,
        beta: float = 1.0,
        temperature: float = 1.0,
        size_divisor: int = 32,
    ) -> None:
        super().__init__(weight)
        self.stage, self.pre_activation = stage, pre_activation
        self.part_weights = {
            "cls": loss_cls_weight,
            "reg": loss_reg_weight,
            "center": loss_center_weight,
        }
        self.beta, self.temperature, self.size_divisor = beta, temperature, size_divisor

    @property
    def _paths(self) -> list[str]:
        if self.stage == 0:  # the FPN levels, as the first stage's inputs
            return ["bbox_head.cls_convs.0:input"]
        suffix = ":input" if self.pre_activation else ""
        i = self.stage - 1
        return [f"bbox_head.cls_convs.{i}{suffix}", f"bbox_head.reg_convs.{i}{suffix}"]

    @property
    def student_taps(self) -> list[str]:
        return self._paths

    @property
    def teacher_taps(self) -> list[str]:
        return self._paths

    def attach(self, student: nn.Module, teacher: nn.Module | None) -> None:
        heads = [getattr(m, "bbox_head", None) for m in (student, teacher)]
        if not all(isinstance(h, tuple(KD_FUNCTIONS)) for h in heads):
            raise TypeError(
                "crosskd needs a GFL, RetinaNet, ATSS or FCOS detector as student and teacher "
                f"(kdforge.models.detection); got heads {[type(h).__name__ for h in heads]}"
            )
        if type(heads[0]) is not type(heads[1]):
            raise TypeError(
                f"crosskd: student head {type(heads[0]).__name__} and teacher head "
                f"{type(heads[1]).__name__} differ; the KD targets need the same kind"
            )
        for name, head in zip(("student", "teacher"), heads, strict=True):
            if not (0 <= self.stage <= head.num_stages) or head.num_stages == 0:
                raise ValueError(
                    f"crosskd: stage must be in [0, {head.num_stages}] for the {name}'s "
                    f"{head.num_stages}-stage towers, got {self.stage}"
                )
        self._models = (student, teacher)  # a tuple keeps them out of this module tree
        self._kd = next(f for cls, f in KD_FUNCTIONS.items() if isinstance(heads[0], cls))

    def build(
        self, student_shapes: dict[str, ShapeTree], teacher_shapes: dict[str, ShapeTree]
    ) -> None:
        for path in self._paths:
            s, t = (
                [x] if isinstance(x, torch.Size) else x
                for x in (student_shapes[path], teacher_shapes[path])
            )
            if [x[1] for x in s] != [x[1] for x in t] or len(s) != len(t):
                raise ValueError(
                    describe_mismatch(
                        "crosskd",
                        path,
                        s,
                        path,
                        t,
                        "Give both heads the same feat_channels (and FPN channels for "
                        "stage 0 or 1): align_scale matches channel by channel.",
                    )
                )

    def _held(self, features: dict, head: DenseHead) -> list[list[Tensor]]:
        """The held ``[cls levels, reg levels]`` from the tapped values."""
        held = []
        paths = (self._paths * 2)[:2]  # stage 0: both towers start from the FPN levels
        for path, convs in zip(paths, (head.cls_convs, head.reg_convs), strict=True):
            value = features[path]
            levels = list(value) if isinstance(value, (list, tuple)) else [value]
            if self.pre_activation and self.stage > 0:
                levels = [convs[self.stage - 1](x, activate=False) for x in levels]
            held.append(levels)
        return held

    def forward(self, batch: DistillBatch) -> dict[str, Tensor]:
        student, teacher = self._models
        s_cls, s_reg = self._held(batch.student_features, student.bbox_head)
        with torch.no_grad():
            t_cls, t_reg = self._held(batch.teacher_features, teacher.bbox_head)
        reused = cross_head_forward(teacher.bbox_head, self.stage, s_cls, s_reg, t_cls, t_reg)
        losses = self._kd(
            student.bbox_head,
            reused,
            batch.teacher_output,
            batch.targets,
            pad_shapes(batch.targets, self.size_divisor),
            self.beta,
            self.temperature,
        )
        return {k: self.weight * self.part_weights[k] * v for k, v in losses.items()}

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight:g}, stage={self.stage}, pre_activation={self.pre_activation}, "
            f"part_weights={self.part_weights}"
        )
