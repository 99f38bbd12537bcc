"""``kdforge probe``: every module path of teacher and student with its output shape."""

from __future__ import annotations

import argparse
from typing import Any

from kdforge.commands._args import keyword_value

ROLES = ("teacher", "student")

HELP = "list module paths and output shapes to pick taps"
DESCRIPTION = (
    "Print every module path of teacher and student with its output shape, from a recipe "
    "or from zoo names."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", nargs="?", help="recipe YAML or shipped recipe name (or use --teacher/--student)"
    )
    parser.add_argument("--teacher", help="model name (zoo, torchvision/..., timm/..., hf/DIR)")
    parser.add_argument("--student", help="model name (zoo, torchvision/..., timm/..., hf/DIR)")
    parser.add_argument(
        "--input-size",
        nargs=3,
        type=int,
        metavar=("C", "H", "W"),
        help="input size (default: the model's own, e.g. 3 32 32 for CIFAR)",
    )
    parser.add_argument(
        "--kwarg",
        nargs="+",
        action="extend",
        type=_role_keyword,
        default=[],
        metavar="ROLE.KEY=VALUE",
        help="builder keywords of the teacher or student, the value read as YAML "
        "(student.fpn_channels=32 teacher.class_names=[cat,dog] ...)",
    )


def _role_keyword(text: str) -> tuple[str, str, Any]:
    """``ROLE.KEY=VALUE`` -> ``(role, key, value)``, ROLE ``teacher`` or ``student``."""
    role, sep, rest = text.partition(".")
    if not sep or role not in ROLES:
        raise argparse.ArgumentTypeError(
            f"expected teacher.KEY=VALUE or student.KEY=VALUE, got {text!r}"
        )
    return (role, *keyword_value(rest))


def run(args: argparse.Namespace) -> None:
    import torch

    from kdforge.analysis.probe import format_probe, probe_model
    from kdforge.config import load_config
    from kdforge.errors import ConfigError
    from kdforge.models.factory import build_model, get_model_info

    if args.config:
        cfg = load_config(args.config)
        names = {"teacher": cfg.teacher.name, "student": cfg.student.name}
    else:
        names = {"teacher": args.teacher, "student": args.student}
    names = {role: name for role, name in names.items() if name}
    if not names:
        raise ConfigError("kdforge probe needs a recipe or --teacher/--student NAME")
    kwargs: dict[str, dict[str, Any]] = {role: {} for role in names}
    for role, key, value in args.kwarg:
        if role not in kwargs:
            raise ConfigError(f"--kwarg {role}.{key}: no {role} to probe; name it with --{role}")
        kwargs[role][key] = value
    for role, name in names.items():
        size = tuple(args.input_size or get_model_info(name).input_size)
        rows = probe_model(build_model(name, kwargs[role]), torch.zeros(1, *size))
        print(format_probe(f"{role}: {name} on input 1x{'x'.join(map(str, size))}", rows))
        print()
