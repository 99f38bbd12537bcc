"""``kdforge weights``: the listing, the details of an entry, and ``fetch`` by name and by
recipe against a local server (the catalogue's URLs pointed at it)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

import kdforge.weights
import kdforge.weights.catalogue
from kdforge.cli import main
from kdforge.weights import CATALOGUE

BODY = b"resnet34 weights, as far as this test is concerned"
SHA = hashlib.sha256(BODY).hexdigest()


@pytest.fixture
def local_catalogue(server, monkeypatch):
    """The catalogue with resnet34's URL on the local server (under a name with its hash)."""
    url = server.serve(f"/models/resnet34-{SHA[:8]}.pth", BODY)
    patched = tuple(replace(e, url=url) if e.name == "resnet34" else e for e in CATALOGUE)
    monkeypatch.setattr(kdforge.weights.catalogue, "CATALOGUE", patched)
    monkeypatch.setattr(kdforge.weights, "CATALOGUE", patched)
    return patched


def test_the_listing_names_every_entry_and_what_is_present(tmp_path, capsys):
    main(["weights", "--root", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "SIZE", "HERE", "RECIPES", "CONVERT", "WHERE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {e.name for e in CATALOGUE}
    assert rows["resnet34"][1:] == [
        "?",
        "no",
        "1",
        "none",
        "download_ckpts/imagenet/resnet34-333f7ec4.pth",
    ]
    assert rows["vit_b_16"][1:3] == ["330", "MB"]
    assert rows["cifar_teachers"][-3:] == ["download_ckpts/cifar_teachers/", "(6", "files)"]

    teachers = next(e for e in CATALOGUE if e.name == "cifar_teachers")
    for path in teachers.paths[:2]:
        (tmp_path / path).parent.mkdir(parents=True)
        (tmp_path / path).write_bytes(b"x")
    main(["weights", "--root", str(tmp_path)])
    row = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("cifar_t"))
    assert row.split()[2] == "2/6"


def test_the_details_of_an_entry(capsys):
    main(["weights", "list", "retinanet_r101_fpn_2x_coco"])
    out = capsys.readouterr().out
    assert "sha256:  5560aee8 (sha256 prefix, from the file name)" in out
    assert "model:   retinanet_r101_fpn (kdforge convert mmdet)" in out
    assert "coco/crosskd/retinanet_r101_retinanet_r50_2x.yaml" in out
    assert "coco/cankd/cankd_retinanet_r101_retinanet_r50_fpn_2x.yaml" in out


def test_fetch_by_name_then_already_present(local_catalogue, server, tmp_path, capsys):
    main(["weights", "fetch", "resnet34", "--root", str(tmp_path), "--no-progress"])
    target = tmp_path / "download_ckpts/imagenet/resnet34-333f7ec4.pth"
    assert target.read_bytes() == BODY
    main(["weights", "fetch", "resnet34", "--root", str(tmp_path)])
    assert "resnet34: already present" in capsys.readouterr().out
    assert len(server.requests) == 1


def test_fetch_what_a_recipe_needs(local_catalogue, tmp_path):
    recipe = "imagenet/cat_kd/resnet34_resnet18.yaml"
    main(["weights", "fetch", "--recipe", recipe, "--root", str(tmp_path), "--no-progress"])
    assert (tmp_path / "download_ckpts/imagenet/resnet34-333f7ec4.pth").read_bytes() == BODY


def test_a_recipe_naming_a_file_of_its_own(local_catalogue, tmp_path, capsys):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(
        "teacher: {name: resnet34, pretrained: download_ckpts/imagenet/resnet34-333f7ec4.pth}\n"
        "student: {name: resnet18, kwargs: {backbone_pretrained: my/own.pth}}\n"
    )
    main(["weights", "fetch", "--recipe", str(recipe), "--root", str(tmp_path), "--no-progress"])
    assert "my/own.pth: not in the catalogue" in capsys.readouterr().out
    assert (tmp_path / "download_ckpts/imagenet/resnet34-333f7ec4.pth").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fetch", "resnet5"], "no weights called 'resnet5'; did you mean resnet50"),
        (["fetch"], "name the weights to fetch: NAME..., --all or --recipe RECIPE"),
        (["fetch", "--recipe", "nope/none"], "config file 'nope/none' does not exist"),
    ],
)
def test_bad_arguments_are_one_line_errors_before_any_download(argv, message, server, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["weights", *argv, "--root", str(tmp_path)])
    assert str(info.value).startswith(f"kdforge weights: error: {message}")
    assert "\n" not in str(info.value) and server.requests == [] and not any(tmp_path.iterdir())
