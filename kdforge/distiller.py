"""Distiller: a frozen teacher, a training student and the loss terms that connect them."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from kdforge.losses.base import DistillBatch, LossTerm, shape_tree
from kdforge.taps import FeatureTaps

__all__ = ["TEACHER_DTYPES", "Distiller", "TeacherReplay"]

TEACHER_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TeacherReplay:
    """Targets that carry the teacher's stored values (a teacher cache, see kdforge.cache):
    given as ``targets``, they replace the teacher's forward."""

    targets: Any
    output: Tensor | None
    features: dict[str, Any]

    def to(self, device: torch.device) -> TeacherReplay:
        features = {k: _move(v, device) for k, v in self.features.items()}
        return TeacherReplay(_move(self.targets, device), _move(self.output, device), features)


def _move(value: Any, device: torch.device) -> Any:
    return value.to(device, non_blocking=True) if isinstance(value, Tensor) else value


class _TeacherDone(Exception):
    """Raised by a hook once every teacher tap has fired: the rest of the forward is skipped."""


def _cast_back(value: Any, dtype: torch.dtype | None, contiguous: bool) -> Any:
    """Floating tensors of ``dtype`` to float32, 4-d ones to the default memory layout."""
    if isinstance(value, Tensor):
        if dtype is not None and value.dtype == dtype:
            value = value.float()
        return value.contiguous() if contiguous and value.dim() == 4 else value
    if isinstance(value, (list, tuple)):
        return type(value)(_cast_back(v, dtype, contiguous) for v in value)
    if isinstance(value, dict):
        return {k: _cast_back(v, dtype, contiguous) for k, v in value.items()}
    return value


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

    The teacher's cost can be cut without changing what the terms compute (see
    ``benchmarks/README.md`` for what each option saves):

    * ``teacher_inference_mode``: run it under ``torch.inference_mode()`` instead of
      ``torch.no_grad()`` when no term sets ``needs_teacher_autograd``;
    * ``teacher_dtype``: run it under autocast in bfloat16/float16 (its weights stay
      float32); its outputs are handed to the terms as float32 (bf16: losses within about
      1 % of float32);
    * ``teacher_channels_last``: convert it and its input to channels-last (a GPU
      speed-up); 4-d outputs are handed on in the default layout;
    * ``truncate_teacher``: stop its forward once every tapped module has run, e.g. skip a
      classifier's head or a detector's head for feature terms; allowed only when no
      term sets ``needs_teacher_output`` (``batch.teacher_output`` is then None).

    Args:
        teacher: the teacher model, or None to train the student alone.
        student: the student model.
        terms: ``{name: LossTerm}``; the names label the returned losses.
        example_input: a batch of inputs to probe shapes with at construction.
        teacher_inference_mode: see above (on by default; it falls back to no_grad).
        teacher_dtype: "float32", "bfloat16" or "float16".
        teacher_channels_last: see above.
        truncate_teacher: see above.
        cached_teacher: there is no teacher model: each batch's ``targets`` is a
            :class:`TeacherReplay` holding the teacher's stored output and features.

    ``forward(inputs, targets)`` returns ``(student_output, {name: weighted loss})``.
    """

    def __init__(
        self,
        teacher: nn.Module | None,
        student: nn.Module,
        terms: Mapping[str, LossTerm],
        example_input: Any = None,
        teacher_inference_mode: bool = True,
        teacher_dtype: str = "float32",
        teacher_channels_last: bool = False,
        truncate_teacher: bool = False,
        cached_teacher: bool = False,
    ) -> None:
        super().__init__()
        if not terms:
            raise ValueError(
                "a Distiller needs at least one loss term, e.g. {'ce': CrossEntropyLoss()}"
            )
        needy = {name: term for name, term in terms.items() if term.needs_teacher}
        if teacher is None and needy and not cached_teacher:
            raise ValueError(f"loss terms {list(needy)} need a teacher, but teacher is None")
        if teacher_dtype not in TEACHER_DTYPES:
            raise ValueError(
                f"teacher dtype must be one of {list(TEACHER_DTYPES)}, got {teacher_dtype!r}"
            )
        autograd = [n for n, t in needy.items() if t.needs_teacher_autograd]
        self.teacher_inference_mode = teacher_inference_mode and not autograd
        self.teacher_dtype = TEACHER_DTYPES[teacher_dtype]
        self.teacher_channels_last = teacher_channels_last
        self.truncate_teacher = truncate_teacher
        self._stop_counts: dict[str, int] | None = None  # tap calls of one full forward
        self._stop_handles: list[RemovableHandle] = []
        self._truncating = False  # the stop hooks act only inside _run_teacher
        self._compiled: dict[str, Callable[..., Any]] = {}  # role -> torch.compile'd model
        self.cached_teacher = cached_teacher
        self._replay: TeacherReplay | None = None  # this batch's stored teacher values
        self.student = student
        self.terms = nn.ModuleDict(terms)
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
            if teacher_channels_last:
                teacher.to(memory_format=torch.channels_last)
        for term in self.terms.values():
            term.attach(student, teacher)
        readers = [n for n, t in needy.items() if t.needs_teacher_output or "" in t.teacher_taps]
        if truncate_teacher and readers:  # after attach: taps may depend on the models
            raise ValueError(
                f"truncate_teacher: loss terms {readers} read the teacher's output, so its "
                "forward cannot stop early; set truncate to false"
            )
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
    def probe(self, example_input: Any, example_targets: Any = None) -> None:
        """Run both models once on ``example_input`` to check shapes and build connectors
        (with a cached teacher, ``example_targets`` is the batch's :class:`TeacherReplay`)."""
        was_training = self.training
        self.eval()
        try:
            self._take_replay(example_targets)
            _, teacher_features = self._run_teacher(example_input)
            _, student_features = self._run_student(example_input)
            self._build(student_features, teacher_features)
        finally:
            self._clear_taps()  # keep no activations of the example batch
            self._replay = None
            self.train(was_training)

    def _take_replay(self, targets: Any) -> Any:
        """Keep the stored teacher values of a cached-teacher batch; return its targets."""
        if not self.cached_teacher:
            return targets
        if not isinstance(targets, TeacherReplay):
            raise TypeError(f"a cached teacher needs TeacherReplay targets, got {type(targets)}")
        device = next(self.student.parameters()).device
        self._replay = targets.to(device)
        return self._replay.targets

    def _run_teacher(self, inputs: Any) -> tuple[Any, dict[str, Any]]:
        if self._replay is not None:
            output, features = self._replay.output, self._replay.features
            return output, features if output is None else {"": output, **features}
        if self.teacher is None:
            return None, {}
        if self.teacher_channels_last and isinstance(inputs, Tensor) and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        mode = torch.inference_mode() if self.teacher_inference_mode else torch.no_grad()
        dtype = self.teacher_dtype
        autocast = contextlib.nullcontext()
        if dtype is not None:
            device = next(self.teacher.parameters(), torch.empty(0)).device
            autocast = torch.autocast(device.type, dtype=dtype)
        output = None
        with mode, autocast:
            self._truncating = self._stop_counts is not None
            try:
                output = self._call("teacher", inputs)
            except _TeacherDone:
                pass  # every tap has fired; the rest of the forward was not needed
            finally:
                self._truncating = False
        features = self._recorded(self.teacher_taps)
        if self.truncate_teacher and self._stop_counts is None and output is not None:
            self._arm_truncation()
        if dtype is not None or self.teacher_channels_last:  # outside inference mode:
            output, features = _cast_back((output, features), dtype, self.teacher_channels_last)
        if output is None:  # truncated
            return None, features
        return output, {"": output, **features}  # "" is the output

    def _run_student(self, inputs: Any) -> tuple[Any, dict[str, Any]]:
        output = self._call("student", inputs)
        return output, {"": output, **self._recorded(self.student_taps)}

    def _call(self, role: str, inputs: Any) -> Any:
        """Run the student or teacher, compiled if :meth:`compile_models` compiled it."""
        compiled = self._compiled.get(role)
        if compiled is not None:
            try:
                return compiled(inputs)
            except _TeacherDone:
                raise
            except Exception as err:  # compilation failed: warn once and stay eager
                del self._compiled[role]
                warnings.warn(
                    f"torch.compile of the {role} failed ({type(err).__name__}: {err}); "
                    "running it eagerly",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return getattr(self, role)(inputs)

    def compile_models(self, **options: Any) -> None:
        """``torch.compile`` the student and teacher forwards (not the loss terms).

        Compiled callables are kept outside the module tree, so parameter names, hooks
        and checkpoints do not change. A model whose compilation fails runs eagerly, with
        a warning. ``options`` go to ``torch.compile``. A truncated teacher is not
        compiled (its early stop is an exception raised from a hook).
        """
        roles = ["student"]
        if self.teacher is not None and not self.truncate_teacher:
            roles.append("teacher")
        for role in roles:
            self._compiled[role] = torch.compile(getattr(self, role), **options)

    def _arm_truncation(self) -> None:
        """After a full teacher forward: stop later ones once each tap has fired as often."""
        taps = self.teacher_taps
        self._stop_counts = {p: len(c) for p, c in taps.calls.items()}
        if not self._stop_counts:
            return  # no taps: nothing to stop at
        modules = dict(taps.model.named_modules())
        for name in dict.fromkeys(p.removesuffix(":input") for p in taps.paths):
            handle = modules[name].register_forward_hook(self._stop_when_done)
            self._stop_handles.append(handle)  # after the taps' hooks, so it sees their record

    def _stop_when_done(self, module: nn.Module, args: Any, output: Any) -> None:
        if not self._truncating:  # the teacher called elsewhere (evaluation) runs in full
            return
        calls = self.teacher_taps.calls
        if all(len(calls[p]) >= n for p, n in self._stop_counts.items()):
            raise _TeacherDone

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
            targets = self._take_replay(targets)
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
            self._replay = None
        return s_out, losses
