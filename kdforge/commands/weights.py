"""``kdforge weights``: the public checkpoints the recipes name, and fetching them."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kdforge.weights import Entry

__all__ = ["format_details", "format_table"]

HELP = "list the public teacher/backbone weights the recipes use, and fetch them"
DESCRIPTION = (
    "`kdforge weights` lists every public checkpoint the shipped recipes name: its size where "
    "known, where the recipes expect it, how many recipes use it and whether it is already "
    "there; `kdforge weights list NAME` shows its URL, hash, model and recipes. `kdforge "
    "weights fetch NAME [NAME...]` (or --all, or --recipe RECIPE for what one recipe needs) "
    "downloads from the publisher with a progress bar, resumes an interrupted download, checks "
    "the sha256 the publisher put in the file name, converts OpenMMLab and timm checkpoints "
    "(kdforge convert) or unpacks mdistiller's tar, and writes the files where the recipes "
    "expect them, under --root (default: the current folder)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", nargs="?", choices=["list", "fetch"], default="list", help="default: list"
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="catalogue names")
    parser.add_argument("--all", action="store_true", help="every entry of the catalogue")
    parser.add_argument("--recipe", help="the entries this recipe's weight paths name")
    parser.add_argument(
        "--root", default=".", help="folder the recipes' relative paths start from (default .)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _selected(args: argparse.Namespace) -> list[Entry]:
    """The entries the arguments name, checked before anything is downloaded."""
    from kdforge.config.recipes import resolve_recipe
    from kdforge.weights import CATALOGUE, EXCLUDED, entry_for_path, get_entries
    from kdforge.weights.recipes import weight_paths

    if args.all:
        return list(CATALOGUE)
    entries = get_entries(args.names)
    if args.recipe:
        for path in weight_paths(resolve_recipe(args.recipe)):
            entry = entry_for_path(path)
            if entry is not None:
                entries.append(entry)
            else:
                why = EXCLUDED.get(path, "not a public checkpoint (your own file?)")
                print(f"{path}: not in the catalogue: {why}")
    return list(dict.fromkeys(entries))


def _state(entry: Entry, root: Path) -> str:
    have = sum((root / p).is_file() for p in entry.paths)
    if have == len(entry.paths):
        return "yes"
    download = root / entry.download_path
    if download.with_name(download.name + ".part").is_file():
        return "partial"
    return f"{have}/{len(entry.paths)}" if have else "no"


def _size(entry: Entry, root: Path) -> str:
    if entry.size_mb is not None:
        return f"{entry.size_mb:.0f} MB"
    download = root / entry.download_path
    return f"{download.stat().st_size / 2**20:.0f} MB" if download.is_file() else "?"


def _where(entry: Entry) -> str:
    if len(entry.paths) <= 2:
        return ", ".join(entry.paths)
    return f"{os.path.commonpath(entry.paths)}/ ({len(entry.paths)} files)"


def format_table(entries: list[Entry], root: str | Path = ".") -> str:
    """One line per entry: name, size, present, recipes using it, conversion, where."""
    from kdforge.weights import recipe_weights

    root = Path(root)
    uses = recipe_weights()
    width = max(len(e.name) for e in entries)
    lines = [f"{'NAME':<{width}}  {'SIZE':>7}  HERE     RECIPES  CONVERT  WHERE"]
    for e in entries:
        recipes = len({r for p in e.paths for r in uses.get(p, ())})
        lines.append(
            f"{e.name:<{width}}  {_size(e, root):>7}  {_state(e, root):<7}  {recipes:>7}  "
            f"{e.convert:<7}  {_where(e)}"
        )
    return "\n".join(lines)


def format_details(entry: Entry, root: str | Path = ".") -> str:
    """Everything about one entry: URL, hash, model, conversion, files and recipes."""
    from kdforge.weights import recipe_weights

    root = Path(root)
    uses = recipe_weights()
    digest = f"{entry.sha256} (sha256 prefix, from the file name)" if entry.sha256 else "none"
    convert = {"none": "used as is", "untar": "unpacked"}.get(
        entry.convert, f"kdforge convert {entry.convert}"
    )
    lines = [
        entry.name,
        f"  url:     {entry.url}",
        f"  sha256:  {digest}",
        f"  model:   {entry.model} ({convert})",
        f"  source:  {entry.source}",
        f"  size:    {_size(entry, root)}",
    ]
    for i, path in enumerate(entry.paths):
        here = "present" if (root / path).is_file() else "missing"
        lines.append(f"  {'files:' if i == 0 else '':<8} {path} ({here})")
    recipes = sorted({r for p in entry.paths for r in uses.get(p, ())})
    for i, recipe in enumerate(recipes or ["(none)"]):
        lines.append(f"  {'recipes:' if i == 0 else '':<8} {recipe}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    from kdforge.errors import ConfigError
    from kdforge.weights import CATALOGUE, fetch, is_present

    selected = _selected(args)
    root = Path(args.root)
    if args.action == "list":
        if args.names and not (args.all or args.recipe):
            print("\n\n".join(format_details(e, root) for e in selected))
        else:
            print(format_table(selected if (args.all or args.recipe) else list(CATALOGUE), root))
        return
    if not selected:
        raise ConfigError(
            "name the weights to fetch: NAME..., --all or --recipe RECIPE "
            "(`kdforge weights` lists the names)"
        )
    for entry in selected:
        if is_present(entry, root):
            print(f"{entry.name}: already present")
            continue
        print(f"{entry.name}: {entry.url}")
        for path in fetch(entry, root, progress=not args.no_progress):
            print(f"  {path}")
