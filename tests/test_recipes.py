"""Every shipped recipe loads, trains for two steps, and keeps the official CIFAR-100 numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kdforge.config import load_config
from kdforge.data import write_fake_cifar
from kdforge.engine.build import build_trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# CAKD recipes need 224-pixel ViTs and their data options: tests/losses/test_cakd.py runs them.
RECIPES = sorted(p for p in CONFIGS.rglob("*.yaml") if "cakd" not in p.parts)
CIFAR100 = CONFIGS / "cifar100"

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


def _id(path: Path) -> str:
    return str(path.relative_to(CONFIGS).with_suffix(""))


@pytest.fixture(scope="session")
def cifar100_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated CIFAR-100 folder (64 train / 32 test images) in the python-pickle format."""
    root = tmp_path_factory.mktemp("cifar100")
    write_fake_cifar(root, "cifar100", num_train=64, num_test=32)
    return root


def test_every_expected_recipe_is_shipped():
    shipped = {
        str(p.relative_to(CIFAR100))
        for folder in ("baseline", "kd", "dkd")
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


@pytest.mark.parametrize("path", RECIPES, ids=_id)
def test_recipe_trains_two_steps(path: Path, cifar100_root: Path, tmp_path: Path):
    overrides = [
        f"data.root={cifar100_root}",
        "data.batch_size=4",
        "data.num_workers=0",
        "teacher.pretrained=null",
        "train.check_teacher=false",
        "train.max_steps=2",
        "train.max_eval_batches=1",
        f"train.out_dir={tmp_path}",
        "train.name=run",
    ]
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
