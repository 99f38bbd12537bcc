"""What a shipped recipe follows and the number reported for it, read from its header comment
and from the tables of the READMEs next to the recipes (nothing is copied into code)."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["header", "header_number", "readme_numbers", "source"]

# a file of the official code base: a path with a folder, e.g. configs/cifar100/kd.yaml
_SOURCE = re.compile(r"(?:(\S+)\s+)?[(`\"]?((?:[\w.+-]+/)+[\w.+-]+\.(?:py|yaml|sh))\b")
_NOT_A_REPO = {"as", "in", "the", "after", "see", "of", "and", "from", "by"}  # not a code base
# "<official config>: box AP 41.5 in its README." (also "... 42.4 (CanKD-dagger row) in ...")
_HEADER_NUMBER = re.compile(r":\s*(box AP|mIoU|top-1) (\d+(?:\.\d+)?)\b[^.:]*\bin its README")
_NUMBER = re.compile(r"\d+(?:\.\d+)?(?: / \d+(?:\.\d+)?)?")
_YAML = re.compile(r"`([\w./-]+\.yaml)`")
_FOLDER = re.compile(r"`([\w-]+)/`")


def header(text: str) -> list[str]:
    """The leading comment lines of a recipe, without their ``#``."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return lines


def source(lines: list[str]) -> str | None:
    """The first official file the header names, with the word before it when that names
    its code base (``mmdetection configs/atss/atss_r50_fpn_1x_coco.py``)."""
    match = _SOURCE.search(" ".join(lines))
    if match is None:
        return None
    owner, path = match.groups()
    owner = (owner or "").rstrip(":(")
    return path if not owner or owner.lower() in _NOT_A_REPO else f"{owner} {path}"


def header_number(lines: list[str]) -> str | None:
    """``box AP 41.5`` when the header's first line gives the number its source's README
    reports for it."""
    match = _HEADER_NUMBER.search(lines[0]) if lines else None
    return f"{match[1]} {match[2]}" if match else None


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def _tables(text: str) -> list[list[list[str]]]:
    """Each Markdown table as rows of cells, header first, the ``|---|`` row left out."""
    tables: list[list[list[str]]] = []
    previous = False
    for line in text.splitlines():
        row = line.startswith("|")
        if row and not set(line) <= set("|-: "):
            if not previous:
                tables.append([])
            tables[-1].append(_cells(line))
        previous = row
    return tables


def _key(text: str) -> str:
    return text.lower().replace("-", "_")


def readme_numbers(readme: Path, root: Path) -> dict[str, str]:
    """Recipe name -> ``<column> <value>`` for each table row of ``readme`` whose last cell
    names recipes (`x.yaml`, next to the README or in the `folder/`s its header names).

    The value is the row's cell in the column named as the recipe's folder (``KD`` for
    ``kd/``, ``CAT-KD`` for ``cat_kd/``), else its only numeric cell; a row with neither
    gives no number.
    """
    numbers = {}
    for head, *rows in _tables(readme.read_text()):
        folders = [readme.parent / f for f in _FOLDER.findall(head[-1])] or [readme.parent]
        for cells in rows:
            columns = zip(head[1:-1], cells[1:-1], strict=True)
            numeric = [(column, cell) for column, cell in columns if _NUMBER.fullmatch(cell)]
            for name in _YAML.findall(cells[-1]):
                for path in [(folder / name).resolve() for folder in folders]:
                    own = [(h, c) for h, c in numeric if _key(h) == path.parent.name]
                    picked = own or (numeric if len(numeric) == 1 else [])
                    if path.is_file() and picked:
                        recipe = path.relative_to(root).with_suffix("").as_posix()
                        numbers[recipe] = " ".join(picked[0])
    return numbers
