"""The Swin recipes (RetinaNet Swin-T FPN and CrossKD's Swin-T -> R-50 row) keep the official
numbers and settings, and each trains two steps on shapes with a real Swin-T."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kdforge.config import load_config

COCO = Path(__file__).resolve().parents[1] / "kdforge" / "recipes" / "coco"
TEACHER = "retinanet/retinanet_swin-t-p4-w7_fpn_1x.yaml"
CROSSKD = "crosskd/retinanet_swin-t_retinanet_r50_1x.yaml"
# both inherit everything but the model (and the loss) from RetinaNet R-50 1x
BASELINE = "retinanet/retinanet_r50_fpn_1x.yaml"


def test_swin_recipes_are_the_shipped_ones() -> None:
    assert {str(p.relative_to(COCO)) for p in COCO.rglob("*swin*.yaml")} == {TEACHER, CROSSKD}


def test_teacher_recipe_keeps_the_config() -> None:
    lines = (COCO / TEACHER).read_text().splitlines()
    assert lines[0].startswith(
        "# CrossKD configs/retinanet/retinanet_swin-t-p4-w7_fpn_1x_coco.py: box AP 37.3 (CrossKD"
    )
    assert len(lines) <= 50
    cfg, base = load_config(COCO / TEACHER), load_config(COCO / BASELINE)
    assert cfg.teacher.name is None and cfg.student.name == "retinanet_swin_t_fpn"
    assert OmegaConf.to_container(cfg.student.kwargs) == {
        "backbone_pretrained": "download_ckpts/imagenet/swin_tiny_patch4_window7_224.pth"
    }
    # the config inherits retinanet_r50_fpn_1x_coco.py's SGD 0.01 / wd 1e-4 and 1x schedule
    assert cfg.optim == base.optim and cfg.schedule == base.schedule and cfg.data == base.data
    assert cfg.optim.name == "sgd" and cfg.optim.lr == 0.01 and cfg.optim.weight_decay == 1e-4
    assert OmegaConf.to_container(cfg.loss) == {"detection": {}}


def test_crosskd_recipe_keeps_the_official_row() -> None:
    lines = (COCO / CROSSKD).read_text().splitlines()
    assert lines[0] == (
        "# CrossKD configs/crosskd/crosskd_r50_retinanet_swint_fpn_1x_coco.py: box AP teacher "
        "37.3, student 36.5, CrossKD 38.0 (CrossKD README)."
    )
    assert len(lines) <= 50
    cfg, base = load_config(COCO / CROSSKD), load_config(COCO / BASELINE)
    assert cfg.teacher.name == "retinanet_swin_t_fpn"
    assert (
        cfg.teacher.pretrained == "checkpoints/coco/retinanet_swin-t-p4-w7_fpn_1x_coco.safetensors"
    )
    student = OmegaConf.to_container(cfg.student)
    assert student["kwargs"].pop("add_extra_convs") == "on_output"  # P6 from P5, as official
    assert student == OmegaConf.to_container(base.student)
    # reused_teacher_head_idx=3; KDQualityFocalLoss beta 1 w 1, GIoU w 1: the term's defaults
    assert OmegaConf.to_container(cfg.loss) == {
        "detection": {},
        "crosskd": {"type": "crosskd", "stage": 3},
    }
    assert cfg.optim == base.optim and cfg.schedule == base.schedule and cfg.data == base.data


@pytest.mark.parametrize("name", [TEACHER, CROSSKD])
def test_recipe_trains_two_steps(name: str, shapes_data: tuple[str, ...], recipe_run) -> None:
    # CrossKD: a real Swin-T teacher; a smaller CNN student with the same FPN width
    student = ["student.name=retinanet_r18_fpn"] if name == CROSSKD else []
    metrics = recipe_run.trainer(COCO / name, shapes_data, *student).fit()
    assert 0.0 <= metrics["AP"] <= 1.0
    record = recipe_run.last_record()
    expected = {"detection.cls", "detection.bbox"}
    if name == CROSSKD:
        expected |= {"crosskd.cls", "crosskd.reg"}
    assert expected <= set(record)
    assert all(math.isfinite(record[k]) for k in expected)
