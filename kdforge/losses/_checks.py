"""Checks shared by the loss terms: argument choices and probed shapes, with messages that
name both modules, both shapes and the fix."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kdforge.losses.base import ShapeTree

__all__ = ["check_choice", "check_same_classes", "describe_mismatch"]


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        valid = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {valid}, got {value!r}")


def describe_mismatch(
    term: str,
    student_path: str,
    student_shape: ShapeTree,
    teacher_path: str,
    teacher_shape: ShapeTree,
    fix: str,
) -> str:
    """One message naming both modules, both shapes and the connector that would fix it."""
    s = "output" if student_path == "" else f"module {student_path!r}"
    t = "output" if teacher_path == "" else f"module {teacher_path!r}"
    return (
        f"{term}: student {s} has shape {_fmt(student_shape)} but teacher {t} has shape "
        f"{_fmt(teacher_shape)}. {fix}"
    )


def check_same_classes(
    term: str, student_shapes: dict[str, ShapeTree], teacher_shapes: dict[str, ShapeTree]
) -> None:
    """Raise ``ValueError`` unless both model outputs are logits over the same classes."""
    s, t = student_shapes[""], teacher_shapes[""]
    for who, shape in (("student", s), ("teacher", t)):
        if not isinstance(shape, torch.Size):
            raise ValueError(
                f"{term} needs each model's output to be a logits tensor, but the {who} "
                f"returns {_fmt(shape)}; kdforge takes `.logits` from model-output objects "
                "(transformers), so wrap any other model to return its logits"
            )
    if s[1:] != t[1:]:
        fix = (
            f"{term} needs logits over the same classes: build both models with the same "
            "num_classes."
        )
        raise ValueError(describe_mismatch(term, "", s, "", t, fix))


def _fmt(shape: ShapeTree) -> str:
    return str(tuple(shape)) if isinstance(shape, torch.Size) else str(shape)
