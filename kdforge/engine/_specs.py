"""Recipe entries of the form ``{type: NAME, **keyword arguments}`` turned into objects,
with a ConfigError naming the entry for anything that does not fit."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from kdforge.engine.hooks import HookBase
from kdforge.errors import ConfigError

__all__ = ["kwargs_error", "user_hook"]


def kwargs_error(where: str, cls: type, spec: dict[str, Any]) -> str | None:
    """What is wrong with calling ``cls(**spec)``, or None."""
    params = {
        name: p
        for name, p in inspect.signature(cls).parameters.items()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    unknown = sorted(set(spec) - set(params))
    if unknown:
        return f"{where}: unknown key(s) {unknown}; valid keys: type, {', '.join(params)}"
    missing = [n for n, p in params.items() if p.default is p.empty and n not in spec]
    if missing:
        return f"{where}: missing required key(s) {missing}"
    return None


def user_hook(index: int, spec: dict[str, Any]) -> HookBase:
    """``{type: "package.module.Class", **kwargs}`` -> that hook."""
    spec = dict(spec)
    where = f"train.hooks[{index}]"
    path = spec.pop("type", None)
    if not isinstance(path, str) or "." not in path:
        raise ConfigError(f"{where}: set type to a hook class path, e.g. mypackage.hooks.MyHook")
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{where}: cannot import {path!r} ({err})") from err
    if not (inspect.isclass(cls) and issubclass(cls, HookBase)):
        raise ConfigError(f"{where}: {path} is not a subclass of kdforge.engine.hooks.HookBase")
    problem = kwargs_error(f"{where} ({path})", cls, spec)
    if problem:
        raise ConfigError(problem)
    return cls(**spec)
