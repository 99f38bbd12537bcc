"""The Objects365 v2 recipes keep the CanKD configs' numbers and each trains two steps on a
generated data set in mmdetection's Objects365 v2 layout."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from kdforge.config import load_config
from kdforge.data.objects365 import write_objects365v2_dataset

O365 = Path(__file__).resolve().parents[1] / "kdforge" / "recipes" / "objects365v2"
CONFIGS = "CanKD configs/"
FPN4 = [f"neck.fpn_convs.{i}" for i in range(4)]
# recipe -> (first line, student, teacher, lr, base batch, loss terms)
EXPECTED = {
    "retinanet/retinanet_r101_fpn_1x.yaml": (
        f"# {CONFIGS}object365/retinanet_r101_fpn_1x_objects365v2.py: box AP 19.5 in its README.",
        "retinanet_r101_fpn", None, 0.005, 16, {"detection": {}},
    ),
    "retinanet/retinanet_r50_fpn_1x.yaml": (
        f"# {CONFIGS}object365/retinanet_r101_fpn_1x_objects365v2.py with depth 50: box AP 16.7 "
        "in its README (the student).",
        "retinanet_r50_fpn", None, 0.005, 16, {"detection": {}},
    ),
    "retinanet/retinanet_r18_fpn_1x.yaml": (
        f"# {CONFIGS}object365/retinanet_r18_fpn_1x_objects365v2.py: no number reported (README "
        "or logs).",
        "retinanet_r18_fpn", None, 0.005, 16, {"detection": {}},
    ),
    "cankd/cankd-dagger_retinanet_r101_retinanet_r50_fpn_1x.yaml": (
        f"# {CONFIGS}distill/mmdet/nlkd/nlkdD_fpn_retinanet-r101_retinanet-r50_1x_objects365v2.py:"
        " box AP 18.4 in its README.",
        "retinanet_r50_fpn", "retinanet_r101_fpn", 0.01, 8,
        {"detection": {}, "cankd": {"student_layers": FPN4, "weight": 10.0,
                                    "init_from_teacher": ["neck", "bbox_head"]}},
    ),
}  # fmt: skip
BACKBONES = {
    "retinanet_r18_fpn": "resnet18-5c106cde",
    "retinanet_r50_fpn": "resnet50-19c8e357",
    "retinanet_r101_fpn": "resnet101-5d3b4d8f",
}
# FPN in_channels of the configs ([64, 128, 256, 512] for R-18) from start_level 1
LATERALS = {
    "retinanet_r18_fpn": [128, 256, 512],
    "retinanet_r50_fpn": [512, 1024, 2048],
    "retinanet_r101_fpn": [512, 1024, 2048],
}


def test_every_recipe_is_listed():
    assert {str(p.relative_to(O365)) for p in O365.rglob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_keeps_the_official_numbers(name: str):
    first, student, teacher, lr, batch, loss = EXPECTED[name]
    lines = (O365 / name).read_text().splitlines()
    assert lines[0] == first and len(lines) <= 50
    cfg = load_config(O365 / name)
    assert cfg.task == "detection" and cfg.data.name == "objects365v2"
    assert cfg.data.root == "data/Objects365/Obj365_v2"  # mmdetection's data_root
    assert OmegaConf.to_container(cfg.data.options) == {"scale": [1333, 800]}
    assert cfg.data.batch_size == 2 and cfg.data.eval_batch_size == 1
    assert cfg.data.group_by_aspect_ratio
    assert cfg.student.name == student and cfg.teacher.name == teacher
    weights = f"download_ckpts/imagenet/{BACKBONES[student]}.pth"
    assert OmegaConf.to_container(cfg.student.kwargs) == {"backbone_pretrained": weights}
    if teacher is not None:
        assert (
            cfg.teacher.pretrained == "checkpoints/objects365v2/retinanet_r101_fpn_1x.safetensors"
        )
        assert cfg.teacher.truncate
    assert OmegaConf.to_container(cfg.loss) == loss
    optim, schedule = cfg.optim, cfg.schedule
    assert (optim.name, optim.lr, optim.base_batch_size) == ("sgd", lr, batch)
    assert (optim.momentum, optim.weight_decay, optim.clip_grad_norm) == (0.9, 1e-4, 35.0)
    assert schedule.name == "multistep" and schedule.epochs == 12 and schedule.gamma == 0.1
    assert list(schedule.milestones) == [8, 11]
    # LinearLR(start_factor=1/1000, by_epoch=False, begin=0, end=10000)
    assert (schedule.warmup_iters, schedule.warmup_factor) == (10000, 0.001)
    assert schedule.warmup_mode == "linear" and schedule.warmup_epochs == 0


@pytest.fixture(scope="module")
def o365_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_objects365v2_dataset(tmp_path_factory.mktemp("o365"), num_train=4, num_val=2)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_trains_two_steps(name: str, o365_root: Path, recipe_run):
    trainer = recipe_run.trainer(O365 / name, [f"data.root={o365_root}"])
    student = trainer.model.student
    assert student.bbox_head.retina_cls.out_channels == 9 * 365  # 9 anchors x 365 classes
    laterals = [conv.conv.in_channels for conv in student.neck.lateral_convs]
    assert laterals == LATERALS[EXPECTED[name][1]]
    _, _, teacher, lr, batch, loss = EXPECTED[name]
    base_lrs = sorted({group["initial_lr"] for group in trainer.optimizer.param_groups})
    assert base_lrs == pytest.approx([lr * 2 / batch])  # linear scaling to 2 images
    if teacher is not None:  # CanKD-dagger: the neck and head start as the teacher's
        tensors = trainer.model.teacher.state_dict()
        for key, value in student.state_dict().items():
            if key.startswith(("neck.", "bbox_head.")):
                assert torch.equal(value, tensors[key]), key
    assert 0.0 <= trainer.fit()["AP"] <= 1.0
    record = recipe_run.last_record()
    terms = ["detection.cls", "detection.bbox"] + [f"cankd.{p}" for p in FPN4 if "cankd" in loss]
    assert all(math.isfinite(record[term]) and record[term] >= 0 for term in terms)
