"""The shipped recipes: YAML files installed with the package (``kdforge/recipes/``), named by
their path there without ``.yaml`` (``cifar100/kd/resnet32x4_resnet8x4``).

Wherever a recipe file is expected, a shipped recipe's name works too; a file that exists
always wins (:func:`resolve_recipe`). Paths a recipe names (teacher weights, data) stay
relative to the folder the command runs in.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from pathlib import Path

from kdforge.config import _recipe_notes
from kdforge.errors import ConfigError

__all__ = [
    "RECIPES_DIR",
    "RecipeInfo",
    "find_recipe",
    "list_recipes",
    "recipe_names",
    "recipe_path",
    "resolve_recipe",
]

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
# where the recipes lived in a source checkout before they became package data
_OLD_PREFIX = "configs/"


@dataclass(frozen=True)
class RecipeInfo:
    """One shipped recipe.

    Attributes:
        name: ``cifar100/kd/resnet32x4_resnet8x4``.
        path: the YAML file.
        source: the official config or script it follows, as its header names it.
        reported: the number reported for it (``box AP 41.5``, ``KD 73.33``): the one its
            header gives from its source's README, else the one in a README table next to it.
    """

    name: str
    path: Path
    source: str | None
    reported: str | None


def recipe_names() -> list[str]:
    """The names of every shipped recipe, sorted."""
    return sorted(p.relative_to(RECIPES_DIR).with_suffix("").as_posix() for p in _files())


def _files() -> list[Path]:
    return sorted(RECIPES_DIR.rglob("*.yaml"))


def _name(text: str) -> str:
    """``configs/coco/x.yaml`` or ``coco/x.yaml`` -> ``coco/x``."""
    name = text.replace("\\", "/").removesuffix(".yaml")
    return name.removeprefix(_OLD_PREFIX)


def find_recipe(name: str) -> Path | None:
    """The file of the shipped recipe ``name`` (``.yaml`` and a leading ``configs/``
    optional), or None."""
    name = _name(name)
    return RECIPES_DIR / f"{name}.yaml" if name in recipe_names() else None


def _close_matches(name: str) -> str:
    names = recipe_names()
    query = _name(name)
    same_file = [n for n in names if n.rsplit("/", 1)[-1] == query.rsplit("/", 1)[-1]]
    close = list(dict.fromkeys([*same_file, *difflib.get_close_matches(query, names, n=3)]))
    return f"; close matches: {', '.join(close[:5])}" if close else ""


def recipe_path(name: str) -> Path:
    """The file of the shipped recipe ``name``.

    Raises:
        ConfigError: no shipped recipe has that name (close matches named).
    """
    path = find_recipe(name)
    if path is None:
        raise ConfigError(
            f"no shipped recipe is named {name!r}{_close_matches(name)} "
            "(kdforge recipes lists them)"
        )
    return path


def resolve_recipe(path: str | Path) -> Path:
    """``path`` when something exists there, else the shipped recipe of that name.

    Raises:
        ConfigError: neither a file nor a shipped recipe has that name.
    """
    given = Path(path)
    if given.exists() or given.is_symlink():
        return given
    shipped = find_recipe(str(path))
    if shipped is None:
        raise ConfigError(
            f"config file {str(path)!r} does not exist and no shipped recipe has that name"
            f"{_close_matches(str(path))} (kdforge recipes lists them)"
        )
    return shipped


@functools.cache
def _readme_numbers() -> dict[str, str]:
    numbers: dict[str, str] = {}
    for readme in sorted(RECIPES_DIR.rglob("README.md")):
        numbers.update(_recipe_notes.readme_numbers(readme, RECIPES_DIR))
    return numbers


def list_recipes(*filters: str) -> list[RecipeInfo]:
    """The shipped recipes whose name contains every filter (case-insensitive), sorted.

    Raises:
        ConfigError: a filter that no recipe name contains.
    """
    names = recipe_names()
    for word in filters:
        if not any(word.lower() in name.lower() for name in names):
            raise ConfigError(
                f"no shipped recipe name contains {word!r}{_close_matches(word)} "
                "(kdforge recipes lists them)"
            )
    found = []
    for name in names:
        if all(word.lower() in name.lower() for word in filters):
            path = RECIPES_DIR / f"{name}.yaml"
            lines = _recipe_notes.header(path.read_text())
            reported = _recipe_notes.header_number(lines) or _readme_numbers().get(name)
            found.append(RecipeInfo(name, path, _recipe_notes.source(lines), reported))
    return found
