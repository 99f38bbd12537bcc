"""List every module of a model with the shape of its output, to pick layers to tap."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdforge.losses.base import shape_tree
from kdforge.taps import FeatureTaps

__all__ = ["format_probe", "probe_model"]


def _describe(shape: Any) -> str:
    if isinstance(shape, torch.Size):
        return "x".join(str(d) for d in shape)
    if isinstance(shape, (list, tuple)):
        return "[" + ", ".join(_describe(s) for s in shape) + "]"
    if isinstance(shape, dict):
        return "{" + ", ".join(f"{k}: {_describe(v)}" for k, v in shape.items()) + "}"
    return "-"


@torch.no_grad()
def probe_model(model: nn.Module, example: Any) -> list[tuple[str, str, str]]:
    """``(path, module type, output shape)`` for every module that ran on ``example``.

    A module that runs several times shows a list of shapes; a module that did not run
    is listed with ``not run``. Paths are valid :class:`kdforge.FeatureTaps` paths.
    """
    names = [name for name, _ in model.named_modules()]
    taps = FeatureTaps(model, names)
    was_training = model.training
    model.eval()
    try:
        model(example)
        records = taps.calls
    finally:
        taps.remove()
        model.train(was_training)
    modules = dict(model.named_modules())
    rows = []
    for name in names:
        calls = records[name]
        if not calls:
            shape = "not run"
        elif len(calls) == 1:
            shape = _describe(shape_tree(calls[0]))
        else:
            shape = _describe([shape_tree(c) for c in calls])
        rows.append((name or "(output)", type(modules[name]).__name__, shape))
    return rows


def format_probe(title: str, rows: list[tuple[str, str, str]]) -> str:
    """A plain text table of :func:`probe_model` rows."""
    width_path = max(len(r[0]) for r in rows)
    width_type = max(len(r[1]) for r in rows)
    lines = [title, f"{'module path':<{width_path}}  {'type':<{width_type}}  output shape"]
    lines += [f"{p:<{width_path}}  {t:<{width_type}}  {s}" for p, t, s in rows]
    return "\n".join(lines)
