"""The Grounding DINO recipes (mmdetection R-50 from scratch, the CanKD R-101 teacher, CanKD's
Grounding DINO row) keep their numbers and settings, and each trains two steps on shapes with
the tiny BERT of tests/conftest.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kdforge.config import load_config
from kdforge.data.shapes import SHAPE_CLASSES

COCO = Path(__file__).resolve().parents[1] / "kdforge" / "recipes" / "coco"
NLKD = "cankd/nlkd_ggdino-r101_ggdino-r50_1x_coco.yaml"
DINO = "dino/dino-4scale_r50_8xb2-12e_coco.yaml"
# recipe -> (first line, student, teacher)
RECIPES = {
    "grounding_dino/grounding_dino_r50_scratch_8xb2_1x_coco.yaml": (
        "# mmdetection configs/grounding_dino/grounding_dino_r50_scratch_8xb2_1x_coco.py: "
        "box AP 48.9 in its README.",
        "grounding_dino_r50",
        None,
    ),
    "grounding_dino/grounding_dino_r101_scratch_1x_coco.yaml": (
        "# Grounding DINO R-101 from scratch: box AP 50.0 in the CanKD README (the teacher of "
        "its row).",
        "grounding_dino_r101",
        None,
    ),
    NLKD: (
        "# CanKD configs/distill/mmdet/nlkd/nlkd_ggdino-r101_ggdino-r50_1x_coco.py: box AP 49.8 "
        "in its README.",
        "grounding_dino_r50",
        "grounding_dino_r101",
    ),
}
LEVELS = ["neck.convs.0", "neck.convs.1", "neck.convs.2"]
# mmdetection's CocoDataset classes, in label order
COCO_HEAD = ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck"]
COCO_TAIL = ["scissors", "teddy bear", "hair drier", "toothbrush"]


def test_every_grounding_dino_recipe_is_checked():
    shipped = {str(p.relative_to(COCO)) for p in COCO.rglob("*.yaml")}
    assert {p for p in shipped if "grounding" in p or "ggdino" in p} == set(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_settings(name: str):
    first, student, teacher = RECIPES[name]
    lines = (COCO / name).read_text().splitlines()
    assert lines[0] == first and len(lines) <= 52
    cfg = load_config(COCO / name)
    assert cfg.task == "detection" and cfg.student.name == student and cfg.teacher.name == teacher
    # the data (COCO, 2 images, DETR augmentation, empty images kept, no padding), AdamW and the
    # 12e schedule are DINO's, whose values tests/test_dino_recipes.py checks
    dino = load_config(COCO / DINO)
    assert cfg.data == dino.data and cfg.optim == dino.optim and cfg.schedule == dino.schedule
    kwargs = cfg.student.kwargs
    depth = student.removeprefix("grounding_dino_r")
    assert kwargs.backbone_pretrained.startswith(f"download_ckpts/imagenet/resnet{depth}")
    assert kwargs.text_folder == "download_ckpts/bert-base-uncased"
    names = list(kwargs.class_names)
    assert len(set(names)) == 80 and names[:8] == COCO_HEAD and names[-4:] == COCO_TAIL
    assert "frozen_stages" not in kwargs  # mmdetection's 1, the zoo default
    terms = OmegaConf.to_container(cfg.loss)
    if teacher is None:
        assert terms == {"detection": {}}
    else:
        assert terms == {"detection": {}, "cankd": {"student_layers": LEVELS, "weight": 10.0}}
        assert cfg.teacher.truncate and list(cfg.teacher.kwargs.class_names) == names
        assert cfg.teacher.kwargs.load_text_weights is False  # BERT comes with the checkpoint


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_trains_two_steps(
    name: str, shapes_data: tuple[str, ...], tiny_bert: Path, recipe_run
):
    shapes = "[" + ",".join(SHAPE_CLASSES) + "]"
    model = [
        f"text_folder={tiny_bert}",
        f"class_names={shapes}",
        "num_queries=100",  # 96 px images give 193 encoder positions < 900
        "num_cp=0",
    ]
    has_teacher = RECIPES[name][2] is not None
    trainer = recipe_run.trainer(
        COCO / name,
        shapes_data,
        "data.options.augment=resize_flip",  # 96 px images, not DETR's 480-1333
        *(f"student.kwargs.{m}" for m in model),
        *(f"teacher.kwargs.{m}" for m in model if has_teacher),
    )
    student = trainer.distiller.student
    slow = {id(p) for n, p in student.named_parameters() if "backbone" in n}
    bert = {id(p) for p in student.language_model.parameters()}
    assert bert and bert <= slow  # BERT's language_backbone matches "backbone", as mmengine's
    for group in trainer.optimizer.param_groups:  # 1e-4 at 16 images -> 1.25e-5 at 2
        lr = 1e-4 * 2 / 16 * (0.1 if id(group["params"][0]) in slow else 1.0)
        assert group["initial_lr"] == pytest.approx(lr)
        assert all((id(p) in slow) == (lr < 1e-5) for p in group["params"])
    assert 0.0 <= trainer.fit()["AP"] <= 1.0
    record = recipe_run.last_record()
    for key in ["loss_cls", "dn_loss_iou", "enc_loss_bbox"]:
        assert any(math.isfinite(v) for k, v in record.items() if k.endswith(key)), key
    if has_teacher:
        assert all(math.isfinite(record[f"cankd.{level}"]) for level in LEVELS)
