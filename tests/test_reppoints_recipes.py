"""The RepPoints baselines keep mmdetection's numbers and settings and each trains two steps
(the CanKD/PKD RepPoints recipes are in tests/test_cankd_recipes.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kdforge.config import load_config

FOLDER = Path(__file__).resolve().parents[1] / "kdforge" / "recipes" / "coco" / "reppoints"
# recipe -> (mmdetection config, README box AP, model, ImageNet backbone file)
EXPECTED = {
    "reppoints-moment_r50_fpn-gn_head-gn_2x.yaml": (
        "reppoints-moment_r50_fpn-gn_head-gn_2x_coco.py", 38.6,
        "reppoints_moment_r50_fpn_gn", "resnet50-19c8e357.pth",
    ),
    "reppoints-moment_r101_fpn-gn_head-gn_2x.yaml": (
        "reppoints-moment_r101_fpn-gn_head-gn_2x_coco.py", 40.5,
        "reppoints_moment_r101_fpn_gn", "resnet101-5d3b4d8f.pth",
    ),
    "reppoints-moment_x101-dconv-c3-c5_fpn-gn_head-gn_2x.yaml": (
        "reppoints-moment_x101-dconv-c3-c5_fpn-gn_head-gn_2x_coco.py", 44.2,
        "reppoints_moment_x101_32x4d_dcn_fpn_gn", "resnext101_32x4d-a5af3160.pth",
    ),
}  # fmt: skip


def test_every_recipe_is_listed() -> None:
    assert {p.name for p in FOLDER.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_keeps_mmdetection_numbers(name: str) -> None:
    config, box_ap, model, backbone = EXPECTED[name]
    lines = (FOLDER / name).read_text().splitlines()
    assert lines[0] == f"# mmdetection configs/reppoints/{config}: box AP {box_ap} in its README."
    assert len(lines) <= 50
    cfg = load_config(FOLDER / name)
    assert cfg.task == "detection" and cfg.teacher.name is None and cfg.data.name == "coco"
    assert cfg.data.batch_size == 2 and cfg.data.eval_batch_size == 1  # x 8 processes = 16
    assert OmegaConf.to_container(cfg.data.options) == {
        "train_split": "train2017",
        "val_split": "val2017",
        "scale": [1333, 800],
    }
    assert cfg.student.name == model and cfg.student.pretrained is None
    assert cfg.student.kwargs.backbone_pretrained == f"download_ckpts/imagenet/{backbone}"
    assert OmegaConf.to_container(cfg.loss) == {"detection": {}}
    optim, schedule = cfg.optim, cfg.schedule
    # reppoints-moment_r50_fpn_1x_coco.py: optimizer lr 0.01 (schedule_1x's 0.02 halved)
    assert (optim.name, optim.lr, optim.base_batch_size, optim.clip_grad_norm) == (
        "sgd",
        0.01,
        16,
        None,
    )
    assert optim.momentum == 0.9 and optim.weight_decay == 1e-4
    assert schedule.name == "multistep" and schedule.epochs == 24
    assert list(schedule.milestones) == [16, 22] and schedule.gamma == 0.1
    assert (schedule.warmup_iters, schedule.warmup_factor, schedule.warmup_mode) == (
        500,
        0.001,
        "linear",
    )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_trains_two_steps(name: str, shapes_data: tuple[str, ...], recipe_run) -> None:
    metrics = recipe_run.trainer(FOLDER / name, shapes_data).fit()
    assert 0.0 <= metrics["AP"] <= 1.0
    losses = {k: v for k, v in recipe_run.last_record().items() if k.startswith("detection.")}
    assert {"detection.cls", "detection.pts_init", "detection.pts_refine"} <= set(losses)
    assert all(math.isfinite(v) for v in losses.values())
