"""Detectors prompted by class names (Grounding DINO) must name the data set's classes.

Such a model turns ``kwargs.class_names`` into its text prompt, and label ``i`` of the data
is scored against the ``i``-th name: a list that differs from the data's categories (another
order, a renamed class) trains and evaluates every label against the wrong words.
"""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig

from kdforge.errors import ConfigError

__all__ = ["check_class_names"]


def check_class_names(cfg: DictConfig, data_names: Sequence[str] | None) -> None:
    """Raise a one-line ConfigError when the student's or teacher's ``kwargs.class_names``
    differ from ``data_names`` (the data set's categories in label order), naming the first
    difference. Models without ``class_names`` and data without names are not checked."""
    if data_names is None:
        return
    data_names = list(data_names)
    for role in ("student", "teacher"):
        given = cfg[role].kwargs.get("class_names") if cfg[role].name else None
        if given is None:
            continue
        given = list(given)
        where = f"{role}.kwargs.class_names"
        fix = "list the data set's categories in label order"
        for i, (name, expected) in enumerate(zip(given, data_names, strict=False)):
            if name != expected:
                data = f"the data set's class {i} is {expected!r}"
                raise ConfigError(f"{where}[{i}] is {name!r} but {data}: {fix}")
        if len(given) != len(data_names):
            raise ConfigError(
                f"{where} has {len(given)} names but the data set has {len(data_names)} "
                f"classes: {fix}"
            )
