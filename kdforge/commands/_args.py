"""Options that several commands share, declared once."""

from __future__ import annotations

import argparse
from typing import Any

import yaml

__all__ = ["add_overrides", "add_role", "keyword_value"]


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE ...``: recipe overrides, collected in ``args.overrides``."""
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override recipe keys, e.g. --set optim.lr=0.1 data.root=~/data",
    )


def add_role(parser: argparse.ArgumentParser) -> None:
    """``--model {student,teacher}``: which model of the recipe, in ``args.model``."""
    parser.add_argument(
        "--model",
        choices=["student", "teacher"],
        default="student",
        help="which model of the recipe to build (default student)",
    )


def keyword_value(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as YAML (``true``, ``0.6``, ``caffe``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not YAML") from None
