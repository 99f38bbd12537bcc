"""Distiller: a frozen teacher, a training student and the loss terms that connect them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from kdforge.errors import ConfigError
from kdforge.losses.base import DistillBatch, LossTerm, shape_tree
from kdforge.models.external import logits_of
from kdforge.taps import FeatureTaps
from kdforge.teacher import TeacherReplay, TeacherRuntime, compile_or_eager

__all__ = ["Distiller"]


@contextlib.contextmanager
def _named(term: str) -> Iterator[None]:
    """A term that refuses its models or shapes (ValueError, KeyError) is a ConfigError
    naming the term: the models or layers of the recipe do not fit it."""
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise ConfigError(f"loss.{term}: {message}") from err


class Distiller(nn.Module):
    """Run teacher and student on the same inputs and compute every loss term.

    The teacher is frozen (``requires_grad_(False)``, eval mode that survives ``train()``)
    and run by a :class:`~kdforge.teacher.TeacherRuntime` without autograd. Everything
    trainable, the student and the terms' connectors, is in this module, so ``[p for p in
    distiller.parameters() if p.requires_grad]`` is what the optimizer receives, and
    :meth:`trainable_module` is what DistributedDataParallel wraps.

    Shapes are probed once, on the first batch (or on ``example_input``): each term's
    ``build`` checks them and creates its connectors. Terms that create parameters need
    that probe before the optimizer is made: pass ``example_input`` or call :meth:`probe`.

    Args:
        teacher: the teacher model, or None to train the student alone.
        student: the student model.
        terms: ``{name: LossTerm}``; the names label the returned losses.
        example_input: a batch of inputs to probe shapes with at construction.
        teacher_inference_mode: run the teacher under ``torch.inference_mode()`` when no
            term sets ``needs_teacher_autograd`` (on by default; else ``no_grad``).
        teacher_dtype: "float32", "bfloat16" or "float16" (autocast of the teacher).
        teacher_channels_last: channels-last teacher and input.
        truncate_teacher: stop the teacher once every tapped module has run; allowed only
            when no term reads the teacher's output (``batch.teacher_output`` is None).
        cached_teacher: there is no teacher model: each batch's ``targets`` is a
            :class:`~kdforge.teacher.TeacherReplay` holding the stored output and features.

    ``forward(inputs, targets)`` returns ``(student_output, {name: weighted loss})``. With
    :attr:`distilling` False (see ``StopDistillationHook``) only the terms that need no
    teacher are computed and the teacher does not run.
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
            raise ConfigError(
                "a Distiller needs at least one loss term, e.g. {'ce': CrossEntropyLoss()}"
            )
        needy = {name: term for name, term in terms.items() if term.needs_teacher}
        if teacher is None and needy and not cached_teacher:
            raise ConfigError(
                f"loss terms {list(needy)} need a teacher, but there is none (set teacher.name)"
            )
        self.student = student
        self.terms = nn.ModuleDict(terms)
        self.teacher = teacher.requires_grad_(False).eval() if teacher is not None else None
        for name, term in self.terms.items():
            with _named(name):
                term.attach(student, teacher)
        readers = [n for n, t in needy.items() if t.needs_teacher_output or "" in t.teacher_taps]
        if truncate_teacher and readers:  # after attach: taps may depend on the models
            raise ConfigError(
                f"teacher.truncate: loss terms {readers} read the teacher's output, so its "
                "forward cannot stop early; set teacher.truncate=false"
            )
        autograd = [n for n, t in needy.items() if t.needs_teacher_autograd]
        self.runtime: TeacherRuntime | None = None
        if teacher is not None:
            self.runtime = TeacherRuntime(
                teacher,
                self._taps("teacher_taps"),
                inference_mode=teacher_inference_mode and not autograd,
                dtype=teacher_dtype,
                channels_last=teacher_channels_last,
                truncate=truncate_teacher,
            )
        self.cached_teacher = cached_teacher
        self.student_taps = FeatureTaps(student, self._taps("student_taps"))
        self.epoch = 0
        self.distilling = True
        self._compiled: dict[str, Callable[..., Any]] = {}  # the torch.compile'd student
        self._replay: TeacherReplay | None = None  # this batch's stored teacher values
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

    def trainable_module(self) -> nn.Module:
        """The module to wrap in DistributedDataParallel: this Distiller's forward over the
        student and the connectors the main losses train, without the teacher and without
        auxiliary parameters (they have their own optimizer, which averages their
        gradients itself)."""
        return _Trainable(self)

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

    def compile_models(self, **options: Any) -> None:
        """``torch.compile`` the student and teacher forwards (not the loss terms).

        Compiled callables are kept outside the module tree, so parameter names, hooks
        and checkpoints do not change. A model whose compilation fails runs eagerly, with
        a warning. ``options`` go to ``torch.compile``. A truncated teacher is not compiled.
        """
        self._compiled["student"] = torch.compile(self.student, **options)
        if self.runtime is not None:
            self.runtime.compile(**options)

    @property
    def compiled_models(self) -> list[str]:
        """The models that run compiled ("student", "teacher"); one whose compilation
        failed has fallen back to eager and is not listed."""
        roles = list(self._compiled)
        if self.runtime is not None:
            roles += list(self.runtime.compiled)
        return roles

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
        elif self.runtime is not None and self.distilling:
            output, features = self.runtime.run(inputs, strict=self.training)
            output = logits_of(output)
        else:
            return None, {}
        return output, features if output is None else {"": output, **features}  # "": output

    def _run_student(self, inputs: Any) -> tuple[Any, dict[str, Any]]:
        output = logits_of(compile_or_eager(self._compiled, "student", self.student, inputs))
        return output, {"": output, **self.student_taps.recorded(strict=self.training)}

    def _clear_taps(self) -> None:
        self.student_taps.clear()
        if self.runtime is not None:
            self.runtime.clear()

    def _build(self, student_features: dict, teacher_features: dict) -> int:
        """Give every term the probed shapes; return how many parameters they created."""
        student_shapes = {k: shape_tree(v) for k, v in student_features.items()}
        teacher_shapes = {k: shape_tree(v) for k, v in teacher_features.items()}
        before = {id(p) for p in self.terms.parameters()}
        for name, term in self.terms.items():
            with _named(name):
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
                if term.needs_teacher and not self.distilling:
                    continue
                value = term(batch)
                if isinstance(value, Mapping):
                    losses.update({f"{name}.{part}": v for part, v in value.items()})
                else:
                    losses[name] = value
        finally:
            self._clear_taps()  # the records hold activations and their graphs
            self._replay = None
        return s_out, losses


class _Trainable(nn.Module):
    """The Distiller's forward seen as a module of the student and the main connectors.

    The parameters and buffers are the Distiller's own tensors, registered again here so
    that DistributedDataParallel syncs exactly those; the Distiller itself is kept out of
    the module tree.
    """

    def __init__(self, distiller: Distiller) -> None:
        super().__init__()
        object.__setattr__(self, "distiller", distiller)  # not a submodule
        self.student = distiller.student
        auxiliary = {id(p) for t in distiller.terms.values() for p in t.auxiliary_parameters()}
        self.connectors = nn.ParameterList(
            [p for p in distiller.terms.parameters() if id(p) not in auxiliary]
        )
        for i, buffer in enumerate(distiller.terms.buffers()):
            self.register_buffer(f"connector_buffer_{i}", buffer)

    def train(self, mode: bool = True) -> _Trainable:
        super().train(mode)
        self.distiller.train(mode)  # the terms' connectors too; the teacher stays in eval
        return self

    def forward(self, inputs: Any, targets: Any) -> tuple[Any, dict[str, Tensor]]:
        return self.distiller(inputs, targets)
