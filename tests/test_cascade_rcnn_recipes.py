"""The Cascade Mask R-CNN baseline recipe keeps mmdetection's config and numbers and trains two
steps on the shapes data with instance masks (box and mask losses of every stage)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kdforge.config import load_config

FOLDER = Path(__file__).resolve().parents[1] / "kdforge" / "recipes" / "coco" / "cascade_rcnn"
RECIPE = FOLDER / "cascade-mask-rcnn_x101-64x4d_fpn_1x.yaml"

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools on numpy 2


def test_the_folder_holds_the_baseline_only():
    assert sorted(p.name for p in FOLDER.glob("*.yaml")) == [RECIPE.name]


def test_recipe_keeps_mmdetection_config_and_numbers():
    lines = RECIPE.read_text().splitlines()
    assert lines[0] == (
        "# mmdetection configs/cascade_rcnn/cascade-mask-rcnn_x101-64x4d_fpn_1x_coco.py: "
        "box AP 45.3, mask AP 39.2 in its README."
    )
    assert len(lines) <= 50
    cfg = load_config(RECIPE)
    assert cfg.task == "detection" and cfg.teacher.name is None
    assert cfg.data.name == "coco" and cfg.data.batch_size == 2 and cfg.data.eval_batch_size == 1
    assert OmegaConf.to_container(cfg.data.options) == {
        "train_split": "train2017",
        "val_split": "val2017",
        "scale": [1333, 800],  # coco_instance.py: Resize keep_ratio, RandomFlip 0.5
        "with_masks": True,  # LoadAnnotations(with_mask=True)
    }
    assert cfg.student.name == "cascade_mask_rcnn_x101_64x4d_fpn"
    assert OmegaConf.to_container(cfg.student.kwargs) == {  # open-mmlab://resnext101_64x4d
        "backbone_pretrained": "download_ckpts/imagenet/resnext101_64x4d-ee2c6f71.pth"
    }
    assert OmegaConf.to_container(cfg.loss) == {"detection": {}}
    optim, schedule = cfg.optim, cfg.schedule  # schedule_1x.py
    assert (optim.name, optim.lr, optim.base_batch_size) == ("sgd", 0.02, 16)
    assert optim.momentum == 0.9 and optim.weight_decay == 1e-4 and optim.clip_grad_norm is None
    assert schedule.name == "multistep" and schedule.epochs == 12
    assert list(schedule.milestones) == [8, 11] and schedule.gamma == 0.1
    assert schedule.warmup_mode == "linear" and schedule.warmup_iters == 500
    assert schedule.warmup_factor == 0.001


def test_recipe_trains_two_steps_with_masks(shapes_data: tuple[str, ...], recipe_run):
    metrics = recipe_run.trainer(RECIPE, shapes_data).fit()
    assert 0.0 <= metrics["AP"] <= 1.0 and 0.0 <= metrics["segm_AP"] <= 1.0
    losses = {k: v for k, v in recipe_run.last_record().items() if k.startswith("detection.")}
    for stage in range(3):
        assert {f"detection.s{stage}_{k}" for k in ("cls", "bbox", "mask")} <= set(losses)
    assert all(math.isfinite(v) for v in losses.values())
