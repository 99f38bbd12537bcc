"""``kdforge recipes`` lists and prints the shipped recipes; every verb that reads a recipe
takes a shipped recipe's name; a built wheel carries the recipes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kdforge.cli import main
from kdforge.config.recipes import RECIPES_DIR, list_recipes

REPO = Path(__file__).resolve().parents[2]
KD = "cifar100/kd/resnet32x4_resnet8x4"


def _error(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    message = str(info.value.code)
    assert message.startswith(f"kdforge {argv[0]}: error: ") and "\n" not in message, message
    return message


def test_listing_shows_name_number_and_source(capsys):
    main(["recipes"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["recipe", "reported", "follows"]
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert set(rows) == {i.name for i in list_recipes()}
    assert rows[KD].split() == [KD, "KD", "73.33", "mdistiller", "configs/cifar100/kd.yaml"]
    assert rows["imagenet/cakd/vit_ti16_resnet18"].split()[1:] == ["-", "-"]
    assert lines[-1].startswith(f"{len(rows)} recipe(s)")


def test_filters_narrow_the_listing(capsys):
    main(["recipes", "coco/crosskd_pkd", "gfl"])
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:-1]]
    assert names == ["coco/crosskd_pkd/gfl_r101_gfl_r50_1x"]
    assert "no shipped recipe name contains 'nope'" in _error(["recipes", "cifar100", "nope"])
    assert "all of coco cifar100" in _error(["recipes", "coco", "cifar100"])


@pytest.mark.parametrize("name", [KD, f"{KD}.yaml"])
def test_show_prints_the_yaml(name, capsys):
    main(["recipes", "show", name])
    assert capsys.readouterr().out == (RECIPES_DIR / f"{KD}.yaml").read_text()


def test_show_errors():
    message = _error(["recipes", "show", "cifar100/kd/resnet32x4_resnet8"])
    assert f"no shipped recipe is named 'cifar100/kd/resnet32x4_resnet8'; close matches: {KD}" in (
        message
    )
    assert "give one recipe name" in _error(["recipes", "show"])
    assert "give one recipe name" in _error(["recipes", "show", KD, KD])


# every verb that reads a recipe, with the options it requires
VERBS = [
    ["train", "RECIPE"],
    ["eval", "RECIPE", "--checkpoint", "x.pt"],
    ["check-data", "RECIPE"],
    ["cache-teacher", "RECIPE"],
    ["probe", "RECIPE"],
    ["visualize", "features", "RECIPE", "--checkpoint", "x.pt", "--images", "a.png"],
    ["confusion-matrix", "RECIPE", "--checkpoint", "x.pt"],
    ["robustness", "RECIPE", "--checkpoint", "x.pt"],
]


@pytest.mark.parametrize("verb", VERBS, ids=lambda argv: argv[0])
def test_every_recipe_verb_resolves_shipped_names(verb, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    typo = "cifar100/kd/resnet32x4_resnet9x4"
    message = _error([typo if word == "RECIPE" else word for word in verb])
    assert f"{typo!r} does not exist and no shipped recipe has that name" in message
    assert f"close matches: {KD}" in message


def test_train_by_name_runs_in_the_working_folder(tmp_path, monkeypatch, capsys):
    """The recipe comes from the package; its teacher path and the run folder are relative
    to the folder the command runs in."""
    from kdforge.data import write_fake_cifar

    write_fake_cifar(tmp_path / "cifar", "cifar100", num_train=8, num_test=4)
    monkeypatch.chdir(tmp_path)
    data = [f"data.root={tmp_path / 'cifar'}", "data.num_workers=0", "data.batch_size=4"]
    message = _error(["train", KD, "--set", *data])
    assert "'download_ckpts/cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth'" in message
    run = ["teacher.pretrained=null", "train.check_teacher=false", "train.max_steps=1"]
    main(["train", KD, "--set", *data, *run, "train.max_eval_batches=1", "train.name=run"])
    assert "done: " in capsys.readouterr().out
    assert (tmp_path / "runs" / "run" / "config.yaml").is_file()


def test_a_built_wheel_carries_every_recipe_and_readme(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO / "kdforge", src / "kdforge", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, "--no-index", "-w", str(tmp_path / "dist"), str(src)], check=True)
    (wheel,) = (tmp_path / "dist").glob("kdforge-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    shipped = [p for p in RECIPES_DIR.rglob("*") if p.suffix in (".yaml", ".md")]
    assert shipped and all(
        p.relative_to(RECIPES_DIR.parents[1]).as_posix() in inside for p in shipped
    )
