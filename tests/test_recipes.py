"""Every shipped recipe loads, trains for two steps, and keeps the official CIFAR-100 numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from kdforge.config import load_config
from kdforge.data import write_fake_cifar
from kdforge.engine.build import build_trainer

CONFIGS = Path(__file__).resolve().parents[1] / "kdforge" / "recipes"
# The recipes of the cakd term need its data options: tests/losses/test_cakd.py runs them;
# COCO detection recipes need COCO-format data: tests/test_detection_recipes.py runs them.
# Cityscapes segmentation recipes: tests/test_segmentation_recipes.py runs them; Objects365 v2
# recipes: tests/test_objects365_recipes.py.
CAKD_TERM_RECIPES = {"vit_b16_resnet50.yaml", "vit_ti16_resnet18.yaml"}
RECIPES = sorted(
    p
    for p in CONFIGS.rglob("*.yaml")
    if not {"coco", "cityscapes", "objects365v2"} & set(p.parts) and p.name not in CAKD_TERM_RECIPES
)
CIFAR100 = CONFIGS / "cifar100"
IMAGENET = CONFIGS / "imagenet"

# (teacher, student, DKD beta) per pair: mdistiller configs/cifar100/dkd/*.yaml (default 8).
PAIRS = [
    ("resnet32x4", "resnet8x4", 8.0),
    ("wrn_40_2", "wrn_16_2", 6.0),
    ("wrn_40_2", "wrn_40_1", 6.0),
    ("resnet56", "resnet20", 2.0),
    ("resnet110", "resnet32", 2.0),
    ("vgg13", "vgg8", 6.0),
    ("resnet32x4", "ShuffleV1", 8.0),
    ("resnet32x4", "ShuffleV2", 8.0),
    ("wrn_40_2", "ShuffleV1", 8.0),
    ("ResNet50", "MobileNetV2", 8.0),
    ("vgg13", "MobileNetV2", 6.0),
]
TEACHERS = sorted({t for t, _, _ in PAIRS})
STUDENTS = sorted({s for _, s, _ in PAIRS})
LOW_LR = {"ShuffleV1", "ShuffleV2", "MobileNetV2"}  # lr 0.01 instead of 0.05 (RepDistiller)

# recipe path (relative to configs/cifar100) -> (teacher or None, student, expected loss terms)
EXPECTED: dict[str, tuple[str | None, str, dict[str, dict]]] = {}
for _t, _s, _beta in PAIRS:
    _stem = f"{_t}_{_s}".lower()
    EXPECTED[f"kd/{_stem}.yaml"] = (
        _t,
        _s,
        {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 4.0}},
    )
    EXPECTED[f"dkd/{_stem}.yaml"] = (
        _t,
        _s,
        {
            "ce": {"weight": 1.0},
            "dkd": {
                "weight": 1.0,
                "alpha": 1.0,
                "beta": _beta,
                "temperature": 4.0,
                "warmup_epochs": 20,
            },
        },
    )
for _m in STUDENTS + TEACHERS:
    EXPECTED[f"baseline/{_m.lower()}.yaml"] = (None, _m, {"ce": {"weight": 1.0}})
# CAT-KD (beta, CAM resolution, normalize) per pair: CAT-KD repo configs/cifar100/CAT_KD/*.yaml.
CAT_KD = {
    ("resnet32x4", "resnet8x4"): (15.0, 2, False),
    ("wrn_40_2", "wrn_16_2"): (12.0, 2, False),
    ("wrn_40_2", "wrn_40_1"): (1.5, 2, False),
    ("resnet56", "resnet20"): (0.7, 2, False),
    ("resnet110", "resnet32"): (1.8, 2, False),
    ("vgg13", "vgg8"): (4.5, 2, False),
    ("resnet32x4", "ShuffleV1"): (600.0, 4, True),
    ("resnet32x4", "ShuffleV2"): (600.0, 4, True),
    ("wrn_40_2", "ShuffleV1"): (80.0, 4, True),
    ("ResNet50", "MobileNetV2"): (40.0, 2, True),
    ("vgg13", "MobileNetV2"): (15.0, 2, True),
}
assert set(CAT_KD) == {(t, s) for t, s, _ in PAIRS}
for (_t, _s), (_beta, _res, _norm) in CAT_KD.items():
    EXPECTED[f"cat_kd/{_t}_{_s}".lower() + ".yaml"] = (
        _t,
        _s,
        {
            "ce": {"weight": 1.0},
            "cat_kd": {"weight": _beta, "resolution": _res, "normalize": _norm},
        },
    )
# CAT-only studies (configs/cifar100/CAT/): onlyCAT (no ce term), R 2, normalised CAMs.
for _name, _t, _s, _cat in [
    ("resnet32x4_resnet32x4", "resnet32x4", "resnet32x4", {"weight": 50.0}),
    (
        "resnet32x4_resnet32x4_binarize",
        "resnet32x4",
        "resnet32x4",
        {"weight": 300.0, "binarize": True},
    ),
    ("resnet32x4_resnet32x4_reduction", "resnet32x4", "resnet32x4", {"weight": 50.0}),
    (
        "resnet32x4_resnet8x4_partial",
        "resnet32x4",
        "resnet8x4",
        {"weight": 300.0, "num_cams": 75, "strategy": 1},
    ),
]:
    EXPECTED[f"cat/{_name}.yaml"] = (
        _t,
        _s,
        {"cat_kd": {**_cat, "resolution": 2, "normalize": True}},
    )
# data.options of the recipes that have some (CAT's training-set reduction: 99 classes)
DATA_OPTIONS = {
    "cat/resnet32x4_resnet32x4_reduction.yaml": {"reserved_classes": 99, "reserved_rate": 1.0}
}
# ImageNet recipe (relative to configs/imagenet) -> (teacher, student, cat_kd term), from the
# CAT-KD repo's configs/imagenet/CAT-KD/*.yaml.
IMAGENET_EXPECTED = {
    "cat_kd/resnet34_resnet18.yaml": (
        "resnet34",
        "resnet18",
        {"weight": 0.5, "resolution": 4, "normalize": False},
    ),
    "cat_kd/resnet50_mobilenet_v1.yaml": (
        "resnet50",
        "mobilenet_v1",
        {"weight": 10.0, "resolution": 2, "normalize": True},
    ),
}

# The CAKD repo's other ImageNet rows (README top-1), each from its own script's settings:
# recipe -> (teacher, README number, loss terms, epochs, milestones, repeated_aug, EMA decay)
CAKD_ROWS = {
    "cakd/resnet50_baseline.yaml": (  # run_baseline.sh + dist_train_student.py
        None, "top-1 73.82", {"ce": {"weight": 1.0}}, 90, [30, 60], 1, None,
    ),
    "cakd/vit_b16_resnet50_logits.yaml": (  # run_logits.sh + dist_train_logits.py
        "vit_b_16", "top-1 74.48",
        {
            "ce": {"weight": 1.0, "label_smoothing": 0.1},
            "logits": {
                "type": "fitnet", "student_layer": "", "teacher_layer": "",
                "connector": "none", "weight": 1.0,
            },
        },
        120, [30, 60, 90], 4, 0.99998,
    ),
}  # fmt: skip


def _id(path: Path) -> str:
    return str(path.relative_to(CONFIGS).with_suffix(""))


@pytest.fixture(scope="session")
def cifar100_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated CIFAR-100 folder (64 train / 32 test images) in the python-pickle format."""
    root = tmp_path_factory.mktemp("cifar100")
    write_fake_cifar(root, "cifar100", num_train=64, num_test=32)
    return root


@pytest.fixture(scope="session")
def imagefolder_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated ImageFolder: train/ and val/, 2 classes x 3 random 40x48 PNGs each."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("n01440764", "n01443537"):
            (root / split / cls).mkdir(parents=True)
            for i in range(3):
                pixels = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    return root


def test_every_expected_recipe_is_shipped():
    shipped = {
        str(p.relative_to(CIFAR100))
        for folder in ("baseline", "kd", "dkd", "cat_kd", "cat")
        for p in (CIFAR100 / folder).glob("*.yaml")
    }
    assert shipped == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_keeps_official_numbers(name: str):
    teacher, student, loss = EXPECTED[name]
    path = CIFAR100 / name
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# ") and len(lines) <= 40
    cfg = load_config(path)
    assert cfg.data.name == "cifar100" and cfg.data.root == "data"
    assert cfg.data.batch_size == 64
    assert OmegaConf.to_container(cfg.data.options) == DATA_OPTIONS.get(name, {})
    assert cfg.student.name == student and cfg.student.pretrained is None
    assert cfg.teacher.name == teacher
    if teacher is None:
        assert cfg.teacher.pretrained is None
    else:
        ckpt = f"download_ckpts/cifar_teachers/{teacher}_vanilla/ckpt_epoch_240.pth"
        assert cfg.teacher.pretrained == ckpt
    assert OmegaConf.to_container(cfg.loss) == loss
    assert cfg.optim.name == "sgd"
    assert cfg.optim.lr == (0.01 if student in LOW_LR else 0.05)
    assert cfg.optim.momentum == 0.9 and not cfg.optim.nesterov
    assert cfg.optim.weight_decay == 5e-4
    assert cfg.schedule.name == "multistep" and cfg.schedule.epochs == 240
    assert list(cfg.schedule.milestones) == [150, 180, 210] and cfg.schedule.gamma == 0.1
    assert cfg.schedule.warmup_epochs == 0
    assert cfg.train.name is None


def test_every_expected_imagenet_cat_kd_recipe_is_shipped():
    shipped = {str(p.relative_to(IMAGENET)) for p in IMAGENET.glob("cat_kd/*.yaml")}
    assert shipped == set(IMAGENET_EXPECTED)


@pytest.mark.parametrize("name", sorted(IMAGENET_EXPECTED))
def test_imagenet_recipe_keeps_official_numbers(name: str):
    teacher, student, cat_kd = IMAGENET_EXPECTED[name]
    path = IMAGENET / name
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# ") and len(lines) <= 40
    cfg = load_config(path)
    assert cfg.data.name == "imagefolder" and cfg.data.batch_size == 64  # x 8 processes = 512
    assert cfg.teacher.name == teacher and cfg.student.name == student
    assert cfg.teacher.pretrained.startswith("download_ckpts/imagenet/")
    assert cfg.student.pretrained is None
    assert OmegaConf.to_container(cfg.loss) == {"ce": {"weight": 1.0}, "cat_kd": cat_kd}
    assert cfg.optim.name == "sgd" and cfg.optim.lr == 0.2 and cfg.optim.momentum == 0.9
    assert cfg.optim.weight_decay == 1e-4 and not cfg.optim.nesterov
    assert cfg.schedule.name == "multistep" and cfg.schedule.epochs == 100
    assert list(cfg.schedule.milestones) == [30, 60, 90] and cfg.schedule.gamma == 0.1
    assert cfg.schedule.warmup_epochs == 0


def test_every_cakd_recipe_is_tested():
    shipped = {str(p.relative_to(IMAGENET)) for p in IMAGENET.glob("cakd/*.yaml")}
    assert shipped == set(CAKD_ROWS) | {f"cakd/{n}" for n in CAKD_TERM_RECIPES}


@pytest.mark.parametrize("name", sorted(CAKD_ROWS))
def test_cakd_rows_keep_their_scripts_numbers(name: str):
    teacher, number, loss, epochs, milestones, repeated_aug, ema = CAKD_ROWS[name]
    lines = (IMAGENET / name).read_text().splitlines()
    assert lines[0].startswith("# CAKD README") and number in lines[0] and len(lines) <= 50
    cfg = load_config(IMAGENET / name)
    assert cfg.data.name == "imagefolder" and cfg.data.batch_size == 32  # x 8 processes
    assert OmegaConf.to_container(cfg.data.options) == {"image_size": 224, "val_resize": 224}
    assert cfg.data.mixup_alpha == 0 and cfg.data.repeated_aug == repeated_aug
    assert cfg.teacher.name == teacher and cfg.student.name == "resnet50"
    assert OmegaConf.to_container(cfg.loss) == loss
    optim, schedule = cfg.optim, cfg.schedule
    assert (optim.name, optim.lr, optim.momentum, optim.weight_decay) == ("sgd", 0.1, 0.9, 1e-4)
    assert optim.norm_weight_decay is None and optim.bias_weight_decay is None
    assert schedule.name == "multistep" and schedule.epochs == epochs and schedule.gamma == 0.1
    assert list(schedule.milestones) == milestones and schedule.warmup_epochs == 0
    assert cfg.train.ema_decay == ema and cfg.train.ema_steps == 32


@pytest.mark.parametrize("path", RECIPES, ids=_id)
def test_recipe_trains_two_steps(
    path: Path, cifar100_root: Path, imagefolder_root: Path, tmp_path: Path
):
    on_imagefolder = load_config(path).data.name == "imagefolder"
    overrides = [
        f"data.root={imagefolder_root if on_imagefolder else cifar100_root}",
        "data.batch_size=4",
        "data.num_workers=0",
        "teacher.pretrained=null",
        "train.check_teacher=false",
        "train.max_steps=2",
        "train.max_eval_batches=1",
        f"train.out_dir={tmp_path}",
        "train.name=run",
    ]
    if on_imagefolder and not str(load_config(path).teacher.name).startswith("vit"):
        overrides.append("data.options.image_size=64")  # ImageNet models on tiny images
    cfg = load_config(path, overrides)
    trainer = build_trainer(cfg, "test")
    trainer.fit()
    run = tmp_path / "run"
    assert (run / "last.pt").is_file()
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert train and train[-1]["step"] == 2
    for record in train:
        for term in cfg.loss:
            assert term in record, f"loss term {term!r} not logged: {record}"
            assert math.isfinite(record[term]), record
