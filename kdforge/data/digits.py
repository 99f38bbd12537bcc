"""scikit-learn's 8x8 handwritten digits, upsampled: a tiny offline data set for demos."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["Digits", "stratified_split"]


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32) / 16.0, bunch.target.astype(np.int64)


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split: ``round(n_c * test_fraction)`` of each class go to test.

    Returns sorted ``(train_indices, test_indices)``; uses a local ``numpy`` generator.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = round(len(idx) * test_fraction)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


class Digits(Dataset):
    """The 1797 scikit-learn digits as ``size``x``size`` RGB tensors, no download needed.

    Images are scaled to [0, 1], upsampled bilinearly and repeated over 3 channels; all of a
    split is computed once in the constructor.

    Args:
        train: Training split if true, else the test split.
        size: Output height and width.
        transform: Called on the ``(3, size, size)`` float tensor (not a PIL image).
        test_fraction: Fraction of each class held out for the test split.
        seed: Seed of the split; the same seed and fraction give the same split.

    Attributes:
        images: ``(N, 3, size, size)`` float tensor (a channel-expanded view).
        targets: labels. classes: ``["0", ..., "9"]``.
    """

    def __init__(
        self,
        train: bool = True,
        size: int = 32,
        transform: Callable[[torch.Tensor], Any] | None = None,
        test_fraction: float = 0.25,
        seed: int = 0,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        images, labels = _load_digits()
        train_idx, test_idx = stratified_split(labels, test_fraction, seed)
        idx = train_idx if train else test_idx
        grey = torch.from_numpy(images[idx]).unsqueeze(1)
        if size != 8:
            grey = F.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False)
        self.images: torch.Tensor = grey.clamp_(0.0, 1.0).expand(-1, 3, -1, -1)
        self.targets: list[int] = labels[idx].tolist()
        self.indices: list[int] = idx.tolist()  # positions in sklearn's load_digits()
        self.classes: list[str] = [str(i) for i in range(10)]
        self.train = train
        self.size = size
        self.transform = transform

    @property
    def num_classes(self) -> int:
        """Always 10."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = self.images[index].contiguous()
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]

    def __repr__(self) -> str:
        split = "train" if self.train else "test"
        return f"Digits(split={split}, n={len(self)}, size={self.size})"
