"""``robustness``: the corrupting data set wrapper, mPC/rPC, and the command on tiny data."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from kdforge.analysis.robustness import CorruptedDataset, RobustnessResult, run_robustness
from kdforge.cli import main
from kdforge.config import load_config
from kdforge.data import Digits, build_datasets
from kdforge.data.transforms import CIFAR10_MEAN, CIFAR10_STD
from kdforge.engine.eval import evaluate_detector
from kdforge.engine.tasks import get_task
from kdforge.models import create_model


@pytest.fixture
def cifar_val(cifar10_root):
    return build_datasets("cifar10", cifar10_root)[1]


def test_corrupted_items_are_deterministic_per_seed_and_index(cifar_val):
    fog = CorruptedDataset(cifar_val, "fog", 3, seed=1)
    image, label = fog[5]
    assert label == cifar_val[5][1] and image.shape == cifar_val[5][0].shape
    assert torch.equal(image, fog[5][0])  # same index, same corruption, whatever came before
    assert torch.equal(image, CorruptedDataset(cifar_val, "fog", 3, seed=1)[5][0])
    assert not torch.equal(image, CorruptedDataset(cifar_val, "fog", 3, seed=2)[5][0])
    assert not torch.equal(fog[4][0], CorruptedDataset(cifar_val, "fog", 3, seed=1)[5][0])
    assert not torch.equal(image, cifar_val[5][0])
    assert fog.classes == cifar_val.classes and len(fog) == len(cifar_val)


def test_corruption_comes_before_normalisation(cifar_val):
    """Contrast severity 5 leaves ~5% of the contrast: the normalised image stays normalised."""
    image, _ = CorruptedDataset(cifar_val, "contrast", 5)[0]
    mean = torch.tensor(CIFAR10_MEAN)[:, None, None]
    std = torch.tensor(CIFAR10_STD)[:, None, None]
    pixels = image * std + mean  # back to [0, 1]
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert pixels.std(dim=(1, 2)).max() < 0.05
    assert cifar_val.transform is not None and cifar_val[0][0].std() > 0.3  # original intact


def test_tensor_datasets_are_corrupted_too():
    digits = Digits(train=False, size=16)
    noisy, _ = CorruptedDataset(digits, "gaussian_noise", 5)[0]
    assert noisy.shape == (3, 16, 16) and noisy.dtype == torch.float32
    assert noisy.min() >= 0 and noisy.max() <= 1 and (noisy - digits[0][0]).abs().mean() > 0.1


def test_detection_data_keeps_evaluating_with_coco(detection_overrides):
    cfg = load_config(None, detection_overrides)
    task = get_task("detection")
    val = task.build_datasets(cfg.data)[1]
    snow = CorruptedDataset(val, "snow", 2)
    image, target = snow[0]
    assert image.shape == val[0][0].shape and not torch.equal(image, val[0][0])
    assert torch.equal(target["boxes"], val[0][1]["boxes"])
    loader = torch.utils.data.DataLoader(snow, batch_size=2, collate_fn=task.collate)
    model = create_model("gfl_r18_fpn", num_classes=4, fpn_channels=64, feat_channels=64)
    metrics = evaluate_detector(model, loader, torch.device("cpu"))
    assert metrics["count"] == 4 and 0 <= metrics["AP"] <= 1


def test_mpc_and_rpc_follow_michaelis_et_al():
    result = RobustnessResult("AP", 0.4, {"fog": {1: 0.3, 2: 0.2}, "snow": {1: 0.1, 2: 0.2}})
    assert result.mpc == pytest.approx(0.2)
    assert result.rpc == pytest.approx(0.5)


def test_command_on_a_subset(tiny_overrides, tmp_path, capsys, check_png):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("student: {name: resnet8}\n")
    out = tmp_path / "rob"
    subset = ["--corruptions", "fog", "pixelate", "--severities", "1", "5", "--max-batches", "1"]
    main(["robustness", str(recipe), "--out", str(out), *subset, "--set", *tiny_overrides])
    printed = capsys.readouterr().out
    assert "mPC" in printed and "rPC" in printed
    rows = list(csv.reader((out / "robustness.csv").open()))
    assert rows[0] == ["corruption", "severity", "top1"] and rows[1][:2] == ["clean", "0"]
    scores = [float(r[2]) for r in rows[2:6]]
    assert [r[:2] for r in rows[2:6]] == [
        ["fog", "1"],
        ["fog", "5"],
        ["pixelate", "1"],
        ["pixelate", "5"],
    ]
    assert float(rows[6][2]) == pytest.approx(np.mean(scores)) and rows[6][0] == "mPC"
    clean, rpc = float(rows[1][2]), float(rows[7][2])  # an untrained model may score 0 clean
    assert rows[7][0] == "rPC"
    assert rpc == pytest.approx(np.mean(scores) / clean) if clean else np.isnan(rpc)
    check_png(out / "robustness.png", 300, 200)


def test_unknown_corruption_fails_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="valid: gaussian_noise"):
        run_robustness(tmp_path / "missing.yaml", None, tmp_path, corruptions=["rain"])
