"""The scikit-learn digits demo data set: shapes, range, split and determinism."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from kdforge.data import Digits, RandomHorizontalFlip, build_datasets


def test_shapes_range_and_classes() -> None:
    train, test = Digits(train=True), Digits(train=False)
    assert len(train) + len(test) == 1797
    assert abs(len(test) - 0.25 * 1797) <= 5
    assert train.classes == [str(i) for i in range(10)] and train.num_classes == 10
    for ds in (train, test):
        assert sorted(set(ds.targets)) == list(range(10))
        x, y = ds[0]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
        assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
        assert ds.images.min() >= 0.0 and ds.images.max() <= 1.0
        assert ds.images.max() > 0.9  # ink present: scaled from 0..16
    assert not set(train.indices) & set(test.indices)
    x, _ = train[0]
    x += 1  # items are copies, safe to change in place
    assert train.images.max() <= 1.0


def test_split_is_stratified_and_deterministic() -> None:
    a, b = Digits(seed=0), Digits(seed=0)
    assert a.indices == b.indices and torch.equal(a.images, b.images)
    assert Digits(seed=1).indices != a.indices
    test = Digits(train=False, test_fraction=0.5)
    counts = torch.bincount(torch.tensor(test.targets), minlength=10)
    assert counts.min() >= 85 and counts.max() <= 92  # about half of each ~180-image class
    with pytest.raises(ValueError, match="test_fraction"):
        Digits(test_fraction=1.0)


def test_size_transform_and_loader() -> None:
    ds = Digits(size=16, transform=RandomHorizontalFlip(p=1.0))
    x, _ = ds[3]
    assert x.shape == (3, 16, 16)
    torch.testing.assert_close(x, ds.images[3].flip(-1))
    assert Digits(size=8).images.shape[-2:] == (8, 8)

    batch, labels = next(iter(DataLoader(Digits(), batch_size=64, shuffle=False)))
    assert batch.shape == (64, 3, 32, 32) and labels.shape == (64,)


def test_build_datasets_digits() -> None:
    train, val = build_datasets("digits", None, size=24)
    assert train[0][0].shape == (3, 24, 24)
    assert train.num_classes == val.num_classes == 10 and train.classes == val.classes
    assert len(train) + len(val) == 1797
