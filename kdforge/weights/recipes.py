"""Which weight files the recipes name (``pretrained:`` and ``backbone_pretrained:`` values)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from kdforge.errors import ConfigError

__all__ = [
    "RECIPE_ROOTS",
    "WEIGHT_KEYS",
    "recipe_files",
    "recipe_label",
    "recipe_weights",
    "resolve_recipe",
    "weight_paths",
]

WEIGHT_KEYS = ("pretrained", "backbone_pretrained")
_PACKAGE = Path(__file__).resolve().parents[1]
# the shipped recipes: package data (kdforge/recipes/) or, in a source checkout, configs/
RECIPE_ROOTS = (_PACKAGE / "recipes", _PACKAGE.parent / "configs")


def recipe_files() -> list[Path]:
    """Every shipped recipe file, sorted."""
    return sorted(p for root in RECIPE_ROOTS if root.is_dir() for p in root.rglob("*.yaml"))


def recipe_label(path: Path) -> str:
    """A shipped recipe by its path in its root (``coco/fcos/fcos_r50_fpn_1x.yaml``)."""
    for root in RECIPE_ROOTS:
        if path.is_relative_to(root):
            return path.relative_to(root).as_posix()
    return str(path)


def _weight_values(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in WEIGHT_KEYS and isinstance(value, str):
                yield value
            else:
                yield from _weight_values(value)
    elif isinstance(node, list):
        for value in node:
            yield from _weight_values(value)


def weight_paths(recipe: str | Path) -> list[str]:
    """The weight files recipe ``recipe`` names, in order, each once.

    Raises:
        ConfigError: a file that is not YAML.
    """
    try:
        data = yaml.safe_load(Path(recipe).read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{recipe} is not valid YAML ({err.problem})") from None
    return list(dict.fromkeys(_weight_values(data)))


@functools.cache
def recipe_weights() -> dict[str, tuple[str, ...]]:
    """Weight path -> the shipped recipes naming it (labels as :func:`recipe_label`)."""
    found: dict[str, list[str]] = {}
    for recipe in recipe_files():
        for path in weight_paths(recipe):
            found.setdefault(path, []).append(recipe_label(recipe))
    return {path: tuple(recipes) for path, recipes in found.items()}


def resolve_recipe(recipe: str) -> Path:
    """``recipe`` as a file: a path, or a shipped recipe by its path in its root (``.yaml``
    optional): ``coco/fcos/fcos_r50_fpn_1x``.

    Raises:
        ConfigError: no such recipe.
    """
    names = [recipe] if recipe.endswith(".yaml") else [recipe, f"{recipe}.yaml"]
    candidates = [Path(name) for name in names]
    candidates += [root / name for root in RECIPE_ROOTS for name in names]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"recipe {recipe} not found: give a YAML file or a shipped recipe's name")
