"""Helpers shared by several loss terms (not checks: those are in ``_checks.py``)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

__all__ = ["init_student_from_teacher", "pad_shapes"]


def pad_shapes(targets: Sequence[dict[str, Any]], size_divisor: int) -> list[tuple[int, int]]:
    """Each image's mmdetection ``pad_shape``, the region whose priors are valid: the
    target's ``pad_shape`` (``collate_detection`` records it with the batch's divisor), else
    its ``img_shape`` rounded up to a multiple of ``size_divisor``."""
    d = size_divisor
    return [
        tuple(t["pad_shape"])
        if "pad_shape" in t
        else (math.ceil(t["img_shape"][0] / d) * d, math.ceil(t["img_shape"][1] / d) * d)
        for t in targets
    ]


def init_student_from_teacher(
    student: nn.Module,
    teacher: nn.Module,
    prefixes: Sequence[str] | Mapping[str, str] = ("neck", "bbox_head"),
    *,
    strict: bool = True,
) -> list[str]:
    """Copy the teacher's parameters and buffers under ``prefixes`` into the student.

    ``prefixes`` names module paths present in both models, or maps a student path to the
    teacher path it copies (``{"roi_head.bbox_head": "roi_head.bbox_head.0"}``: CanKD†'s
    Faster R-CNN student takes its box head from the first stage of a Cascade R-CNN teacher,
    as the official ``init_cfg=Pretrained(prefix='roi_head.bbox_head.0')`` does).

    CanKD† (``nlkdIN_dagger_*``) and mmrazor's MGD RetinaNet config initialise the student's
    neck and head from the teacher checkpoint (mmengine ``init_cfg=Pretrained,
    prefix='neck.'/'bbox_head.'``). Strict (default): every student tensor under a prefix
    must exist in the teacher with the same shape (same neck and head type), else this
    raises. ``strict=False`` is mmengine's own loading (``load_state_dict(strict=False)``):
    tensors without a teacher counterpart of the same shape keep their initial values, and
    one ``UserWarning`` names each of them and each teacher tensor under the prefixes that
    the student lacks (e.g. CanKD†'s FCOS student with ``conv_bias=True`` under a stock FCOS
    teacher: the 8 tower-conv biases stay at their init, 0). Returns the copied
    state-dict keys.
    """
    pairs = prefixes.items() if isinstance(prefixes, Mapping) else [(p, p) for p in prefixes]
    pairs = [(f"{s}.", f"{t}.") for s, t in pairs]
    teacher_state = teacher.state_dict()
    student_state = student.state_dict()
    copied: dict[str, Tensor] = {}
    unfilled: list[str] = []
    used: set[str] = set()
    for key, value in student_state.items():
        pair = next(((s, t) for s, t in pairs if key.startswith(s)), None)
        if pair is None:
            continue
        teacher_key = pair[1] + key[len(pair[0]) :]
        used.add(teacher_key)
        source = teacher_state.get(teacher_key)
        if source is None or source.shape != value.shape:
            got = "missing" if source is None else tuple(source.shape)
            if strict:
                raise ValueError(
                    f"init_from_teacher: student {key!r} {tuple(value.shape)} has no "
                    f"teacher counterpart (teacher: {got}); neck and head must be of the same "
                    "type (or load non-strictly)"
                )
            unfilled.append(f"{key} {tuple(value.shape)} (teacher: {got})")
            continue
        copied[key] = source
    if not copied:
        raise ValueError(f"init_from_teacher: the student has no tensors under {prefixes}")
    starts = tuple(t for _, t in pairs)
    unused = [k for k in teacher_state if k.startswith(starts) and k not in used]
    if unfilled or unused:
        lines = [f"init_from_teacher (non-strict): copied {len(copied)} tensors under {prefixes}"]
        if unfilled:
            lines.append(f"left at their init ({len(unfilled)}): " + ", ".join(unfilled))
        if unused:
            lines.append(f"teacher tensors not used ({len(unused)}): " + ", ".join(unused))
        warnings.warn("; ".join(lines), stacklevel=2)
    student.load_state_dict(copied, strict=False)
    return list(copied)
