"""Shipped recipes by name: a file that exists wins, then the shipped recipe, else one line
naming close matches; what each recipe follows and reports, read from its header and the
README tables next to it."""

from __future__ import annotations

import pytest

from kdforge.config import ConfigError, load_config
from kdforge.config._recipe_notes import readme_numbers
from kdforge.config.recipes import (
    RECIPES_DIR,
    find_recipe,
    list_recipes,
    recipe_names,
    recipe_path,
    resolve_recipe,
)

KD = "cifar100/kd/resnet32x4_resnet8x4"


def test_names_are_the_yaml_files_without_suffix():
    names = recipe_names()
    assert KD in names and names == sorted(names)
    assert {RECIPES_DIR / f"{n}.yaml" for n in names} == set(RECIPES_DIR.rglob("*.yaml"))


@pytest.mark.parametrize("given", [KD, f"{KD}.yaml", f"configs/{KD}.yaml", f"configs/{KD}"])
def test_a_shipped_name_loads_from_any_folder(given, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_recipe(given) == RECIPES_DIR / f"{KD}.yaml"
    cfg = load_config(given)
    assert (cfg.teacher.name, cfg.student.name) == ("resnet32x4", "resnet8x4")
    # weights stay relative to the folder the command runs in
    assert cfg.teacher.pretrained.startswith("download_ckpts/")


def test_a_file_of_that_name_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = tmp_path / f"{KD}.yaml"
    local.parent.mkdir(parents=True)
    local.write_text("student: {name: resnet8}\n")
    assert load_config(f"{KD}.yaml").student.name == "resnet8"
    assert load_config(str(local)).student.name == "resnet8"
    assert load_config(KD).student.name == "resnet8x4"  # no file of exactly that name


def test_a_folder_of_that_name_is_not_replaced(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / KD).mkdir(parents=True)
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(KD)


def test_unknown_name_is_one_line_with_close_matches(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config("cifar100/kd/resnet32x4_resnet9x4")
    message = str(info.value)
    assert "\n" not in message
    assert "does not exist and no shipped recipe has that name" in message
    assert f"close matches: {KD}" in message and "kdforge recipes" in message
    with pytest.raises(ConfigError, match="cifar100/dkd/resnet32x4_resnet8x4"):
        recipe_path("resnet32x4_resnet8x4")  # the file name alone: every folder holding it
    assert find_recipe("resnet32x4_resnet8x4") is None


def test_filters_keep_names_containing_every_word():
    infos = list_recipes("coco/crosskd", "retinanet")
    assert infos and all("coco/crosskd" in i.name and "retinanet" in i.name for i in infos)
    assert {i.name for i in infos} < {i.name for i in list_recipes("coco/crosskd")}
    assert list_recipes("CIFAR100/KD/") == list_recipes("cifar100/kd/")
    with pytest.raises(ConfigError, match="no shipped recipe name contains 'cifar1000'"):
        list_recipes("cifar1000")


MMDET, MMSEG, CANKD = "mmdetection configs/", "mmsegmentation configs/", "CanKD configs/distill/"
# name -> (source, reported)
EXPECTED = {
    # a README table: the column named as the recipe's folder
    KD: ("mdistiller configs/cifar100/kd.yaml", "KD 73.33"),
    "cifar100/cat_kd/vgg13_vgg8": (
        "official configs/cifar100/CAT_KD/vgg13_vgg8.yaml",
        "CAT-KD 74.65",
    ),
    "imagenet/cat_kd/resnet34_resnet18": (
        "official configs/imagenet/CAT-KD/r34_r18.yaml",
        "CAT-KD 71.26 / 90.45",
    ),
    # a README table: the row's only numeric cell (the recipe as a ../ path)
    "coco/crosskd_pkd/gfl_r101_gfl_r50_1x": (
        "CrossKD configs/crosskd+pkd/crosskd+pkd_r50_gflv1_r101-2x-ms_fpn_1x_coco.py",
        "AP 43.9",
    ),
    "imagenet/cakd/resnet50_baseline": (
        "CAKD/experiments/run_baseline.sh",
        "top-1 / top-5 73.82 / 91.97",
    ),
    # the header's "<metric> <value> in its README" wins over a README row (CrossKD's 44.9)
    "coco/gfl/gfl_r101_fpn_ms-2x": (f"{MMDET}gfl/gfl_r101_fpn_ms-2x_coco.py", "box AP 44.7"),
    "coco/cankd/cankd-dagger_retinanet_r101_retinanet_r50_fpn_2x": (
        f"{CANKD}mmdet/nlkd/nlkdIN_dagger_retina_r101_retina_r50_2x_coco.py",
        "box AP 39.8",
    ),
    "cityscapes/pspnet/pspnet_r18-d8_4xb2-80k_512x1024": (
        f"{MMSEG}pspnet/pspnet_r18-d8_4xb2-80k_cityscapes-512x1024.py",
        "mIoU 74.87",
    ),
    # no number: the header says "box AP not in its README", and no README row has it
    "coco/cankd/cankd_gfl_r101_retinanet_r50_fpn_1x": (
        f"{CANKD}mmdet/nlkd/nlkdIN_fpn_gfl-r101_retina-r50_1x_coco.py",
        None,
    ),
    # neither a source file nor a number
    "imagenet/cakd/vit_ti16_resnet18": (None, None),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_source_and_reported_number(name):
    (info,) = [i for i in list_recipes(name) if i.name == name]
    assert (info.source, info.reported) == EXPECTED[name]


def test_every_readme_number_is_in_the_recipe_header():
    """The two places a paper's number is written agree wherever both give it."""
    infos = [i for f in ("cifar100/kd/", "cifar100/dkd/", "coco/crosskd/") for i in list_recipes(f)]
    for info in [i for i in infos if "_r18_" not in i.name]:  # R-18 rows: paper only
        header = "\n".join(line for line in info.path.read_text().splitlines() if line[:1] == "#")
        assert info.reported, info.name
        number = info.reported.split()[-1]
        if info.name == "cifar100/dkd/wrn_40_2_wrn_16_2":  # mdistiller: 76.23 (cifar100 README)
            number = "76.23"
        assert number in header, (info.name, info.reported)


def test_every_table_row_recipe_gets_the_right_column(tmp_path):
    (tmp_path / "kd").mkdir()
    (tmp_path / "other").mkdir()
    for path in ["kd/a.yaml", "kd/b.yaml", "other/c.yaml", "other/d.yaml", "other/e.yaml"]:
        (tmp_path / path).write_text("student: {name: resnet8}\n")
    readme = tmp_path / "kd" / "README.md"
    readme.write_text(
        "| row | T | KD | recipe |\n|---|---|---|---|\n| x | 1.5 | 2.5 | `a.yaml` |\n\n"
        "| row | schedule | AP | recipe |\n|---|---|---|---|\n"
        "| y | 2x | 3.5 | `../other/c.yaml` |\n| z | 1x | – | `../other/d.yaml` |\n"
        "| w | 4.5 | 5.5 | `../other/e.yaml` |\n| v | 1x | 6.5 | issue 17 |\n"
    )
    assert readme_numbers(readme, tmp_path) == {"kd/a": "KD 2.5", "other/c": "AP 3.5"}
