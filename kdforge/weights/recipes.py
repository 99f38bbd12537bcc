"""Which weight files the recipes name (``pretrained:`` and ``backbone_pretrained:`` values,
and ``text_folder:``, Grounding DINO's local BERT folder)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from kdforge.config.recipes import RECIPES_DIR as RECIPES
from kdforge.errors import ConfigError

__all__ = [
    "RECIPES",
    "WEIGHT_KEYS",
    "recipe_files",
    "recipe_label",
    "recipe_weights",
    "weight_paths",
]

WEIGHT_KEYS = ("pretrained", "backbone_pretrained", "text_folder")


def recipe_files() -> list[Path]:
    """Every shipped recipe file, sorted."""
    return sorted(RECIPES.rglob("*.yaml"))


def recipe_label(path: Path) -> str:
    """A shipped recipe by its path in kdforge/recipes (``coco/fcos/fcos_r50_fpn_1x.yaml``)."""
    return path.relative_to(RECIPES).as_posix() if path.is_relative_to(RECIPES) else str(path)


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
