"""The CanKD / MGD recipes keep the official numbers and each trains two steps on shapes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from kdforge.config import load_config
from kdforge.config._recipe_notes import readme_numbers
from kdforge.data.shapes import SEMANTIC_CLASSES, write_shapes_dataset
from kdforge.engine.build import build_trainer
from kdforge.losses import init_student_from_teacher
from kdforge.models import create_model

CONFIGS = Path(__file__).resolve().parents[1] / "kdforge" / "recipes"
FPN4 = [f"neck.fpn_convs.{i}" for i in range(4)]
DET_CANKD = {"student_layers": FPN4, "weight": 10.0}
DAGGER = {**DET_CANKD, "init_from_teacher": ["neck", "bbox_head"]}
DAGGER_NON_STRICT = {**DAGGER, "init_strict": False}  # FCOS†: conv_bias=True student
# Faster R-CNN†: init_cfg Pretrained, prefix 'neck.' on the FPN and 'roi_head.bbox_head' on
# the box head (mmengine appends the '.'); the RPN head keeps its own init
DAGGER_RCNN = {**DET_CANKD, "init_from_teacher": ["neck", "roi_head.bbox_head"]}
# Cascade teacher -> Faster R-CNN student: prefix 'neck' and 'roi_head.bbox_head.0' (the first
# stage), non-strict as mmengine loads it (the class-agnostic regressor does not fit)
DAGGER_CASCADE = {
    **DET_CANKD,
    "init_from_teacher": {"neck": "neck", "roi_head.bbox_head": "roi_head.bbox_head.0"},
    "init_strict": False,
}
CASCADE = ("cascade_mask_rcnn_x101_64x4d_fpn", "cascade_mask_rcnn_x101_64x4d_fpn_20e")
REPPOINTS = ("reppoints_moment_x101_32x4d_dcn_fpn_gn", "reppoints_moment_x101_32x4d_dcn_fpn_gn_2x")
MGD_FPN = {
    "student_layers": [*FPN4, "neck.fpn_convs.4"],
    "weight": 2e-5,
    "lambda_mgd": 0.65,
    "init_from_teacher": ["neck", "bbox_head"],
}


def _seg_cankd(layer: str, weight: float) -> dict:
    return {"student_layers": [layer], "teacher_layers": ["backbone.layer4"], "weight": weight}


# recipe -> (teacher, teacher checkpoint, student, distillation terms, README number)
DETECTION = {
    "cankd_retinanet_r101_retinanet_r50_fpn_2x.yaml": (
        "retinanet_r101_fpn", "retinanet_r101_fpn_2x", "retinanet_r50_fpn",
        {"cankd": DET_CANKD}, "box AP 39.7",
    ),
    "cankd-dagger_retinanet_r101_retinanet_r50_fpn_2x.yaml": (
        "retinanet_r101_fpn", "retinanet_r101_fpn_2x", "retinanet_r50_fpn",
        {"cankd": DAGGER}, "box AP 39.8",
    ),
    "cankd_fcos_r101_fcos_r50_fpn_2x.yaml": (
        "fcos_r101_fpn", "fcos_r101_fpn_ms-2x", "fcos_r50_fpn",
        {"cankd": DET_CANKD}, "box AP 42.4",
    ),
    "cankd-dagger_fcos_r101_fcos_r50_fpn_2x.yaml": (
        "fcos_r101_fpn", "fcos_r101_fpn_ms-2x", "fcos_r50_fpn",
        {"cankd": DAGGER_NON_STRICT}, "box AP 42.4",
    ),
    "cankd-dagger_fcos_r101_fcos_r50_fpn_2x_1000det.yaml": (
        "fcos_r101_fpn", "fcos_r101_fpn_ms-2x", "fcos_r50_fpn",
        {"cankd": DAGGER_NON_STRICT}, "box AP 42.4",
    ),
    "cankd_gfl_r101_retinanet_r50_fpn_1x.yaml": (
        "gfl_r101_fpn", "gfl_r101_fpn_ms-2x", "retinanet_r50_fpn",
        {"cankd": DET_CANKD}, "box AP not in its README",
    ),
    "cankd_retinanet_x101_retinanet_r50_fpn_2x.yaml": (
        "retinanet_x101_64x4d_fpn", "retinanet_x101_64x4d_fpn_1x", "retinanet_r50_fpn",
        {"cankd": DET_CANKD}, "box AP 41.0",
    ),
    "cankd-dagger_retinanet_x101_retinanet_r50_fpn_2x.yaml": (
        "retinanet_x101_64x4d_fpn", "retinanet_x101_64x4d_fpn_1x", "retinanet_r50_fpn",
        {"cankd": DAGGER}, "box AP 41.1",
    ),
    "cankd_fcos_x101_retinanet_r50_fpn_1x.yaml": (
        "fcos_x101_64x4d_fpn", "fcos_x101_64x4d_fpn_ms-2x", "retinanet_r50_fpn",
        {"cankd": DET_CANKD}, "box AP 40.5",
    ),
    "mgd_retinanet_x101_retinanet_r50_fpn_2x.yaml": (
        "retinanet_x101_64x4d_fpn", "retinanet_x101_64x4d_fpn_1x", "retinanet_r50_fpn",
        {"mgd": MGD_FPN}, "box AP 41.0",
    ),
    "mgd_retinanet_r101_retinanet_r50_fpn_2x.yaml": (
        "retinanet_r101_fpn", "retinanet_r101_fpn_2x", "retinanet_r50_fpn",
        {"mgd": MGD_FPN}, "box AP 41.0",
    ),
    "cankd_faster-rcnn_r101_faster-rcnn_r50_fpn_2x.yaml": (
        "faster_rcnn_r101_fpn", "faster_rcnn_r101_fpn_2x", "faster_rcnn_r50_fpn",
        {"cankd": DET_CANKD}, "box AP 40.1",
    ),
    "cankd-dagger_faster-rcnn_r101_faster-rcnn_r50_fpn_2x.yaml": (
        "faster_rcnn_r101_fpn", "faster_rcnn_r101_fpn_2x", "faster_rcnn_r50_fpn",
        {"cankd": DAGGER_RCNN}, "box AP 40.7",
    ),
    "cankd_cascade-mask-rcnn_x101_faster-rcnn_r50_fpn_2x.yaml": (
        *CASCADE, "faster_rcnn_r50_fpn", {"cankd": DET_CANKD}, "box AP 42.0",
    ),
    "cankd-dagger_cascade-mask-rcnn_x101_faster-rcnn_r50_fpn_2x.yaml": (
        *CASCADE, "faster_rcnn_r50_fpn", {"cankd": DAGGER_CASCADE}, "box AP 42.5",
    ),
    "pkd_faster-rcnn_r101_faster-rcnn_r50_fpn_2x.yaml": (  # mmrazor's PKDLoss(loss_weight=6)
        "faster_rcnn_r101_fpn", "faster_rcnn_r101_fpn_2x", "faster_rcnn_r50_fpn",
        {"pkd": {"student_layers": FPN4, "weight": 6.0}}, "box AP 40.3",
    ),
    "cankd_reppoints_x101-dcn_reppoints_r50_fpn_2x.yaml": (
        *REPPOINTS, "reppoints_moment_r50_fpn_gn", {"cankd": DET_CANKD}, "box AP 42.4",
    ),
    "cankd-dagger_reppoints_x101-dcn_reppoints_r50_fpn_2x.yaml": (
        *REPPOINTS, "reppoints_moment_r50_fpn_gn", {"cankd": DAGGER}, "box AP 42.6",
    ),
    "pkd_reppoints_x101-dcn_reppoints_r50_fpn_2x.yaml": (  # mmrazor: PKDLoss(loss_weight=10)
        *REPPOINTS, "reppoints_moment_r50_fpn_gn",
        {"pkd": {"student_layers": FPN4, "weight": 10.0}}, "box AP 42.3",
    ),
}  # fmt: skip
P101, D101 = "pspnet_r101-d8_4xb2-80k_512x1024", "deeplabv3_r101-d8_4xb2-80k_512x1024"
SEGMENTATION = {
    "cankd_pspnet_r101_pspnet_r18_80k.yaml": (
        "pspnet_r101", P101, "pspnet_r18",
        {"cankd": _seg_cankd("backbone.layer4", 10.0)}, "mIoU 76.24",
    ),
    "cankd_pspnet_r101_deeplabv3_r18_80k.yaml": (
        "pspnet_r101", P101, "deeplabv3_r18",
        {"cankd": _seg_cankd("backbone.layer4", 20.0)}, "mIoU 77.34",
    ),
    "cankd_deeplabv3_r101_deeplabv3_r18_80k.yaml": (
        "deeplabv3_r101", D101, "deeplabv3_r18",
        {"cankd": _seg_cankd("backbone.layer4", 10.0)}, "mIoU 77.12",
    ),
    "cankd_deeplabv3_r101_deeplabv3_mobilenetv2_80k.yaml": (
        "deeplabv3_r101", D101, "deeplabv3_mobilenetv2",
        {"cankd": _seg_cankd("backbone.layer7", 10.0)}, "mIoU 75.62",
    ),
    "mgd_deeplabv3_r101_deeplabv3_r18_80k.yaml": (
        "deeplabv3_r101", D101, "deeplabv3_r18",
        {"mgd": {"student_layers": ["backbone.layer4"], "weight": 2e-5, "lambda_mgd": 0.65}},
        "76.02 mIoU",
    ),
}  # fmt: skip


def test_every_recipe_is_listed():
    # AdamW/DETR: tests/test_dino_recipes.py and tests/test_grounding_dino_recipes.py
    dino = {"nlkd_dino-r101_dino-r50_12e_coco.yaml", "nlkd_ggdino-r101_ggdino-r50_1x_coco.yaml"}
    for folder, expected in [("coco", {*DETECTION, *dino}), ("cityscapes", SEGMENTATION)]:
        assert {p.name for p in (CONFIGS / folder / "cankd").glob("*.yaml")} == set(expected)


@pytest.mark.parametrize("name", sorted(DETECTION))
def test_detection_recipe_numbers(name: str):
    teacher, ckpt, student, terms, number = DETECTION[name]
    lines = (CONFIGS / "coco" / "cankd" / name).read_text().splitlines()
    assert number in lines[0] and len(lines) <= 50
    cfg = load_config(CONFIGS / "coco" / "cankd" / name)
    assert cfg.task == "detection" and cfg.data.name == "coco" and cfg.data.batch_size == 2
    assert cfg.teacher.name == teacher and cfg.student.name == student
    assert cfg.teacher.pretrained == f"checkpoints/coco/{ckpt}.safetensors"
    assert OmegaConf.to_container(cfg.loss) == {"detection": {}, **terms}
    caffe = student.startswith("fcos")
    assert (cfg.data.options.get("normalize") == "caffe") == caffe
    optim, schedule = cfg.optim, cfg.schedule
    assert optim.name == "sgd" and optim.momentum == 0.9 and optim.weight_decay == 1e-4
    if "cankd" in terms:  # CanKD: 0.005 at 2 GPUs x 2 images, clip 35
        assert (optim.lr, optim.base_batch_size, optim.clip_grad_norm) == (0.005, 4, 35.0)
    else:  # mmrazor: its student config's lr at 16 images, no clip (MGD's mmcv-1 one is ignored)
        lr = 0.02 if student.startswith("faster_rcnn") else 0.01
        assert (optim.lr, optim.base_batch_size, optim.clip_grad_norm) == (lr, 16, None)
    epochs = 12 if "_1x" in name else 24
    assert schedule.name == "multistep" and schedule.epochs == epochs and schedule.gamma == 0.1
    assert list(schedule.milestones) == ([8, 11] if epochs == 12 else [16, 22])
    assert schedule.warmup_iters == 500 and schedule.warmup_factor == 0.001
    assert schedule.warmup_mode == "linear"


def test_faster_rcnn_dagger_copies_the_teacher_neck_and_box_head_only():
    """As mmengine's prefixed Pretrained init: every FPN and shared-FC box head tensor, and
    nothing of the backbone, the RPN head or the RoI extractor."""
    name = "cankd-dagger_faster-rcnn_r101_faster-rcnn_r50_fpn_2x.yaml"
    cfg = load_config(CONFIGS / "coco" / "cankd" / name)
    torch.manual_seed(0)
    teacher, student = create_model(cfg.teacher.name), create_model(cfg.student.name)
    copied = init_student_from_teacher(student, teacher, cfg.loss.cankd.init_from_teacher)
    fpn = {f"neck.{k}_convs.{i}.conv.{p}" for k in ("lateral", "fpn") for i in range(4)
           for p in ("weight", "bias")}  # fmt: skip
    box = {f"roi_head.bbox_head.{m}.{p}" for m in ("shared_fcs.0", "shared_fcs.1", "fc_cls",
           "fc_reg") for p in ("weight", "bias")}  # fmt: skip
    assert sorted(copied) == sorted(fpn | box)
    s, t = student.state_dict(), teacher.state_dict()
    assert all(torch.equal(s[k], t[k]) for k in copied)
    rpn = [k for k in s if k.startswith("rpn_head.") and k.endswith("weight")]  # biases: 0
    assert rpn and not any(torch.equal(s[k], t[k]) for k in rpn)


def test_readme_rows_agree_with_the_recipe_headers():
    numbers = readme_numbers(CONFIGS / "coco" / "cankd" / "README.md", CONFIGS)
    faster = {k: v for k, v in numbers.items() if "faster-rcnn" in k}
    assert faster == {
        "coco/cankd/cankd_faster-rcnn_r101_faster-rcnn_r50_fpn_2x": "CanKD 40.1",
        "coco/cankd/cankd-dagger_faster-rcnn_r101_faster-rcnn_r50_fpn_2x": "CanKD† 40.7",
        "coco/cankd/cankd_cascade-mask-rcnn_x101_faster-rcnn_r50_fpn_2x": "CanKD 42.0",
        "coco/cankd/cankd-dagger_cascade-mask-rcnn_x101_faster-rcnn_r50_fpn_2x": "CanKD† 42.5",
    }
    for name, number in numbers.items():
        first = (CONFIGS / f"{name}.yaml").read_text().splitlines()[0]
        assert f"box AP {number.split()[-1]} " in first, name


@pytest.mark.parametrize("name", sorted(SEGMENTATION))
def test_segmentation_recipe_numbers(name: str):
    teacher, ckpt, student, terms, number = SEGMENTATION[name]
    lines = (CONFIGS / "cityscapes" / "cankd" / name).read_text().splitlines()
    assert number in lines[0] and len(lines) <= 50
    cfg = load_config(CONFIGS / "cityscapes" / "cankd" / name)
    assert cfg.task == "segmentation" and cfg.data.name == "cityscapes"
    assert cfg.teacher.name == teacher and cfg.student.name == student
    assert cfg.teacher.pretrained == f"checkpoints/cityscapes/{ckpt}.safetensors"
    assert cfg.student.kwargs.backbone_pretrained.startswith("checkpoints/imagenet/")
    assert OmegaConf.to_container(cfg.loss) == {"segmentation": {}, **terms}
    optim, schedule = cfg.optim, cfg.schedule
    assert optim.name == "sgd" and optim.lr == 0.01 and optim.weight_decay == 5e-4
    assert optim.momentum == 0.9 and optim.base_batch_size is None
    assert schedule.name == "poly" and schedule.iters == 80000 and schedule.min_lr == 1e-4
    assert schedule.power == 0.9 and cfg.data.batch_size == 2 and cfg.train.sync_bn


@pytest.fixture(scope="module")
def seg_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes_seg")
    return write_shapes_dataset(root, num_train=4, num_val=2, image_size=(64, 64))


def _check_terms(record: dict[str, float], terms: dict) -> None:
    for term, options in terms.items():
        if term == "pkd":  # one value: the sum over the levels
            values = [record[term]]
        else:  # CanKD, MGD: one per level
            values = [record[f"{term}.{path}"] for path in options["student_layers"]]
        assert all(math.isfinite(v) and v >= 0 for v in values)


@pytest.mark.parametrize("name", sorted(DETECTION))
def test_detection_recipe_trains_two_steps(name: str, shapes_data: tuple[str, ...], recipe_run):
    trainer = recipe_run.trainer(CONFIGS / "coco" / "cankd" / name, shapes_data)
    assert 0.0 <= trainer.fit()["AP"] <= 1.0
    _check_terms(recipe_run.last_record(), DETECTION[name][3])


@pytest.mark.parametrize("name", sorted(SEGMENTATION))
def test_segmentation_recipe_trains_two_steps(
    name: str, seg_root: Path, tmp_path: Path, recipe_run
):
    classes = "[" + ", ".join(SEMANTIC_CLASSES) + "]"
    overrides = [
        "data.name=segfolder",
        f"data.root={seg_root}",
        f"data.options={{classes: {classes}, image_dir: '{{split}}', "
        "mask_dir: 'masks/{split}', crop_size: [48, 48], scale: [64, 64], inference: whole}",
        "data.batch_size=2",
        "data.num_workers=0",
        "teacher.pretrained=null",
        "student.kwargs.backbone_pretrained=null",  # no ImageNet weights offline
        "schedule.iters=2",
        "train.sync_bn=false",
        "train.check_teacher=false",
        "train.max_eval_batches=1",
        f"train.out_dir={tmp_path}",
        "train.name=run",
    ]
    trainer = build_trainer(load_config(CONFIGS / "cityscapes" / "cankd" / name, overrides), "test")
    assert 0.0 <= trainer.fit()["mIoU"] <= 100.0
    _check_terms(recipe_run.last_record(), SEGMENTATION[name][3])
