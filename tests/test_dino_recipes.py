"""The DINO recipes (mmdetection baseline, the CanKD teacher, CanKD's DINO row) keep their
numbers and settings, and each trains two steps on shapes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from kdforge.config import load_config
from kdforge.errors import ConfigError

COCO = Path(__file__).resolve().parents[1] / "kdforge" / "recipes" / "coco"
NLKD = "cankd/nlkd_dino-r101_dino-r50_12e_coco.yaml"
# recipe -> (first line, student, teacher)
RECIPES = {
    "dino/dino-4scale_r50_8xb2-12e_coco.yaml": (
        "# mmdetection configs/dino/dino-4scale_r50_8xb2-12e_coco.py: box AP 49.0 in its README.",
        "dino_4scale_r50",
        None,
    ),
    "dino/dino-4scale_r101_8xb2-12e_coco.yaml": (
        "# DINO-4scale R-101: box AP 50.4 in the CanKD README (the teacher of its DINO row).",
        "dino_4scale_r101",
        None,
    ),
    NLKD: (
        "# CanKD configs/distill/mmdet/nlkd/nlkd_dino-r101_dino-r50_12e_coco.py: box AP 49.7 "
        "in its README.",
        "dino_4scale_r50",
        "dino_4scale_r101",
    ),
}
LEVELS = ["neck.convs.0", "neck.convs.1", "neck.convs.2"]


def test_every_dino_recipe_is_checked():
    shipped = {str(p.relative_to(COCO)) for p in COCO.rglob("*.yaml") if "dino" in p.name}
    shipped = {p for p in shipped if "grounding" not in p and "ggdino" not in p}  # their own
    assert shipped == set(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_settings(name: str):
    first, student, teacher = RECIPES[name]
    lines = (COCO / name).read_text().splitlines()
    assert lines[0] == first and len(lines) <= 50
    cfg = load_config(COCO / name)
    assert cfg.task == "detection" and cfg.data.name == "coco" and cfg.data.batch_size == 2
    options = OmegaConf.to_container(cfg.data.options)
    assert options["augment"] == "detr" and options["filter_empty_gt"] is False
    assert options["size_divisor"] == 1  # mmdetection's pad_size_divisor
    assert options["scale"] == [1333, 800]  # mmdetection's test Resize
    assert cfg.student.name == student and cfg.teacher.name == teacher
    depth = student.removeprefix("dino_4scale_r")
    assert cfg.student.kwargs.backbone_pretrained.startswith(
        f"download_ckpts/imagenet/resnet{depth}"
    )
    optim, schedule = cfg.optim, cfg.schedule
    assert (optim.name, optim.lr, optim.base_batch_size, optim.weight_decay) == (
        "adamw", 1e-4, 16, 1e-4
    )  # fmt: skip
    assert dict(optim.lr_mults) == {"backbone": 0.1} and optim.clip_grad_norm == 0.1
    assert (schedule.name, schedule.epochs, list(schedule.milestones)) == ("multistep", 12, [11])
    assert schedule.gamma == 0.1 and schedule.warmup_iters == 0 and schedule.warmup_epochs == 0
    terms = OmegaConf.to_container(cfg.loss)
    if teacher is None:
        assert terms == {"detection": {}} and "frozen_stages" not in cfg.student.kwargs
    else:  # the official student leaves frozen_stages at its default, -1
        assert cfg.student.kwargs.frozen_stages == -1 and cfg.teacher.truncate
        cankd = {"student_layers": LEVELS, "weight": 10.0, "init_from_teacher": ["neck"]}
        assert terms == {"detection": {}, "cankd": cankd}
    with pytest.raises(ConfigError, match="optim.lr_mults"):
        load_config(COCO / name, ["optim.lr_mults={backbone: -1}"])


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_trains_two_steps(name: str, shapes_data: tuple[str, ...], recipe_run):
    trainer = recipe_run.trainer(
        COCO / name,
        shapes_data,
        "data.options.augment=resize_flip",  # 96 px images, not DETR's 480-1333
        "student.kwargs.num_queries=100",  # 96 px images give 193 encoder positions < 900
        *(["teacher.kwargs.num_queries=100"] if RECIPES[name][2] else []),
    )
    backbone = {id(p) for n, p in trainer.distiller.named_parameters() if ".backbone." in n}
    for group in trainer.optimizer.param_groups:  # 1e-4 at 16 images -> 1.25e-5 at 2
        lr = 1e-4 * 2 / 16 * (0.1 if id(group["params"][0]) in backbone else 1.0)
        assert group["initial_lr"] == pytest.approx(lr)
        assert all((id(p) in backbone) == (lr < 1e-5) for p in group["params"])
    if RECIPES[name][2] is not None:  # the student's neck starts as the teacher's
        student, teacher = trainer.distiller.student, trainer.distiller.teacher
        for key, value in student.neck.state_dict().items():
            assert torch.equal(value, teacher.neck.state_dict()[key]), key
    assert 0.0 <= trainer.fit()["AP"] <= 1.0
    record = recipe_run.last_record()
    for key in ["loss_cls", "dn_loss_iou", "enc_loss_bbox"]:
        assert any(math.isfinite(v) for k, v in record.items() if k.endswith(key)), key
    if RECIPES[name][2] is not None:
        assert all(math.isfinite(record[f"cankd.{level}"]) for level in LEVELS)
