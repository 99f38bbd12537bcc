"""The recipe READMEs (kdforge/recipes/) name recipes that exist; every CAT-KD row has one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "kdforge" / "recipes"
READMES = sorted(CONFIGS.rglob("README.md"))
YAML_NAME = re.compile(r"`([\w./-]+\.yaml)`")


def named_recipes(readme: Path) -> set[Path]:
    """Resolve the `x.yaml` in the last cell of each table row of a README: next to it, else in
    every method folder below it (the CIFAR-100 table names one file per method)."""
    rows = [line for line in readme.read_text().splitlines() if line.startswith("|")]
    found = set()
    for name in YAML_NAME.findall("\n".join(row.rstrip(" |").rsplit("|", 1)[-1] for row in rows)):
        path = (readme.parent / name).resolve()
        matches = [path] if path.is_file() else sorted(readme.parent.glob(f"*/{name}"))
        assert matches, f"{readme.relative_to(CONFIGS)} names {name}, which does not exist"
        found.update(matches)
    return found


@pytest.mark.parametrize("readme", READMES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_readme_names_existing_recipes(readme):
    assert named_recipes(readme)


@pytest.mark.parametrize(
    "folder", ["cifar100/kd", "cifar100/dkd", "cifar100/cat_kd", "cifar100/cat", "imagenet/cat_kd"]
)
def test_every_classification_recipe_is_in_a_readme(folder):
    named = set().union(*(named_recipes(r) for r in READMES))
    missing = [p.name for p in sorted((CONFIGS / folder).glob("*.yaml")) if p not in named]
    assert not missing, f"kdforge/recipes/{folder}: no README row names {missing}"
