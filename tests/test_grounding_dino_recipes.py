"""The Grounding DINO recipes (mmdetection R-50 from scratch, the CanKD R-101 teacher, CanKD's
Grounding DINO row) keep their numbers and settings, and each trains two steps on shapes with
the tiny BERT of tests/conftest.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kdforge.config import load_config
from kdforge.data.shapes import SHAPE_CLASSES, write_shapes_dataset
from kdforge.engine.build import build_trainer

COCO = Path(__file__).resolve().parents[1] / "kdforge" / "recipes" / "coco"
NLKD = "cankd/nlkd_ggdino-r101_ggdino-r50_1x_coco.yaml"
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
    assert cfg.task == "detection" and cfg.data.name == "coco" and cfg.data.batch_size == 2
    options = OmegaConf.to_container(cfg.data.options)
    assert options["augment"] == "detr" and options["filter_empty_gt"] is False
    assert options["size_divisor"] == 1  # mmdetection's pad_size_divisor
    assert options["scale"] == [1333, 800]
    assert cfg.student.name == student and cfg.teacher.name == teacher
    kwargs = cfg.student.kwargs
    depth = student.removeprefix("grounding_dino_r")
    assert kwargs.backbone_pretrained.startswith(f"download_ckpts/imagenet/resnet{depth}")
    assert kwargs.text_folder == "download_ckpts/bert-base-uncased"
    names = list(kwargs.class_names)
    assert len(set(names)) == 80 and names[:8] == COCO_HEAD and names[-4:] == COCO_TAIL
    assert "frozen_stages" not in kwargs  # mmdetection's 1, the zoo default
    optim, schedule = cfg.optim, cfg.schedule
    assert (optim.name, optim.lr, optim.base_batch_size, optim.weight_decay) == (
        "adamw", 1e-4, 16, 1e-4
    )  # fmt: skip
    assert dict(optim.lr_mults) == {"backbone": 0.1} and optim.clip_grad_norm == 0.1
    assert (schedule.name, schedule.epochs, list(schedule.milestones)) == ("multistep", 12, [11])
    assert schedule.gamma == 0.1 and schedule.warmup_iters == 0 and schedule.warmup_epochs == 0
    terms = OmegaConf.to_container(cfg.loss)
    if teacher is None:
        assert terms == {"detection": {}}
    else:
        assert terms == {"detection": {}, "cankd": {"student_layers": LEVELS, "weight": 10.0}}
        assert cfg.teacher.truncate and list(cfg.teacher.kwargs.class_names) == names
        assert cfg.teacher.kwargs.load_text_weights is False  # BERT comes with the checkpoint


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    return write_shapes_dataset(root, num_train=4, num_val=2, image_size=(96, 96))


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_trains_two_steps(name: str, shapes_root: Path, tiny_bert: Path, tmp_path: Path):
    shapes = "[" + ",".join(SHAPE_CLASSES) + "]"
    model = [
        f"text_folder={tiny_bert}",
        f"class_names={shapes}",
        "num_queries=100",  # 96 px images give 193 encoder positions < 900
        "num_cp=0",
    ]
    has_teacher = RECIPES[name][2] is not None
    teacher = [f"teacher.kwargs.{m}" for m in model] + ["train.check_teacher=false"]
    overrides = [
        f"data.root={shapes_root}",
        "data.options.train_split=train",
        "data.options.val_split=val",
        "data.options.scale=[96,96]",
        "data.options.augment=resize_flip",  # 96 px images, not DETR's 480-1333
        "data.num_workers=0",
        "teacher.pretrained=null",
        "student.kwargs.backbone_pretrained=null",  # no ImageNet weights offline
        *(f"student.kwargs.{m}" for m in model),
        *(teacher if has_teacher else []),
        "train.max_steps=2",
        "train.max_eval_batches=1",
        f"train.out_dir={tmp_path}",
        "train.name=run",
    ]
    trainer = build_trainer(load_config(COCO / name, overrides), "test")
    student = trainer.distiller.student
    slow = {id(p) for n, p in student.named_parameters() if "backbone" in n}
    bert = {id(p) for p in student.language_model.parameters()}
    assert bert and bert <= slow  # BERT's language_backbone matches "backbone", as mmengine's
    for group in trainer.optimizer.param_groups:  # 1e-4 at 16 images -> 1.25e-5 at 2
        lr = 1e-4 * 2 / 16 * (0.1 if id(group["params"][0]) in slow else 1.0)
        assert group["initial_lr"] == pytest.approx(lr)
        assert all((id(p) in slow) == (lr < 1e-5) for p in group["params"])
    assert 0.0 <= trainer.fit()["AP"] <= 1.0
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    train = [r for r in map(json.loads, lines) if r["kind"] == "train"]
    assert train and train[-1]["step"] == 2
    for key in ["loss_cls", "dn_loss_iou", "enc_loss_bbox"]:
        assert any(math.isfinite(v) for k, v in train[-1].items() if k.endswith(key)), key
    if has_teacher:
        assert all(math.isfinite(train[-1][f"cankd.{level}"]) for level in LEVELS)
