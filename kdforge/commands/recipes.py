"""``kdforge recipes``: the shipped recipes, what each follows and reports; one printed."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kdforge.config.recipes import RecipeInfo

__all__ = ["format_recipes"]

HELP = "list the shipped recipes (or print one: kdforge recipes show NAME)"
DESCRIPTION = (
    "`kdforge recipes [FILTER ...]` lists the recipes installed with kdforge: each name (give "
    "it to train, eval, check-data, ... in place of a YAML file; a file of that name wins), "
    "the number reported for it (its official config's README or the paper table it "
    "reproduces) and the official config or script it follows. Filters keep the names that "
    "contain every one (e.g. coco/crosskd). `kdforge recipes show NAME` prints the recipe's "
    "YAML, to read or to copy (kdforge recipes show NAME > my.yaml)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "words",
        nargs="*",
        metavar="FILTER",
        help="parts of recipe names to keep (e.g. cifar100/kd resnet8x4), or: show NAME",
    )


def format_recipes(infos: list[RecipeInfo]) -> str:
    """The listing: name, reported number and source of each :class:`RecipeInfo`, aligned."""
    rows = [("recipe", "reported", "follows")]
    rows += [(i.name, i.reported or "-", i.source or "-") for i in infos]
    widths = [max(len(row[k]) for row in rows) for k in range(2)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows)


def run(args: argparse.Namespace) -> None:
    from kdforge.config.recipes import list_recipes, recipe_path
    from kdforge.errors import ConfigError

    if args.words[:1] == ["show"]:
        if len(args.words) != 2:
            raise ConfigError("give one recipe name: kdforge recipes show NAME")
        print(recipe_path(args.words[1]).read_text(), end="")
        return
    infos = list_recipes(*args.words)
    if not infos:
        raise ConfigError(f"no shipped recipe name contains all of {' '.join(args.words)}")
    print(format_recipes(infos))
    print(f"{len(infos)} recipe(s); kdforge recipes show NAME prints one")
