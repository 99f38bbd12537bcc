"""The COCO detection recipes keep mmdetection's numbers and each trains two steps on shapes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kdforge.config import load_config

COCO = Path(__file__).resolve().parents[1] / "kdforge" / "recipes" / "coco"
# recipe (relative to configs/coco) -> (epochs, mmdetection config, README box AP)
EXPECTED = {
    "retinanet/retinanet_r50_fpn_1x.yaml": (12, "retinanet/retinanet_r50_fpn_1x_coco.py", 36.5),
    "retinanet/retinanet_r50_fpn_2x.yaml": (24, "retinanet/retinanet_r50_fpn_2x_coco.py", 37.4),
    "retinanet/retinanet_r101_fpn_1x.yaml": (12, "retinanet/retinanet_r101_fpn_1x_coco.py", 38.5),
    "retinanet/retinanet_r101_fpn_2x.yaml": (24, "retinanet/retinanet_r101_fpn_2x_coco.py", 38.9),
    "atss/atss_r50_fpn_1x.yaml": (12, "atss/atss_r50_fpn_1x_coco.py", 39.4),
    "atss/atss_r101_fpn_1x.yaml": (12, "atss/atss_r101_fpn_1x_coco.py", 41.5),
    "gfl/gfl_r50_fpn_1x.yaml": (12, "gfl/gfl_r50_fpn_1x_coco.py", 40.2),
    "gfl/gfl_r50_fpn_ms-2x.yaml": (24, "gfl/gfl_r50_fpn_ms-2x_coco.py", 42.9),
    "gfl/gfl_r101_fpn_ms-2x.yaml": (24, "gfl/gfl_r101_fpn_ms-2x_coco.py", 44.7),
    "fcos/fcos_r50_fpn_1x.yaml": (12, "fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py", 36.6),
    "fcos/fcos_r101_fpn_1x.yaml": (12, "fcos/fcos_r101-caffe_fpn_gn-head-1x_coco.py", 39.1),
    "fcos/fcos_r50_fpn_ms-2x.yaml": (
        24,
        "fcos/fcos_r50-caffe_fpn_gn-head_ms-640-800-2x_coco.py",
        38.5,
    ),
    "fcos/fcos_r101_fpn_ms-2x.yaml": (
        24,
        "fcos/fcos_r101-caffe_fpn_gn-head_ms-640-800-2x_coco.py",
        40.8,
    ),
    "faster_rcnn/faster-rcnn_r50_fpn_2x.yaml": (
        24,
        "faster_rcnn/faster-rcnn_r50_fpn_2x_coco.py",
        38.4,
    ),
    "faster_rcnn/faster-rcnn_r101_fpn_2x.yaml": (
        24,
        "faster_rcnn/faster-rcnn_r101_fpn_2x_coco.py",
        39.8,
    ),
}
# lr at a global batch of 16: mmdet's schedules say 0.02; the one-stage configs set 0.01
LR = {"faster_rcnn": 0.02}
# multi-scale training: GFL RandomResize (range), FCOS RandomChoiceResize (value)
MULTISCALE = {
    "gfl": ([[1333, 480], [1333, 800]], "range"),
    "fcos": ([[1333, 640], [1333, 800]], "value"),
}
BACKBONES = {
    "resnet50": "resnet50-19c8e357.pth",  # torchvision://resnet50
    "resnet101": "resnet101-5d3b4d8f.pth",
    "resnet50_caffe": "resnet50_caffe-788b5fa3.pth",  # open-mmlab://detectron/resnet50_caffe
    "resnet101_caffe": "resnet101_caffe-3ad79236.pth",
}


def test_every_expected_recipe_is_shipped():
    assert {
        str(p.relative_to(COCO))
        for p in COCO.rglob("*.yaml")
        # these folders have test files of their own
        if not {
            "cankd",
            "crosskd",
            "crosskd_pkd",
            "reppoints",
            "cascade_rcnn",
            "dino",
            "grounding_dino",
        }
        & set(p.parts)
        if "swin" not in p.name  # tests/test_swin_recipes.py
    } == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_keeps_mmdetection_numbers(name: str):
    epochs, mmdet_config, box_ap = EXPECTED[name]
    kind, stem = name.split("/")
    depth = int(stem.split("_")[1].removeprefix("r"))
    lines = (COCO / name).read_text().splitlines()
    assert lines[0] == f"# mmdetection configs/{mmdet_config}: box AP {box_ap} in its README."
    assert len(lines) <= 50
    cfg = load_config(COCO / name)
    assert cfg.task == "detection" and cfg.teacher.name is None
    assert cfg.data.name == "coco" and cfg.data.root == "data/coco"
    assert cfg.data.batch_size == 2 and cfg.data.eval_batch_size == 1  # x 8 processes = 16
    options = OmegaConf.to_container(cfg.data.options)
    assert options.pop("train_split") == "train2017" and options.pop("val_split") == "val2017"
    assert options.pop("scale") == [1333, 800]
    if "ms-" in stem:
        scales, mode = MULTISCALE[kind]
        assert options.pop("train_scales") == scales and options.pop("multiscale_mode") == mode
    caffe = kind == "fcos"
    assert options == ({"normalize": "caffe"} if caffe else {})
    assert cfg.student.name == f"{kind}_r{depth}_fpn" and cfg.student.pretrained is None
    weights = BACKBONES[f"resnet{depth}{'_caffe' if caffe else ''}"]
    assert OmegaConf.to_container(cfg.student.kwargs) == {
        "backbone_pretrained": f"download_ckpts/imagenet/{weights}"
    }
    assert OmegaConf.to_container(cfg.loss) == {"detection": {}}
    optim = cfg.optim
    assert optim.name == "sgd" and optim.lr == LR.get(kind, 0.01) and optim.base_batch_size == 16
    assert optim.momentum == 0.9 and not optim.nesterov and optim.weight_decay == 1e-4
    assert optim.norm_weight_decay is None
    assert (optim.bias_lr_mult, optim.bias_weight_decay) == ((2.0, 0.0) if caffe else (1.0, None))
    assert optim.clip_grad_norm == (35.0 if caffe else None)
    schedule = cfg.schedule
    assert schedule.name == "multistep" and schedule.epochs == epochs and schedule.gamma == 0.1
    assert list(schedule.milestones) == ([8, 11] if epochs == 12 else [16, 22])
    assert schedule.warmup_iters == 500 and schedule.warmup_epochs == 0
    if caffe:  # ConstantLR(factor=1/3) for 500 iterations
        assert schedule.warmup_mode == "constant" and schedule.warmup_factor == pytest.approx(1 / 3)
    else:  # LinearLR(start_factor=0.001) for 500 iterations
        assert schedule.warmup_mode == "linear" and schedule.warmup_factor == 0.001
    assert cfg.train.name is None and cfg.train.amp == "none"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_trains_two_steps(name: str, shapes_data: tuple[str, ...], recipe_run):
    overrides = ["data.options.train_scales=null", "student.pretrained=null"]
    trainer = recipe_run.trainer(COCO / name, shapes_data, *overrides)
    # linear scaling: 0.01 (0.02) at 16 images -> 0.00125 (0.0025) at 2 (biases x bias_lr_mult)
    lr = LR.get(name.split("/")[0], 0.01) * 2 / 16
    base_lrs = sorted({group["initial_lr"] for group in trainer.optimizer.param_groups})
    bias_lr_mult = recipe_run.cfg.optim.bias_lr_mult
    assert base_lrs == pytest.approx(sorted({lr * m for m in {1.0, bias_lr_mult}}))
    metrics = trainer.fit()
    assert 0.0 <= metrics["AP"] <= 1.0 and metrics["count"] == 1  # one batch of one image
    losses = {k: v for k, v in recipe_run.last_record().items() if k.startswith("detection.")}
    assert {"detection.cls", "detection.bbox"} <= set(losses)
    if name.startswith("faster_rcnn/"):  # the RPN's losses too
        assert {"detection.rpn_cls", "detection.rpn_bbox"} <= set(losses)
    assert all(math.isfinite(v) for v in losses.values())
