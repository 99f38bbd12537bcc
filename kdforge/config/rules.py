"""The values each key accepts, checked once a recipe is merged (:func:`validate_config`)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kdforge.config.schema import LOGGERS
from kdforge.errors import ConfigError

__all__ = ["RULES", "Rule", "validate_config"]

# --- value rules ----------------------------------------------------------------------------
# Checked by validate_config after the last merge, so a recipe, its --set overrides and a
# resumed run's config.yaml all pass through them. The keys whose valid names are a table
# in the engine are checked there, when the run is built, and only there: task
# (engine.tasks.TASKS), train.amp (engine.trainer.AMP_DTYPES), teacher.dtype
# (teacher.TEACHER_DTYPES), train.device (engine.distributed.select_device). Loss terms
# check their own arguments; train.hooks are checked when built.


@dataclass(frozen=True)
class Rule:
    """The values one key accepts; ``text`` is the range as an error message states it,
    ``choices`` the names a string key accepts."""

    text: str
    accepts: Callable[[Any], bool]
    choices: tuple[str, ...] = ()


def _bound(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _number(
    low: float,
    high: float = math.inf,
    *,
    above: bool = False,
    below: bool = False,
    null: bool = False,
) -> Rule:
    """A finite number in ``[low, high]``; ``above``/``below`` exclude that bound; ``null``
    also accepts None (the schema's "off" or "follow another key")."""
    if high == math.inf:
        text = f"{'>' if above else '>='} {_bound(low)}"
    else:
        text = f"in {'(' if above else '['}{_bound(low)}, {_bound(high)}{')' if below else ']'}"

    def accepts(value: Any) -> bool:
        if value is None:
            return null
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        inside_low = low < value if above else low <= value
        return math.isfinite(value) and inside_low and (value < high if below else value <= high)

    return Rule(f"null or {text}" if null else text, accepts)


def _one_of(*names: str) -> Rule:
    return Rule(f"one of {', '.join(names)}", lambda value: value in names, names)


def _pair(item: Rule) -> Rule:
    def accepts(value: Any) -> bool:
        return isinstance(value, list) and len(value) == 2 and all(map(item.accepts, value))

    return Rule(f"two values, each {item.text}", accepts)


def _increasing(item: Rule) -> Rule:
    def accepts(value: Any) -> bool:
        if not isinstance(value, list) or not all(map(item.accepts, value)):
            return False
        return all(a < b for a, b in itertools.pairwise(value))

    return Rule(f"a strictly increasing list, each {item.text}", accepts)


_UNIT_OPEN = _number(0, 1, below=True)  # [0, 1): momentum, Adam's betas

RULES: dict[str, Rule] = {
    "data.batch_size": _number(1),
    "data.eval_batch_size": _number(1, null=True),
    "data.num_workers": _number(0),
    "data.mixup_alpha": _number(0),  # 0: no mixup
    "data.repeated_aug": _number(1),  # 1: each image once
    "teacher.num_classes": _number(1, null=True),
    "student.num_classes": _number(1, null=True),
    "optim.name": _one_of("sgd", "adamw"),
    "optim.lr": _number(0, above=True),
    "optim.momentum": _UNIT_OPEN,
    "optim.betas": _pair(_UNIT_OPEN),
    "optim.weight_decay": _number(0),
    "optim.norm_weight_decay": _number(0, null=True),
    "optim.bias_lr_mult": _number(0),  # 0 freezes the biases
    "optim.bias_weight_decay": _number(0, null=True),
    "optim.lr_mults": Rule(
        "a mapping of parameter-name parts to numbers >= 0 (e.g. {backbone: 0.1})",
        lambda v: isinstance(v, dict) and all(_number(0).accepts(x) for x in v.values()),
    ),
    "optim.base_batch_size": _number(1, null=True),
    "optim.clip_grad_norm": _number(0, above=True, null=True),
    "schedule.name": _one_of("multistep", "cosine", "poly", "constant"),
    "schedule.epochs": _number(1),
    "schedule.iters": _number(1, null=True),
    "schedule.milestones": _increasing(_number(0)),
    "schedule.gamma": _number(0, above=True),
    "schedule.min_lr": _number(0),
    "schedule.power": _number(0, above=True),
    "schedule.warmup_epochs": _number(0),
    "schedule.warmup_factor": _number(0, 1, above=True),
    "schedule.warmup_iters": _number(0),
    "schedule.warmup_mode": _one_of("linear", "constant"),
    "schedule.warmup_by": _one_of("step", "epoch"),
    "train.report": Rule("null or one of best, final", lambda v: v in (None, "best", "final")),
    "train.seed": _number(0, 2**32 - 1),  # the usual 32-bit seed range
    "train.max_steps": _number(1, null=True),
    "train.max_eval_batches": _number(1, null=True),
    "train.eval_every": _number(1),
    "train.log_every": _number(1),
    "train.ema_decay": _number(0, 1, null=True),
    "train.ema_steps": _number(1),
    "train.stop_distillation": _number(0, null=True),
}


def _logger_problems(loggers: Any) -> list[str]:
    """What is wrong with ``train.loggers``: each entry a name of :data:`LOGGERS` or
    ``{type: NAME, **options}`` with that logger's options, as strings; each logger once."""
    problems, seen = [], set()
    names = ", ".join(LOGGERS)
    for i, entry in enumerate(loggers):
        where = f"train.loggers[{i}]"
        options = dict(entry) if isinstance(entry, dict) else {"type": entry}
        kind = options.pop("type", None)
        if kind not in LOGGERS:
            given = f"type={_show(kind)}" if isinstance(entry, dict) else _show(kind)
            problems.append(f"{where}: {given} is not a logger; use one of {names}")
            continue
        if kind in seen:
            problems.append(f"{where}: {kind} is listed twice; list each logger once")
        seen.add(kind)
        unknown = sorted(set(options) - set(LOGGERS[kind]))
        if unknown:
            valid = ", ".join(["type", *LOGGERS[kind]])
            problems.append(f"{where} ({kind}): unknown option(s) {unknown}; valid: {valid}")
        problems += [
            f"{where} ({kind}): {key}={_show(value)}: must be a string (or null)"
            for key, value in options.items()
            if key not in unknown and not isinstance(value, (str, type(None)))
        ]
    return problems


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _omegaconf_message(err: OmegaConfBaseException) -> str:
    """The first line of OmegaConf's message (the rest repeats the key and the types)."""
    return _one_line(str(err.msg or err).split("\n")[0])


def _resolved(cfg: DictConfig) -> dict[str, Any]:
    """``cfg`` as plain containers with interpolations resolved; a bad one is a ConfigError."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "config"
        raise ConfigError(f"{key}: {_omegaconf_message(err)}") from None


def _show(value: Any) -> str:
    return "null" if value is None else str(value)


def validate_config(cfg: DictConfig) -> None:
    """Check every value of a merged config against :data:`RULES` (and nesterov against
    momentum, and ``train.loggers``); one ConfigError names each bad key, its value and its
    valid range."""
    values = _resolved(cfg)
    problems = []
    for key, rule in RULES.items():
        section, name = key.split(".")
        value = values[section][name]
        if not rule.accepts(value):
            finite = isinstance(value, float) and not math.isfinite(value)
            note = " (a finite number)" if finite else ""
            problems.append(f"{key}={_show(value)}: must be {rule.text}{note}")
    optim = values["optim"]
    if optim["name"] == "sgd" and optim["nesterov"] and optim["momentum"] == 0:
        problems.append("optim.nesterov=true: needs optim.momentum > 0")
    problems += _logger_problems(values["train"]["loggers"])
    if problems:
        raise ConfigError("; ".join(problems))
