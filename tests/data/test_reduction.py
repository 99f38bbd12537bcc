"""CAT-KD's training-set reduction: the first n classes, the first rate·500 images of each."""

from __future__ import annotations

import numpy as np
import pytest

from kdforge.data import ReducedDataset, build_datasets, reduce_indices, write_fake_cifar


def test_keeps_the_first_images_of_the_first_classes_in_file_order():
    targets = [i % 5 for i in range(50)]  # 10 images per class, interleaved
    kept = reduce_indices(targets, num_classes=3, rate=0.5, per_class=10)
    assert kept == [0, 5, 10, 15, 20, 1, 6, 11, 16, 21, 2, 7, 12, 17, 22]


def test_full_cifar_layout_keeps_int_rate_times_500_per_class():
    rng = np.random.default_rng(0)
    targets = rng.permutation(np.repeat(np.arange(100), 500))
    assert sorted(reduce_indices(targets, 100)) == list(range(50_000))
    kept = reduce_indices(targets, 99, rate=1.0)  # the shipped study: class 99 left out
    assert len(kept) == 99 * 500 and 99 not in targets[kept]
    kept = reduce_indices(targets, 10, rate=0.333)  # int(500 * 0.333) = 166
    counts = np.bincount(targets[kept], minlength=100)
    assert counts[:10].tolist() == [166] * 10 and counts[10:].sum() == 0
    for c in range(10):  # the first 166 of the class, in data set order
        assert [i for i in kept if targets[i] == c] == np.flatnonzero(targets == c)[:166].tolist()


def test_small_classes_keep_what_they_have():
    assert reduce_indices([0, 1, 1, 2], num_classes=2, rate=1.0, per_class=500) == [0, 1, 2]


@pytest.mark.parametrize(("classes", "rate"), [(0, 1.0), (3, 0.0), (3, 1.5)])
def test_rejects_empty_or_inflated_reductions(classes, rate):
    with pytest.raises(ValueError):
        reduce_indices([0, 1, 2], classes, rate)


def test_cifar100_option_reduces_training_only(tmp_path):
    write_fake_cifar(tmp_path, "cifar100", num_train=300, num_test=20)  # 3 images per class
    train, val = build_datasets("cifar100", tmp_path, reserved_classes=10, reserved_rate=0.4)
    assert isinstance(train, ReducedDataset) and train.num_classes == 100  # all 100 outputs
    assert len(train) == 10 * 3 and sorted(set(train.targets)) == list(range(10))
    assert len(val) == 20
    image, label = train[4]
    assert tuple(image.shape) == (3, 32, 32) and label == train.targets[4]
    full, _ = build_datasets("cifar100", tmp_path)
    assert len(full) == 300 and not isinstance(full, ReducedDataset)
    with pytest.raises(ValueError, match="cannot keep 101 classes"):
        build_datasets("cifar100", tmp_path, reserved_classes=101)
