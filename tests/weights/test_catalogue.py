"""The catalogue against the recipes: every weight file a recipe names is in it (or excluded
with a reason), every entry is used, and its URL, hash, model and conversion fit."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from urllib.parse import urlparse

import pytest
import yaml

from kdforge.commands.convert import CONVERTERS
from kdforge.errors import ConfigError
from kdforge.weights import CATALOGUE, EXCLUDED, entry_for_path, get_entries, recipe_weights
from kdforge.weights.catalogue import CONVERSIONS
from kdforge.weights.recipes import recipe_files, recipe_label, weight_paths

# publisher hosts, and whether that publisher names its files name-<sha256 prefix>.ext
HOSTS = {
    "download.pytorch.org": True,
    "download.openmmlab.com": True,
    "dl.fbaipublicfiles.com": True,
    "github.com": False,  # mdistiller's release asset cifar_teachers.tar
}


def test_the_recipes_are_found():
    labels = [recipe_label(p) for p in recipe_files()]
    assert "cifar100/kd/resnet32x4_resnet8x4.yaml" in labels
    assert any(label.startswith("coco/") for label in labels)
    assert len(recipe_weights()) >= 25  # distinct weight files named across the recipes


def test_every_weight_file_a_recipe_names_is_catalogued_or_excluded():
    missing = {p: r for p, r in recipe_weights().items() if not entry_for_path(p)}
    assert set(missing) <= set(EXCLUDED), f"not in the catalogue: {missing}"
    assert not {p for p in EXCLUDED if entry_for_path(p)}, "both catalogued and excluded"
    assert set(EXCLUDED) <= set(recipe_weights()), "an exclusion no recipe needs"


@pytest.mark.parametrize("entry", CATALOGUE, ids=lambda e: e.name)
def test_each_entry_is_used_and_well_formed(entry):
    uses = recipe_weights()
    for path in entry.paths:
        assert uses.get(path), f"{path}: no recipe names it"
    assert [e.name for e in CATALOGUE].count(entry.name) == 1
    assert sum(path in e.paths for e in CATALOGUE for path in entry.paths) == len(entry.paths)
    url = urlparse(entry.url)
    assert url.scheme == "https" and url.netloc in HOSTS
    assert (entry.sha256 is not None) == HOSTS[url.netloc], entry.filename
    assert entry.convert in CONVERSIONS
    assert entry.convert in ("none", "untar") or entry.convert in CONVERTERS
    if entry.convert == "none":  # kept under the publisher's name, hash included
        assert [PurePosixPath(p).name for p in entry.paths] == [entry.filename]
    else:
        assert entry.download_path not in entry.paths


def _roles(recipe) -> dict[str, dict]:
    data = yaml.safe_load(recipe.read_text())
    return {role: data.get(role) or {} for role in ("teacher", "student")}


def test_entries_hold_the_models_that_the_recipes_load_them_into():
    checked = 0
    for recipe in recipe_files():
        for role, section in _roles(recipe).items():
            path = section.get("pretrained")
            if isinstance(path, str) and (entry := entry_for_path(path)):
                models = re.split(r", ", entry.model)
                assert section["name"] in models, f"{recipe_label(recipe)} {role}: {path}"
                checked += 1
    assert checked >= 50  # the teachers of the CIFAR, ImageNet, COCO and Cityscapes recipes


def test_unknown_names_are_refused_with_close_matches():
    with pytest.raises(ConfigError, match=r"no weights called 'resnet5'; did you mean resnet50"):
        get_entries(["resnet5"])
    with pytest.raises(ConfigError, match=r"'zzz'; \(`kdforge weights` lists the names\)"):
        get_entries(["zzz"])
    assert [e.name for e in get_entries(["resnet50", "resnet18", "resnet50"])] == [
        "resnet50",
        "resnet18",
    ]


def test_the_bert_folder_of_the_grounding_dino_recipes_says_how_to_make_it():
    named = [r for r in recipe_files() if "text_folder:" in r.read_text()]
    assert len(named) >= 3  # Grounding DINO and CanKD's row
    for recipe in named:
        folders = [p for p in weight_paths(recipe) if p.endswith("bert-base-uncased")]
        assert folders and all("save_pretrained" in EXCLUDED[p] for p in folders), recipe
