"""Classification data sets and transforms: ``build_datasets(name, root, **options)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from kdforge.data.cifar import CIFAR, write_fake_cifar
from kdforge.data.digits import Digits
from kdforge.data.imagefolder import IMAGE_EXTENSIONS, ImageFolder
from kdforge.data.reduction import ReducedDataset, reduce_indices
from kdforge.data.transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CenterCrop,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomTransform,
    Resize,
    ToTensor,
    cifar_transforms,
    imagenet_transforms,
)

__all__ = [
    "CIFAR",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "CenterCrop",
    "Compose",
    "Digits",
    "ImageFolder",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "RandomTransform",
    "ReducedDataset",
    "Resize",
    "ToTensor",
    "build_datasets",
    "cifar_transforms",
    "imagenet_transforms",
    "reduce_indices",
    "write_fake_cifar",
]

Pair = tuple[Dataset, Dataset]


def _need_root(name: str, root: str | Path | None) -> Path:
    if root is None:
        raise ValueError(f"data set {name!r} needs a root folder")
    return Path(root).expanduser()


def _cifar100(
    root: str | Path | None, reserved_classes: int | None = None, reserved_rate: float = 1.0
) -> Pair:
    train_tf, val_tf = cifar_transforms(CIFAR100_MEAN, CIFAR100_STD)
    path = _need_root("cifar100", root)
    train: Dataset = CIFAR(path, "cifar100", True, train_tf)
    if reserved_classes is not None or reserved_rate != 1.0:  # CAT-KD's training-set reduction
        train = ReducedDataset(train, reserved_classes, reserved_rate)
    return train, CIFAR(path, "cifar100", False, val_tf)


def _cifar10(root: str | Path | None) -> Pair:
    train_tf, val_tf = cifar_transforms(CIFAR10_MEAN, CIFAR10_STD)
    path = _need_root("cifar10", root)
    return CIFAR(path, "cifar10", True, train_tf), CIFAR(path, "cifar10", False, val_tf)


def _imagefolder(
    root: str | Path | None,
    image_size: int = 224,
    auto_augment: str | None = None,
    random_erase: float = 0.0,
    val_resize: int | None = None,
) -> Pair:
    path = _need_root("imagefolder", root)
    train_tf, val_tf = imagenet_transforms(image_size, auto_augment, random_erase, val_resize)
    train, val = ImageFolder(path / "train", train_tf), ImageFolder(path / "val", val_tf)
    if train.classes != val.classes:
        only = sorted(set(train.classes) ^ set(val.classes))
        raise ValueError(
            f"{str(path)!r}: train/ and val/ must have the same class folders; "
            f"only in one of them: {', '.join(only[:10])}"
        )
    return train, val


def _digits(
    root: str | Path | None = None, size: int = 32, test_fraction: float = 0.25, seed: int = 0
) -> Pair:
    return (
        Digits(True, size=size, test_fraction=test_fraction, seed=seed),
        Digits(False, size=size, test_fraction=test_fraction, seed=seed),
    )


DATASETS: dict[str, Callable[..., Pair]] = {
    "cifar100": _cifar100,
    "cifar10": _cifar10,
    "imagefolder": _imagefolder,
    "digits": _digits,
}


def build_datasets(name: str, root: str | Path | None = None, **options: Any) -> Pair:
    """Build ``(train, val)`` data sets with the standard transforms.

    Args:
        name: A key of ``DATASETS``: ``cifar100``, ``cifar10``, ``imagefolder`` (``root``
            holds ``train/`` and ``val/``, each in the ImageNet layout) or ``digits``
            (``root`` is ignored).
        root: The data folder.
        **options: ``image_size`` (imagefolder, default 224), ``auto_augment``
            (``"ta_wide"``), ``random_erase`` (probability), ``val_resize``; ``size``,
            ``test_fraction``,
            ``seed`` (digits); ``reserved_classes``, ``reserved_rate`` (cifar100: train on
            the first rate·500 images of the first n classes, see ``ReducedDataset``).

    Returns:
        ``(train, val)``; both have ``classes`` and ``num_classes``.
    """
    if name not in DATASETS:
        raise KeyError(f"unknown data set {name!r}; valid names: {', '.join(DATASETS)}")
    builder = DATASETS[name]
    allowed = [p for p in inspect.signature(builder).parameters if p != "root"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(
            f"build_datasets({name!r}): unknown option(s) {unknown}; valid: {allowed or 'none'}"
        )
    return builder(root, **options)
