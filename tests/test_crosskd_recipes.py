"""The CrossKD COCO recipes keep the official numbers and each trains two steps on shapes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kdforge.config import load_config

COCO = Path(__file__).resolve().parents[1] / "kdforge" / "recipes" / "coco"
# stem -> (official config stem, AP teacher/student/CrossKD/CrossKD+PKD (None: not in the
# README), teacher, student, stage, crosskd loss weights, PKD weight, epochs)
ROWS = {
    "gfl_r101_gfl_r50_1x": (
        "crosskd_r50_gflv1_r101-2x-ms_fpn_1x_coco",
        (44.9, 40.2, 43.7, 43.9),
        "gfl_r101_fpn",
        "gfl_r50_fpn",
        3,
        {"loss_reg_weight": 4.0},
        6.0,
        12,
    ),
    "retinanet_r101_retinanet_r50_2x": (
        "crosskd_r50_retinanet_r101_fpn_2x_coco",
        (38.9, 37.4, 39.7, 39.8),
        "retinanet_r101_fpn",
        "retinanet_r50_fpn",
        3,
        {},
        2.0,
        24,
    ),
    "fcos_r101_fcos_r50_ms-2x": (
        "crosskd_r50_fcos_r101-2x-ms_caffe_fpn_gn-head_2x_ms_coco",
        (40.8, 38.5, 41.1, 41.3),
        "fcos_r101_fpn",
        "fcos_r50_fpn",
        2,
        {"loss_cls_weight": 0.4, "loss_reg_weight": 0.75},
        2.0,
        24,
    ),
    "atss_r101_atss_r50_1x": (
        "crosskd_r50_atss_r101_fpn_1x_coco",
        (41.5, 39.4, 41.8, 41.8),
        "atss_r101_fpn",
        "atss_r50_fpn",
        3,
        {"loss_center_weight": 1.0},
        1.0,
        12,
    ),
    "gfl_r50_gfl_r18_1x": (
        "crosskd_r18_gflv1_r50_fpn_1x_coco",
        (40.2, None, None, None),
        "gfl_r50_fpn",
        "gfl_r18_fpn",
        3,
        {"loss_reg_weight": 4.0},
        None,
        12,
    ),
    "retinanet_r50_retinanet_r18_1x": (
        "crosskd_r18_retinanet_r50_fpn_1x_coco",
        (36.5, None, None, None),
        "retinanet_r50_fpn",
        "retinanet_r18_fpn",
        3,
        {},
        None,
        12,
    ),
}
RECIPES = [f"crosskd/{s}.yaml" for s in ROWS] + [
    f"crosskd_pkd/{s}.yaml" for s, row in ROWS.items() if row[6] is not None
]
# the student's own recipe (same data, optimizer and schedule), where one is shipped
BASELINES = {
    "gfl_r101_gfl_r50_1x": "gfl/gfl_r50_fpn_1x.yaml",
    "retinanet_r101_retinanet_r50_2x": "retinanet/retinanet_r50_fpn_2x.yaml",
    "fcos_r101_fcos_r50_ms-2x": "fcos/fcos_r50_fpn_ms-2x.yaml",
    "atss_r101_atss_r50_1x": "atss/atss_r50_fpn_1x.yaml",
}


def test_every_crosskd_recipe_is_shipped() -> None:
    shipped = {str(p.relative_to(COCO)) for p in COCO.glob("crosskd*/*.yaml")}
    shipped = {name for name in shipped if "swin" not in name}  # tests/test_swin_recipes.py
    assert shipped == set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_keeps_the_official_numbers(name: str) -> None:
    folder, stem = name.removesuffix(".yaml").split("/")
    official, ap, teacher, student, stage, weights, pkd, epochs = ROWS[stem]
    with_pkd = folder == "crosskd_pkd"
    lines = (COCO / name).read_text().splitlines()
    source = f"crosskd+pkd/crosskd+pkd{official[7:]}" if with_pkd else f"crosskd/{official}"
    assert lines[0].startswith(f"# CrossKD configs/{source}.py: box AP teacher {ap[0]}")
    if ap[1] is not None:
        numbers = f"student {ap[1]}, CrossKD {ap[2]}, CrossKD+PKD {ap[3]} (CrossKD README)."
        assert lines[0].endswith(numbers)
    assert len(lines) <= 50
    cfg = load_config(COCO / name)
    assert cfg.task == "detection" and cfg.teacher.name == teacher
    assert cfg.student.name == student and cfg.student.pretrained is None
    assert cfg.teacher.pretrained.startswith("checkpoints/coco/")
    assert cfg.teacher.pretrained.endswith("_coco.safetensors")
    loss = OmegaConf.to_container(cfg.loss)
    assert loss.pop("detection") == {}
    assert loss.pop("crosskd") == {"type": "crosskd", "stage": stage, **weights}
    assert loss == ({"pkd": {"type": "pkd", "weight": pkd}} if with_pkd else {})
    assert cfg.schedule.epochs == epochs and cfg.optim.lr == 0.01
    assert cfg.optim.base_batch_size == 16 and cfg.optim.weight_decay == 1e-4
    kind = student.split("_")[0]
    if stem in BASELINES:  # everything but the teacher and the loss as the student's recipe
        base = load_config(COCO / BASELINES[stem])
        assert cfg.optim == base.optim and cfg.schedule == base.schedule
        assert cfg.data.options == base.data.options
        student = OmegaConf.to_container(cfg.student)
        if kind == "retinanet":  # the official student's P6 reads P5, mmdetection's reads C5
            assert student["kwargs"].pop("add_extra_convs") == "on_output"
        assert student == OmegaConf.to_container(base.student)
        assert cfg.data.batch_size == (8 if stem.startswith("atss") else 2)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_two_steps(name: str, shapes_data: tuple[str, ...], recipe_run) -> None:
    cfg = load_config(COCO / name)
    kind = cfg.student.name.split("_")[0]
    small = "{fpn_channels: 32, feat_channels: 64}"  # narrow R-18 (GN 32 on 1x1 P7 needs 64)
    overrides = [
        f"teacher.name={kind}_r18_fpn",
        f"student.name={kind}_r18_fpn",
        f"teacher.kwargs={small}",
        f"student.kwargs={small}",
        "student.kwargs.backbone_pretrained=null",  # no ImageNet weights (after the kwargs)
    ]
    if "train_scales" in cfg.data.options:
        overrides.append("data.options.train_scales=null")
    metrics = recipe_run.trainer(COCO / name, shapes_data, *overrides).fit()
    assert 0.0 <= metrics["AP"] <= 1.0
    record = recipe_run.last_record()
    expected = {"crosskd.cls", "crosskd.reg", "detection.cls"}
    if kind == "atss":
        expected.add("crosskd.center")
    if "pkd" in cfg.loss:
        expected.add("pkd")
    assert expected <= set(record)
    assert all(math.isfinite(record[k]) for k in expected)
