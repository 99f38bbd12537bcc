"""The Cityscapes recipes keep mmsegmentation's numbers and each trains two steps on shapes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kdforge.config import load_config
from kdforge.data.shapes import SEMANTIC_CLASSES, write_shapes_dataset
from kdforge.engine.build import build_trainer

CITYSCAPES = Path(__file__).resolve().parents[1] / "kdforge" / "recipes" / "cityscapes"
# recipe (relative to configs/cityscapes) -> (model, mmsegmentation config, README mIoU)
EXPECTED = {
    "pspnet/pspnet_r18-d8_4xb2-80k_512x1024.yaml": (
        "pspnet_r18",
        "pspnet/pspnet_r18-d8_4xb2-80k_cityscapes-512x1024.py",
        74.87,
    ),
    "pspnet/pspnet_r101-d8_4xb2-80k_512x1024.yaml": (
        "pspnet_r101",
        "pspnet/pspnet_r101-d8_4xb2-80k_cityscapes-512x1024.py",
        79.76,
    ),
    "deeplabv3/deeplabv3_r18-d8_4xb2-80k_512x1024.yaml": (
        "deeplabv3_r18",
        "deeplabv3/deeplabv3_r18-d8_4xb2-80k_cityscapes-512x1024.py",
        76.70,
    ),
    "deeplabv3/deeplabv3_r101-d8_4xb2-80k_512x1024.yaml": (
        "deeplabv3_r101",
        "deeplabv3/deeplabv3_r101-d8_4xb2-80k_cityscapes-512x1024.py",
        80.20,
    ),
    "deeplabv3/deeplabv3_mobilenetv2-d8_4xb2-80k_512x1024.yaml": (
        "deeplabv3_mobilenetv2",
        "mobilenet_v2/mobilenet-v2-d8_deeplabv3_4xb2-80k_cityscapes-512x1024.py",
        73.84,
    ),
}
# mmseg configs/_base_/datasets/cityscapes.py train pipeline; val: whole image, full size
PIPELINE = {
    "scale": [2048, 1024],
    "ratio_range": [0.5, 2.0],
    "crop_size": [512, 1024],
    "cat_max_ratio": 0.75,
    "flip_prob": 0.5,
    "photometric": True,
    "inference": "whole",
}
STEPS_PER_EPOCH = math.ceil(2975 / 4 / 2)  # Cityscapes train, 4 processes x 2 images


def test_every_expected_recipe_is_shipped():
    assert {
        str(p.relative_to(CITYSCAPES)) for p in CITYSCAPES.rglob("*.yaml") if "cankd" not in p.parts
    } == set(EXPECTED)


IMAGENET_WEIGHTS = {
    "r18": "resnet18_v1c-b5776b93.pth",  # open-mmlab://resnet18_v1c
    "r101": "resnet101_v1c-e67eebb6.pth",
    "mobilenetv2": "mobilenet_v2_batch256_imagenet_20200708-3b2dc3af.pth",  # mmcls://mobilenet_v2
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_keeps_mmsegmentation_numbers(name: str):
    model, mmseg_config, miou = EXPECTED[name]
    lines = (CITYSCAPES / name).read_text().splitlines()
    assert lines[0] == f"# mmsegmentation configs/{mmseg_config}: mIoU {miou:.2f} in its README."
    assert len(lines) <= 50
    cfg = load_config(CITYSCAPES / name)
    assert cfg.task == "segmentation" and cfg.teacher.name is None
    assert cfg.student.name == model and cfg.student.pretrained is None
    weights = IMAGENET_WEIGHTS[model.split("_", 1)[1]]  # mmseg's pretrained= for the backbone
    assert cfg.student.kwargs.backbone_pretrained == f"checkpoints/imagenet/{weights}"
    assert cfg.data.name == "cityscapes" and cfg.data.root == "data/cityscapes"
    assert cfg.data.batch_size == 2 and cfg.data.eval_batch_size == 1  # x 4 processes = 8
    assert OmegaConf.to_container(cfg.data.options) == PIPELINE
    assert OmegaConf.to_container(cfg.loss) == {"segmentation": {}}
    optim = cfg.optim
    assert optim.name == "sgd" and optim.lr == 0.01 and optim.base_batch_size is None
    assert optim.momentum == 0.9 and not optim.nesterov and optim.weight_decay == 5e-4
    assert optim.norm_weight_decay is None and optim.clip_grad_norm is None
    schedule = cfg.schedule
    assert schedule.name == "poly" and schedule.iters == 80000
    assert schedule.power == 0.9 and schedule.min_lr == 1e-4
    assert schedule.warmup_epochs == 0 and schedule.warmup_iters == 0
    assert cfg.train.sync_bn and cfg.train.amp == "none" and cfg.train.name is None
    # evaluate about every 8000 iterations, 10 times in all as mmseg (the last at 80000)
    every = cfg.train.eval_every * STEPS_PER_EPOCH
    assert abs(every - 8000) < STEPS_PER_EPOCH and 80000 // every == 9


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes_seg")
    return write_shapes_dataset(root, num_train=4, num_val=2, image_size=(64, 64))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_trains_two_steps(name: str, shapes_root: Path, tmp_path: Path):
    classes = "[" + ", ".join(SEMANTIC_CLASSES) + "]"
    overrides = [
        "data.name=segfolder",
        f"data.root={shapes_root}",
        f"data.options={{classes: {classes}, image_dir: '{{split}}', "
        "mask_dir: 'masks/{split}', crop_size: [48, 48], scale: [64, 64], inference: whole}",
        "data.batch_size=2",
        "data.num_workers=0",
        "student.pretrained=null",
        "student.kwargs.backbone_pretrained=null",  # no ImageNet weights offline
        "schedule.iters=2",
        "train.sync_bn=false",
        "train.max_eval_batches=1",
        f"train.out_dir={tmp_path}",
        "train.name=run",
    ]
    cfg = load_config(CITYSCAPES / name, overrides)
    assert cfg.data.options.ratio_range == [0.5, 2.0]  # the recipe's pipeline, smaller
    trainer = build_trainer(cfg, "test")
    assert {group["initial_lr"] for group in trainer.optimizer.param_groups} == {0.01}
    metrics = trainer.fit()
    assert 0.0 <= metrics["mIoU"] <= 100.0 and "IoU" in metrics["table"]
    records = [
        json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    ]
    train = [r for r in records if r["kind"] == "train"]
    assert train and train[-1]["step"] == 2
    losses = [train[-1]["segmentation.decode"], train[-1]["segmentation.aux"]]
    assert all(math.isfinite(v) and v > 0 for v in losses)
    assert [r["kind"] for r in records].count("val") == 1
