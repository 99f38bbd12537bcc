"""Training-set reduction of the CAT-KD studies: fewer classes, fewer images per class.

Guo et al., "Class Attention Transfer Based Knowledge Distillation", CVPR 2023, study CAT
on a reduced CIFAR-100 (official ``reduce()`` in ``mdistiller/dataset/cifar100.py``, keys
``DATASET.REDUCTION`` / ``RESERVED_CLASS_NUM`` / ``RESERVED_RATE``).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from kdforge.errors import ConfigError

__all__ = ["ReducedDataset", "reduce_indices"]


def reduce_indices(
    targets: Sequence[int], num_classes: int, rate: float = 1.0, per_class: int = 500
) -> list[int]:
    """Indices of the first ``int(rate · per_class)`` images of each class ``< num_classes``.

    Classes are kept by label (``0 .. num_classes − 1``) and each class's images in data set
    order. The official code takes ``rate · 500`` entries per class from
    ``np.argsort(targets)``, whose default sort is not stable: for ``rate < 1`` its choice
    inside a class depends on the numpy build, so the stable file order is used here. With
    ``rate = 1`` (the shipped study) the subsets are identical. A class with fewer than
    ``per_class`` images keeps what it has (the official code assumes exactly 500).

    Args:
        targets: the label of every image.
        num_classes: keep classes ``0 .. num_classes − 1`` (``RESERVED_CLASS_NUM``).
        rate: fraction of ``per_class`` images kept per class (``RESERVED_RATE``).
        per_class: images per class in the full set (500 for CIFAR-100).

    Returns:
        Sorted by class, then by position in the data set.
    """
    if num_classes < 1:
        raise ConfigError(f"reduction keeps at least one class, got num_classes={num_classes}")
    if not 0.0 < rate <= 1.0:
        raise ConfigError(f"reduction rate must be in (0, 1], got {rate}")
    labels = np.asarray(targets)
    order = np.argsort(labels, kind="stable")  # by class, file order inside a class
    keep = int(rate * per_class)
    starts = np.searchsorted(labels[order], np.arange(num_classes + 1))
    chunks = [order[lo : min(hi, lo + keep)] for lo, hi in pairwise(starts)]
    return np.concatenate(chunks).tolist()


class ReducedDataset(Dataset):
    """A subset of a classification data set, made by :func:`reduce_indices`.

    ``classes`` and ``num_classes`` stay those of the full set, so models keep all outputs
    (as in the official study, where the reduced training set still feeds a 100-way
    classifier and the test set is not reduced).

    Args:
        dataset: a data set with ``targets``, ``classes`` and ``num_classes``.
        num_classes: classes kept; None keeps them all.
        rate: fraction of ``per_class`` images kept per class.
        per_class: images per class in the full set.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_classes: int | None = None,
        rate: float = 1.0,
        per_class: int = 500,
    ) -> None:
        self.dataset = dataset
        self.classes: list[str] = list(dataset.classes)
        kept = len(self.classes) if num_classes is None else num_classes
        if kept > len(self.classes):
            raise ConfigError(f"cannot keep {kept} classes of a data set with {len(self.classes)}")
        self.indices = reduce_indices(dataset.targets, kept, rate, per_class)
        self.targets: list[int] = [int(dataset.targets[i]) for i in self.indices]

    @property
    def num_classes(self) -> int:
        """Classes of the full data set (the model's outputs)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.dataset[self.indices[index]]

    def __repr__(self) -> str:
        return f"ReducedDataset({self.dataset!r}, n={len(self)})"
