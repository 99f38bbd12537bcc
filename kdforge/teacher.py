"""The teacher's runtime: frozen, run as cheaply as the loss terms allow, or replayed.

See ``benchmarks/README.md`` for what each option saves.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from kdforge.errors import ConfigError
from kdforge.taps import FeatureTaps

__all__ = ["TEACHER_DTYPES", "TeacherReplay", "TeacherRuntime", "compile_or_eager"]

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


def compile_or_eager(
    compiled: dict[str, Callable[..., Any]], role: str, module: nn.Module, inputs: Any
) -> Any:
    """Call ``compiled[role]`` if there is one, else ``module``; a compiled callable that
    fails is dropped (once, with a warning) and the module runs eagerly."""
    fn = compiled.get(role)
    if fn is not None:
        try:
            return fn(inputs)
        except _TeacherDone:
            raise
        except Exception as err:  # compilation failed: warn once and stay eager
            del compiled[role]
            warnings.warn(
                f"torch.compile of the {role} failed ({type(err).__name__}: {err}); "
                "running it eagerly",
                RuntimeWarning,
                stacklevel=3,
            )
    return module(inputs)


class TeacherRuntime:
    """Runs a frozen teacher and reads its tapped layers, as cheaply as the terms allow.

    The model is frozen here (``requires_grad_(False)``, eval mode) and always runs under
    ``torch.no_grad()``. The options cut its cost without changing what the terms see:

    * ``inference_mode``: ``torch.inference_mode()`` instead of ``no_grad`` (the caller
      turns it off when a term saves teacher values for backward);
    * ``dtype``: autocast in bfloat16/float16 (weights stay float32); outputs are handed on
      as float32;
    * ``channels_last``: channels-last model and input; 4-d outputs are handed on in the
      default layout;
    * ``truncate``: stop the forward once every tapped module has run (the first call runs
      in full to learn how often each tap fires); the output is then None.

    Args:
        model: the teacher.
        taps: module paths to record (``""``, the output, needs no tap).
        inference_mode, dtype, channels_last, truncate: see above.
    """

    def __init__(
        self,
        model: nn.Module,
        taps: Sequence[str] = (),
        inference_mode: bool = True,
        dtype: str = "float32",
        channels_last: bool = False,
        truncate: bool = False,
    ) -> None:
        if dtype not in TEACHER_DTYPES:
            raise ConfigError(f"teacher.dtype must be one of {list(TEACHER_DTYPES)}, got {dtype!r}")
        self.model = model.requires_grad_(False).eval()
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self.taps = FeatureTaps(model, [p for p in taps if p != ""])
        self.inference_mode = inference_mode
        self.dtype = TEACHER_DTYPES[dtype]
        self.channels_last = channels_last
        self.truncate = truncate
        self.compiled: dict[str, Callable[..., Any]] = {}
        self._stop_counts: dict[str, int] | None = None  # tap calls of one full forward
        self._stop_handles: list[RemovableHandle] = []
        self._truncating = False  # the stop hooks act only inside run()

    def compile(self, **options: Any) -> None:
        """``torch.compile`` the forward (not when truncating: its early stop is an
        exception raised from a hook)."""
        if not self.truncate:
            self.compiled["teacher"] = torch.compile(self.model, **options)

    def run(self, inputs: Any, strict: bool = True) -> tuple[Any, dict[str, Any]]:
        """``(output or None when truncated, {path: value})``; the taps stay recorded until
        :meth:`clear`. ``strict=False`` leaves out taps whose module did not run."""
        if self.channels_last and isinstance(inputs, Tensor) and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        mode = torch.inference_mode() if self.inference_mode else torch.no_grad()
        autocast = contextlib.nullcontext()
        if self.dtype is not None:
            device = next(self.model.parameters(), torch.empty(0)).device
            autocast = torch.autocast(device.type, dtype=self.dtype)
        output = None
        with mode, autocast:
            self._truncating = self._stop_counts is not None
            try:
                output = compile_or_eager(self.compiled, "teacher", self.model, inputs)
            except _TeacherDone:
                pass  # every tap has fired; the rest of the forward was not needed
            finally:
                self._truncating = False
        features = self.taps.recorded(strict)
        if self.truncate and self._stop_counts is None and output is not None:
            self._arm_truncation()
        if self.dtype is not None or self.channels_last:  # outside inference mode:
            output, features = _cast_back((output, features), self.dtype, self.channels_last)
        return output, features

    def clear(self) -> None:
        self.taps.clear()

    def _arm_truncation(self) -> None:
        """After a full forward: stop later ones once each tap has fired as often."""
        self._stop_counts = {p: len(c) for p, c in self.taps.calls.items()}
        if not self._stop_counts:
            return  # no taps: nothing to stop at
        modules = dict(self.model.named_modules())
        for name in dict.fromkeys(p.removesuffix(":input") for p in self.taps.paths):
            handle = modules[name].register_forward_hook(self._stop_when_done)
            self._stop_handles.append(handle)  # after the taps' hooks, so it sees their record

    def _stop_when_done(self, module: nn.Module, args: Any, output: Any) -> None:
        if not self._truncating:  # the teacher called elsewhere (evaluation) runs in full
            return
        calls = self.taps.calls
        if all(len(calls[p]) >= n for p, n in self._stop_counts.items()):
            raise _TeacherDone
