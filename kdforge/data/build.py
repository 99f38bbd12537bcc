"""``(train, val)`` data sets by name: a data set module reads the files, a preset of
:mod:`kdforge.data.presets` builds each split's pipeline."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from kdforge.data import presets
from kdforge.data.bad_samples import check_policy
from kdforge.data.cifar import CIFAR
from kdforge.data.cityscapes import Cityscapes, SegmentationFolder
from kdforge.data.coco import CocoDetection
from kdforge.data.det_transforms import Scale
from kdforge.data.digits import Digits
from kdforge.data.imagefolder import ImageFolder
from kdforge.data.reduction import ReducedDataset
from kdforge.data.transforms import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from kdforge.errors import ConfigError, DataError

__all__ = ["DATASETS", "build_coco_datasets", "build_datasets", "build_segmentation_datasets"]

Pair = tuple[Dataset, Dataset]


def _need_root(name: str, root: str | Path | None) -> Path:
    if root is None:
        raise ConfigError(f"data set {name!r} needs a root folder (data.root)")
    return Path(root).expanduser()


def _cifar100(
    root: str | Path | None, reserved_classes: int | None = None, reserved_rate: float = 1.0
) -> Pair:
    path = _need_root("cifar100", root)
    train: Dataset = CIFAR(path, "cifar100", True, presets.cifar_train(CIFAR100_MEAN, CIFAR100_STD))
    if reserved_classes is not None or reserved_rate != 1.0:  # CAT-KD's training-set reduction
        train = ReducedDataset(train, reserved_classes, reserved_rate)
    return train, CIFAR(path, "cifar100", False, presets.cifar_eval(CIFAR100_MEAN, CIFAR100_STD))


def _cifar10(root: str | Path | None) -> Pair:
    path = _need_root("cifar10", root)
    return (
        CIFAR(path, "cifar10", True, presets.cifar_train(CIFAR10_MEAN, CIFAR10_STD)),
        CIFAR(path, "cifar10", False, presets.cifar_eval(CIFAR10_MEAN, CIFAR10_STD)),
    )


def _imagefolder(
    root: str | Path | None,
    image_size: int = 224,
    auto_augment: str | None = None,
    random_erase: float = 0.0,
    val_resize: int | None = None,
    on_bad_sample: str = "error",
) -> Pair:
    path = _need_root("imagefolder", root)
    if path.is_dir() and not (path / "train").is_dir():
        inside = sorted(d.name for d in path.iterdir() if d.is_dir())[:5]
        raise DataError(
            f"data.root {str(path)!r} has no train/ folder (it holds {inside or 'no folders'}): "
            "for imagefolder, data.root holds train/ and val/, each with one sub-folder per "
            "class"
        )
    train_tf = presets.imagenet_train(image_size, auto_augment, random_erase)
    val_tf = presets.imagenet_eval(image_size, val_resize)
    train, val = (
        ImageFolder(path / split, tf, on_bad_sample=on_bad_sample)
        for split, tf in (("train", train_tf), ("val", val_tf))
    )
    if train.classes != val.classes:
        only = sorted(set(train.classes) ^ set(val.classes))
        raise DataError(
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
    """Classification ``(train, val)`` data sets with the standard pipelines.

    Args:
        name: A key of ``DATASETS``: ``cifar100``, ``cifar10``, ``imagefolder`` (``root``
            holds ``train/`` and ``val/``, each in the ImageNet layout) or ``digits``
            (``root`` is ignored).
        root: The data folder.
        **options: ``image_size`` (imagefolder, default 224), ``auto_augment``
            (``"ta_wide"``), ``random_erase`` (probability), ``val_resize``; ``size``,
            ``test_fraction``, ``seed`` (digits); ``reserved_classes``, ``reserved_rate``
            (cifar100: train on the first rate·500 images of the first n classes, see
            ``ReducedDataset``); ``on_bad_sample`` (``"error"`` or ``"skip"``; data sets
            read from memory, CIFAR and digits, have no bad samples and ignore it).

    Returns:
        ``(train, val)``; both have ``classes`` and ``num_classes``.
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown data set {name!r}; valid names: {', '.join(DATASETS)}")
    builder = DATASETS[name]
    allowed = [p for p in inspect.signature(builder).parameters if p != "root"]
    policy = check_policy(options.pop("on_bad_sample", "error"))
    if "on_bad_sample" in allowed:
        options["on_bad_sample"] = policy
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"data set {name!r}: unknown option(s) {unknown}; valid: {allowed or 'none'}"
        )
    return builder(root, **options)


def build_coco_datasets(
    root: str | Path,
    train_split: str = "train2017",
    val_split: str = "val2017",
    scale: Scale = (1333, 800),
    train_scales: Sequence[Scale] | None = None,
    multiscale_mode: str = "range",
    normalize: str = "pytorch",
    on_bad_sample: str = "error",
    with_masks: bool = False,
    augment: str = "resize_flip",
    filter_empty_gt: bool = True,
) -> tuple[CocoDetection, CocoDetection]:
    """``(train, val)`` from ``root/annotations/instances_<split>.json`` and ``root/<split>/``.

    Training drops images without annotations or under 32 px; see
    :func:`~kdforge.data.presets.detection_train` for ``scale``, ``train_scales``,
    ``multiscale_mode`` and ``normalize``, and :mod:`kdforge.data.bad_samples` for
    ``on_bad_sample``. ``with_masks`` gives the training items instance ``masks`` (Mask
    R-CNN; mask AP is computed from the validation JSON, so validation items go without).
    ``augment="detr"`` trains with the DETR family's augmentation (``scale`` stays the
    validation size); ``filter_empty_gt=False`` keeps training images without boxes (DINO).
    Batch the items with ``collate_detection``.
    """
    root = Path(root).expanduser()
    ann = root / "annotations"
    train = CocoDetection(
        root / train_split,
        ann / f"instances_{train_split}.json",
        presets.detection_train(scale, train_scales, multiscale_mode, normalize, augment),
        filter_empty_gt=filter_empty_gt,
        min_size=32,
        on_bad_sample=on_bad_sample,
        with_masks=with_masks,
    )
    val_tf = presets.detection_eval(scale, normalize)
    val_ann = ann / f"instances_{val_split}.json"
    return train, CocoDetection(root / val_split, val_ann, val_tf, on_bad_sample=on_bad_sample)


def build_segmentation_datasets(
    root: str | Path,
    layout: str = "cityscapes",
    classes: Sequence[str] | int | None = None,
    image_dir: str = "images/{split}",
    mask_dir: str = "masks/{split}",
    splits: tuple[str, str] = ("train", "val"),
    on_bad_sample: str = "error",
    **pipeline: Any,
) -> tuple[SegmentationFolder, SegmentationFolder]:
    """``(train, val)`` data sets with mmsegmentation's pipelines.

    Args:
        root: the data folder.
        layout: ``"cityscapes"`` (official layout, 19 classes) or ``"folder"``
            (``root/image_dir`` + ``root/mask_dir``, ``{split}`` filled in; the shapes
            generator's layout is ``image_dir="{split}"``, ``mask_dir="masks/{split}"``).
        classes: class names, or their number (named ``class_0`` ...); needed for
            ``"folder"``.
        image_dir: image folder below ``root`` (``"folder"`` layout).
        mask_dir: mask folder below ``root`` (``"folder"`` layout).
        splits: the training and validation split names.
        on_bad_sample: ``"error"`` or ``"skip"`` unusable pairs (:mod:`~kdforge.data.bad_samples`).
        **pipeline: :func:`~kdforge.data.presets.segmentation_train` options
            (``crop_size``, ``scale``, ``ratio_range``, ``cat_max_ratio``, ``flip_prob``,
            ``photometric``, ``ignore_index``).
    """
    train_tf, val_tf = presets.segmentation_train(**pipeline), presets.segmentation_eval()
    root = Path(root).expanduser()
    checks = {"ignore_index": pipeline.get("ignore_index", 255), "on_bad_sample": on_bad_sample}
    if layout == "cityscapes":
        return (
            Cityscapes(root, splits[0], train_tf, **checks),
            Cityscapes(root, splits[1], val_tf, **checks),
        )
    if layout != "folder":
        raise ConfigError(f"layout must be 'cityscapes' or 'folder', got {layout!r}")
    if classes is None:
        raise ConfigError(
            "the 'folder' layout (data.name=segfolder) needs classes: set "
            "data.options.classes to the class names, or their number"
        )
    names = [f"class_{i}" for i in range(classes)] if isinstance(classes, int) else classes
    train, val = (
        SegmentationFolder(
            root / image_dir.format(split=split),
            root / mask_dir.format(split=split),
            tf,
            names,
            **checks,
        )
        for split, tf in zip(splits, (train_tf, val_tf), strict=True)
    )
    return train, val
