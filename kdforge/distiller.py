"""Distiller: a frozen teacher, a training student and the loss terms that connect them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from kdforge.losses.base import DistillBatch, LossTerm, shape_tree
from kdforge.taps import FeatureTaps

__all__ = ["Distiller"]


class Distiller(nn.Module):
    """Run teacher and student on the same inputs and compute every loss term.

    The teacher is frozen here (``requires_grad_(False)``, eval mode that survives
    ``train()``) and runs under ``torch.no_grad()``. Everything trainable — the student
    and the terms' connectors — is in this module, so ``[p for p in
    distiller.parameters() if p.requires_grad]`` is what the optimizer receives.

    Shapes are probed once, on the first batch (or on ``example_input``): each term's
    ``build`` checks them and creates its connectors. Terms that create parameters need
    that probe before the optimizer is made: pass ``example_input`` or call
    :meth:`probe`.

    Args:
        teacher: the teacher model, or None to train the student alone.
        student: the student model.
        terms: ``{name: LossTerm}``; the names label the returned losses.
        example_input: a batch of inputs to probe shapes with at construction.

    ``forward(inputs, targets)`` returns ``(student_output, {name: weighted loss})``.
    """

    def __init__(
        self,
        teacher: nn.Module | None,
        student: nn.Module,
        terms: Mapping[str, LossTerm],
        example_input: Any = None,
    ) -> None:
        super().__init__()
        if not terms:
            raise ValueError(
                "a Distiller needs at least one loss term, e.g. {'ce': CrossEntropyLoss()}"
            )
        needy = [name for name, term in terms.items() if term.needs_teacher]
        if teacher is None and needy:
            raise ValueError(f"loss terms {needy} need a teacher, but teacher is None")
        self.student = student
        self.terms = nn.ModuleDict(terms)
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
        for term in self.terms.values():
            term.attach(student, teacher)
        self.epoch = 0
        self.student_taps = FeatureTaps(student, self._taps("student_taps"))
        self.teacher_taps = (
            FeatureTaps(teacher, self._taps("teacher_taps")) if teacher is not None else None
        )
        self._built = False
        if example_input is not None:
            self.probe(example_input)

    def _taps(self, attribute: str) -> list[str]:
        paths = (p for term in self.terms.values() for p in getattr(term, attribute))
        return [p for p in dict.fromkeys(paths) if p != ""]  # "" (the output) needs no hook

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher's BN and dropout stay in inference mode
        return self

    def set_epoch(self, epoch: int) -> None:
        """Tell the terms how many epochs are done (for warm-ups and ramps)."""
        self.epoch = epoch

    @torch.no_grad()
    def probe(self, example_input: Any) -> None:
        """Run both models once on ``example_input`` to check shapes and build connectors."""
        was_training = self.training
        self.eval()
        try:
            _, teacher_features = self._run_teacher(example_input)
            _, student_features = self._run_student(example_input)
            self._build(student_features, teacher_features)
        finally:
            self._clear_taps()  # keep no activations of the example batch
            self.train(was_training)

    def _run_teacher(self, inputs: Any) -> tuple[Any, dict[str, Any]]:
        if self.teacher is None:
            return None, {}
        with torch.no_grad():
            output = self.teacher(inputs)
        return output, {"": output, **self._recorded(self.teacher_taps)}  # "" is the output

    def _run_student(self, inputs: Any) -> tuple[Any, dict[str, Any]]:
        output = self.student(inputs)
        return output, {"": output, **self._recorded(self.student_taps)}

    def _recorded(self, taps: FeatureTaps) -> dict[str, Any]:
        """The tapped values; in eval mode (probe) a module that did not run is left out,
        e.g. an auxiliary head that runs only in training."""
        calls = {p: c[0] if len(c) == 1 else c for p, c in taps.calls.items() if c}
        if self.training and len(calls) < len(taps.paths):
            return taps.outputs  # raises, naming the modules that did not run
        return calls

    def _clear_taps(self) -> None:
        self.student_taps.clear()
        if self.teacher_taps is not None:
            self.teacher_taps.clear()

    def _build(self, student_features: dict, teacher_features: dict) -> int:
        """Give every term the probed shapes; return how many parameters they created."""
        student_shapes = {k: shape_tree(v) for k, v in student_features.items()}
        teacher_shapes = {k: shape_tree(v) for k, v in teacher_features.items()}
        before = {id(p) for p in self.terms.parameters()}
        for term in self.terms.values():
            term.build(student_shapes, teacher_shapes)
        device = next(self.student.parameters()).device
        self.terms.to(device).train(self.training)  # new connectors follow the mode
        self._built = True
        return sum(p.numel() for p in self.terms.parameters() if id(p) not in before)

    def forward(self, inputs: Any, targets: Any) -> tuple[Any, dict[str, Tensor]]:
        try:
            t_out, t_feats = self._run_teacher(inputs)
            s_out, s_feats = self._run_student(inputs)
            if not self._built:
                created = self._build(s_feats, t_feats)
                if created and self.training:
                    self._built = False  # every later forward fails the same way
                    raise RuntimeError(
                        f"loss terms created {created} parameters from the first "
                        "batch's shapes, after the optimizer could see them. Pass "
                        "example_input= to Distiller or call distiller.probe(inputs) before "
                        "creating the optimizer."
                    )
            batch = DistillBatch(s_out, t_out, s_feats, t_feats, targets, self.epoch)
            losses: dict[str, Tensor] = {}
            for name, term in self.terms.items():
                value = term(batch)
                if isinstance(value, Mapping):
                    losses.update({f"{name}.{part}": v for part, v in value.items()})
                else:
                    losses[name] = value
        finally:
            self._clear_taps()  # the records hold activations and their graphs
        return s_out, losses
