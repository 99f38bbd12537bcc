"""Read intermediate features of any ``nn.Module`` by module path, with forward hooks.

Nothing in the model is rewritten: a forward hook on each named module stores what the
module returned (or, for ``"path:input"``, its first positional input) during the last
forward pass of the root model.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

from kdforge.errors import ConfigError

__all__ = ["FeatureTaps", "unwrap_model"]

_INPUT_SUFFIX = ":input"


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the user's model inside DistributedDataParallel / DataParallel / compile."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def _closest_paths(path: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(path, valid, n=5, cutoff=0.4)
    if not close:  # fall back to siblings: the valid paths sharing the longest prefix
        parent = path.rsplit(".", 1)[0] if "." in path else ""
        close = [p for p in valid if p.startswith(parent)][:5] if parent else valid[:5]
    return ", ".join(repr(p) for p in close)


class FeatureTaps:
    """Forward hooks that record the outputs of named modules.

    Example:
        >>> taps = FeatureTaps(model, ["layer3", "fc:input"])
        >>> logits = model(images)
        >>> taps.outputs["layer3"].shape  # (N, C, H, W)

    Args:
        model: any module; DistributedDataParallel/DataParallel/compiled wrappers are
            unwrapped, so paths are those of the user's model (no ``module.`` prefix).
        paths: module paths as in ``model.named_modules()``; ``""`` is the model itself.
            Append ``":input"`` to record the module's first positional input instead.

    ``outputs[path]`` is the tensor (or whatever the module returned) of the last
    forward pass, or a list of them, in call order, when the module ran several times.
    Records are cleared when the root model's forward starts.
    """

    def __init__(self, model: nn.Module, paths: Iterable[str]) -> None:
        self.model = unwrap_model(model)
        self.paths = list(dict.fromkeys(paths))  # dedupe, keep order
        modules = dict(self.model.named_modules())
        for path in self.paths:
            name = path.removesuffix(_INPUT_SUFFIX)
            if name not in modules:
                valid = [p for p in modules if p]
                raise ConfigError(
                    f"{type(self.model).__name__} has no module {name!r}; closest valid paths: "
                    f"{_closest_paths(name, valid)}. Run `kdforge probe` to list them all."
                )
        self._records: dict[str, list[Any]] = {p: [] for p in self.paths}
        self._handles: list[RemovableHandle] = [self.model.register_forward_pre_hook(self._clear)]
        for path in self.paths:
            name = path.removesuffix(_INPUT_SUFFIX)
            self._handles.append(modules[name].register_forward_hook(self._recorder(path)))

    def _clear(self, module: nn.Module, args: Any) -> None:
        for calls in self._records.values():
            calls.clear()

    def _recorder(self, path: str):
        want_input = path.endswith(_INPUT_SUFFIX)

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            self._records[path].append(args[0] if want_input else output)

        return hook

    @property
    def outputs(self) -> dict[str, Any]:
        """``{path: value}`` of the last forward; a list of values if a module ran twice."""
        missing = [p for p, calls in self._records.items() if not calls]
        if missing:
            raise RuntimeError(
                f"taps {missing} recorded nothing: the module did not run in the last "
                "forward pass (or no forward has run yet)."
            )
        return {
            p: calls[0] if len(calls) == 1 else list(calls) for p, calls in self._records.items()
        }

    def recorded(self, strict: bool = True) -> dict[str, Any]:
        """:attr:`outputs`; with ``strict=False`` a module that did not run is left out
        (e.g. an auxiliary head that runs only in training) instead of failing."""
        if strict:
            return self.outputs
        return {
            p: calls[0] if len(calls) == 1 else list(calls)
            for p, calls in self._records.items()
            if calls
        }

    @property
    def calls(self) -> dict[str, list[Any]]:
        """``{path: [value of each call]}`` of the last forward (empty if it did not run)."""
        return {p: list(calls) for p, calls in self._records.items()}

    def clear(self) -> None:
        """Drop the recorded values (they hold activations and their graphs)."""
        self._clear(self.model, ())

    def remove(self) -> None:
        """Remove every hook; the model is left exactly as it was."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"FeatureTaps({type(self.model).__name__}, {self.paths})"
