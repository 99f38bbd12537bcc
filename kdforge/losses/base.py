"""The contract every loss term follows, and what it is given each step."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

__all__ = [
    "DistillBatch",
    "LayerPairTerm",
    "LossTerm",
    "ShapeTree",
    "shape_tree",
]

ShapeTree = Any  # torch.Size, or a list/tuple/dict of them, mirroring a tapped value


def shape_tree(value: Any) -> ShapeTree:
    """Replace every tensor in a (nested) output by its shape."""
    if isinstance(value, Tensor):
        return value.shape
    if isinstance(value, (list, tuple)):
        return type(value)(shape_tree(v) for v in value)
    if isinstance(value, dict):
        return {k: shape_tree(v) for k, v in value.items()}
    return None


@dataclass
class DistillBatch:
    """Everything a loss term may read in one training step.

    Feature dicts are keyed by module path (see :class:`kdforge.FeatureTaps`); teacher
    values are computed without autograd. ``epoch`` counts completed epochs (0 first).
    """

    student_output: Any
    teacher_output: Any
    student_features: dict[str, Any]
    teacher_features: dict[str, Any]
    targets: Any
    epoch: int = 0


class LossTerm(nn.Module):
    """Base class of a loss term: declares its taps, builds its learnable parts, returns losses.

    Subclasses set ``weight``, list the module paths they read in ``student_taps`` /
    ``teacher_taps`` (``""`` is the model output), and implement ``forward(batch)``
    returning a weighted scalar, or a dict of named weighted scalars. ``build`` is called
    once with the shapes of the first batch, to check them and to create connectors.
    Registered terms are named ``<Method>Loss`` and take their module paths first, then
    keyword-only hyper-parameters, ``weight`` first with the method's official default.

    A term may own parameters with an objective of their own (e.g. CAKD's discriminator):
    it lists them in ``auxiliary_parameters()`` and leaves that objective, unweighted, in
    ``self.auxiliary_loss`` during ``forward``. The trainer keeps them out of the main
    optimizer (and out of DDP's gradient sync), and before the main step back-propagates
    ``auxiliary_loss`` and steps them with their own optimizer at ``auxiliary_lr_scale`` ×
    the main learning rate. The returned (main) losses must not reach them.

    Two flags tell the :class:`~kdforge.Distiller` how cheaply it may run the teacher:
    ``needs_teacher_output`` (the term reads ``batch.teacher_output``; False lets the
    teacher stop after its last tapped module) and ``needs_teacher_autograd`` (the term
    saves teacher values for backward, e.g. ``mse(student, teacher)``, or runs teacher
    modules on student tensors; False lets the teacher run under ``torch.inference_mode``,
    whose tensors cannot be saved for backward). Both default to the safe True.
    """

    needs_teacher: bool = True
    needs_teacher_output: bool = True
    needs_teacher_autograd: bool = True
    auxiliary_lr_scale: float = 1.0

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = float(weight)
        self.auxiliary_loss: Tensor | None = None  # set by forward when there are any

    def auxiliary_parameters(self) -> list[nn.Parameter]:
        """Parameters trained on ``auxiliary_loss`` by their own optimizer (none by default)."""
        return []

    @property
    def student_taps(self) -> list[str]:
        return []

    @property
    def teacher_taps(self) -> list[str]:
        return []

    def attach(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Called once by the Distiller with both models, for terms that read their weights
        (e.g. a classifier's matrix for class activation maps) or run their parts.

        Keep them out of the module tree (e.g. in a tuple), so they are neither trained
        nor saved twice. A term with :meth:`teacher_values` is also attached to one side
        only: ``(student, None)`` in a run from a teacher cache, ``(None, teacher)`` by the
        cache writer.
        """

    def build(
        self, student_shapes: dict[str, ShapeTree], teacher_shapes: dict[str, ShapeTree]
    ) -> None:
        """Check the probed shapes (``{path: shape}``) and create learnable parts from them."""

    def teacher_values(self, teacher_features: dict[str, Any]) -> dict[str, Tensor]:
        """What the term reads from the teacher, per sample, computed from the teacher's
        tapped features (as in ``batch.teacher_features``) and the weights ``attach`` kept:
        ``{name: (N, ...) tensor}``.

        A term that reads the teacher's weights (e.g. CAT-KD's CAMs) can train from a teacher
        cache (:mod:`kdforge.cache`) by overriding this and :meth:`teacher_value_settings`
        and reading the teacher in ``forward`` only through :meth:`read_teacher_values`. The
        cache writer calls ``attach(None, teacher)`` and stores these values (as
        :meth:`stored_teacher_values` names them); a run from the cache calls
        ``attach(student, None)`` and finds them in ``batch.teacher_features``. Live, stored
        and checked values thus all come from this one method. By default a term gives none
        (``{}``: a cache holds its teacher output and taps, if that is all it reads).
        """
        return {}

    def teacher_value_settings(self) -> dict[str, Any]:
        """The term's settings that change :meth:`teacher_values` (JSON values, fixed at
        construction); a teacher cache's fingerprint covers them."""
        return {}

    @property
    def has_teacher_values(self) -> bool:
        """Whether the term overrides :meth:`teacher_values` (a cache stores those values)."""
        return type(self).teacher_values is not LossTerm.teacher_values

    @property
    def teacher_values_key(self) -> str:
        """``<TermClass>-<hash of teacher_value_settings>``: terms that would store the same
        values share it; stored values are named ``<key>/<name>``."""
        settings = json.dumps(self.teacher_value_settings(), sort_keys=True).encode()
        return f"{type(self).__name__}-{hashlib.sha256(settings).hexdigest()[:12]}"

    def stored_teacher_values(self, teacher_features: dict[str, Any]) -> dict[str, Tensor]:
        """:meth:`teacher_values` named as a replayed batch carries them: ``{key/name: value}``."""
        key = self.teacher_values_key
        return {f"{key}/{n}": v for n, v in self.teacher_values(teacher_features).items()}

    def read_teacher_values(self, teacher_features: dict[str, Any]) -> dict[str, Tensor]:
        """The stored values when the batch carries them (a teacher cache), else
        :meth:`teacher_values` computed from the live teacher's features."""
        prefix = f"{self.teacher_values_key}/"
        stored = {
            k.removeprefix(prefix): v for k, v in teacher_features.items() if k.startswith(prefix)
        }
        return stored or self.teacher_values(teacher_features)

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}"


class LayerPairTerm(LossTerm):
    """A term on paired layers: student path ``i`` is compared with teacher path ``i``
    (PKD, MGD, CanKD); ``teacher_layers`` defaults to the student's paths."""

    def __init__(
        self,
        student_layers: Sequence[str],
        teacher_layers: Sequence[str] | None = None,
        *,
        weight: float = 1.0,
    ) -> None:
        super().__init__(weight)
        self.student_layers = list(student_layers)
        self.teacher_layers = list(student_layers if teacher_layers is None else teacher_layers)
        if len(self.student_layers) != len(self.teacher_layers) or not self.student_layers:
            raise ValueError(
                f"{type(self).__name__}: {len(self.student_layers)} student layers and "
                f"{len(self.teacher_layers)} teacher layers; give one or more pairs"
            )

    @property
    def student_taps(self) -> list[str]:
        return self.student_layers

    @property
    def teacher_taps(self) -> list[str]:
        return self.teacher_layers
