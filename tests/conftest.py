"""Shared fixtures: small generated data sets in the standard on-disk formats."""

from __future__ import annotations

import pytest

from kdforge.data import write_fake_cifar


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory: pytest.TempPathFactory):
    """A generated CIFAR-10 folder (48 train / 24 test images) in the python-pickle format."""
    root = tmp_path_factory.mktemp("cifar10")
    write_fake_cifar(root, "cifar10", num_train=48, num_test=24, seed=0)
    return root


@pytest.fixture
def tiny_overrides(cifar10_root, tmp_path) -> list[str]:
    """Overrides that make any CIFAR recipe a seconds-long run on generated data."""
    return [
        "data.name=cifar10",
        f"data.root={cifar10_root}",
        "data.batch_size=8",
        "data.num_workers=0",
        "teacher.pretrained=null",
        "train.check_teacher=false",
        f"train.out_dir={tmp_path}",
        "train.name=run",
        "train.log_every=1",
    ]
