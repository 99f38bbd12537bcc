"""Mixup (soft targets, torchvision's draws, DataLoader collate) and random erasing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from kdforge.data.mixing import Mixup, MixupCollate, RandomErasing


def test_mixup_mixes_with_the_previous_sample_and_gives_soft_targets() -> None:
    images, labels = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 2, 2, 2), torch.tensor([0, 1, 2])
    mixed, soft = Mixup(num_classes=4).apply((images, labels), 0.75)
    assert mixed[:, 0, 0, 0].tolist() == [0.75 * 0 + 0.25 * 2, 0.75 * 1 + 0.25 * 0, 0.75 * 2 + 0.25]
    assert soft.tolist() == [
        [0.75, 0.0, 0.25, 0.0],
        [0.25, 0.75, 0.0, 0.0],
        [0.0, 0.25, 0.75, 0.0],
    ]
    unmixed, one_hot = Mixup(num_classes=4).apply((images, labels), None)
    assert unmixed is images and one_hot.tolist()[2] == [0.0, 0.0, 1.0, 0.0]
    loss = F.cross_entropy(torch.randn(3, 4), soft, label_smoothing=0.1)  # soft targets work
    assert math.isfinite(loss.item())


def test_mixup_draws_as_torchvision() -> None:
    mixup = Mixup(num_classes=10, alpha=0.2)
    lams = []
    for seed in range(50):
        torch.manual_seed(seed)
        lam = mixup.sample_params()
        torch.manual_seed(seed)
        assert torch.rand(1).item() < 1.0  # RandomMixup draws its p first
        assert lam == float(torch._sample_dirichlet(torch.tensor([0.2, 0.2]))[0])
        lams.append(lam)
    assert sum(min(x, 1 - x) < 0.1 for x in lams) > 25  # Beta(0.2, 0.2) is U-shaped
    torch.manual_seed(0)
    assert Mixup(num_classes=10, p=0.0).sample_params() is None
    with pytest.raises(ValueError, match="alpha"):
        Mixup(num_classes=10, alpha=0.0)


def test_mixup_collate_in_a_dataloader() -> None:
    data = TensorDataset(torch.randn(6, 3, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2]))
    loader = DataLoader(data, batch_size=3, collate_fn=MixupCollate(num_classes=3))
    for images, targets in loader:
        assert images.shape == (3, 3, 4, 4) and targets.shape == (3, 3)
        torch.testing.assert_close(targets.sum(1), torch.ones(3))


def test_random_erasing_erases_one_box_within_the_ranges() -> None:
    img = torch.ones(3, 40, 50)
    assert RandomErasing(p=0.0)(img) is img
    erase = RandomErasing(p=1.0)
    for seed in range(30):
        torch.manual_seed(seed)
        (top, left, h, w), fill = erase.sample_params(img)
        torch.manual_seed(seed)
        out = erase(img)
        zero = (out == 0).all(0)
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (
            top, top + h, left, left + w
        )  # fmt: skip
        assert zero.sum() == h * w and 0.015 < h * w / 2000 < 0.34
        assert 0.25 < h / w < 3.6 and fill.shape == (1, 1, 1)
        assert (img == 1).all()  # not in place


def test_random_erasing_values_and_failures() -> None:
    torch.manual_seed(0)
    noisy = RandomErasing(p=1.0, value="random")(torch.full((3, 32, 32), 9.0))
    erased = noisy != 9.0
    assert erased.any() and noisy[erased].abs().max() < 9.0
    per_channel = RandomErasing(p=1.0, value=(1.0, 2.0, 3.0))(torch.zeros(3, 32, 32))
    assert set(per_channel[2].unique().tolist()) == {0.0, 3.0}
    torch.manual_seed(0)
    assert RandomErasing(p=1.0, scale=(0.9, 0.95)).sample_params(torch.zeros(3, 4, 4)) is None
    with pytest.raises(ValueError, match="random"):
        RandomErasing(value="noise")
