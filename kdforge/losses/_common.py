"""Helpers shared by several loss terms (not checks: those are in ``_checks.py``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

__all__ = ["init_student_from_teacher", "pad_shapes"]


def pad_shapes(targets: Sequence[dict[str, Any]], size_divisor: int) -> list[tuple[int, int]]:
    """Each image's ``img_shape`` rounded up to a multiple of ``size_divisor``: mmdetection's
    ``pad_shape``, the region whose priors are valid."""
    d = size_divisor
    return [
        (math.ceil(t["img_shape"][0] / d) * d, math.ceil(t["img_shape"][1] / d) * d)
        for t in targets
    ]


def init_student_from_teacher(
    student: nn.Module, teacher: nn.Module, prefixes: Sequence[str] = ("neck", "bbox_head")
) -> list[str]:
    """Copy the teacher's parameters and buffers under ``prefixes`` into the student.

    CanKD† (``nlkdIN_dagger_*``) and mmrazor's MGD RetinaNet config initialise the student's
    neck and head from the teacher checkpoint (mmengine ``init_cfg=Pretrained,
    prefix='neck.'/'bbox_head.'``). Every student tensor under a prefix must exist in the
    teacher with the same shape (same neck and head type), else this raises. Returns the
    copied state-dict keys.
    """
    starts = tuple(f"{p}." for p in prefixes)
    teacher_state = teacher.state_dict()
    copied: dict[str, Tensor] = {}
    for key, value in student.state_dict().items():
        if not key.startswith(starts):
            continue
        source = teacher_state.get(key)
        if source is None or source.shape != value.shape:
            got = "missing" if source is None else tuple(source.shape)
            raise ValueError(
                f"init_from_teacher: student {key!r} {tuple(value.shape)} has no "
                f"teacher counterpart (teacher: {got}); neck and head must be of the same type"
            )
        copied[key] = source
    if not copied:
        raise ValueError(f"init_from_teacher: the student has no tensors under {prefixes}")
    student.load_state_dict(copied, strict=False)
    return list(copied)
