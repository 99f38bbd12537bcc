"""The task pipelines: the primitives of ``transforms``, ``det_transforms`` and
``seg_transforms`` composed as the reference recipes compose them.

One function per pipeline (as torchvision's ``references/classification/presets.py``), each
returning the ``Compose`` a data set calls; the data set modules only read data. Random
steps keep their ``sample_params``/``apply`` split, so a teacher cache can record them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from PIL import Image

from kdforge.data import transforms as T
from kdforge.data._photometric import PhotoMetricDistortion
from kdforge.data.autoaugment import TrivialAugmentWide
from kdforge.data.det_augment import detr_train_augment
from kdforge.data.det_transforms import (
    CAFFE_MEAN,
    DetCompose,
    DetNormalize,
    DetRandomFlip,
    DetRandomResize,
    DetResize,
    Scale,
)
from kdforge.data.mixing import RandomErasing
from kdforge.data.seg_transforms import (
    SegCompose,
    SegNormalize,
    SegPad,
    SegRandomCrop,
    SegRandomFlip,
    SegRandomResize,
)
from kdforge.errors import ConfigError

__all__ = [
    "cifar_eval",
    "cifar_train",
    "classification_view",
    "detection_eval",
    "detection_train",
    "imagenet_eval",
    "imagenet_train",
    "segmentation_eval",
    "segmentation_train",
]


def cifar_train(
    mean: Sequence[float] = T.CIFAR100_MEAN, std: Sequence[float] = T.CIFAR100_STD
) -> T.Compose:
    """CIFAR training: pad-4 random crop to 32, flip, normalise."""
    return T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def cifar_eval(
    mean: Sequence[float] = T.CIFAR100_MEAN, std: Sequence[float] = T.CIFAR100_STD
) -> T.Compose:
    """CIFAR validation: normalise only (the images are 32x32 already)."""
    return T.Compose([T.ToTensor(), T.Normalize(mean, std)])


def imagenet_train(
    size: int = 224, auto_augment: str | None = None, random_erase: float = 0.0
) -> T.Compose:
    """ImageNet training, with torchvision's optional extras.

    RandomResizedCrop(size) + flip [+ TrivialAugmentWide (bilinear) when
    ``auto_augment="ta_wide"``] + normalise [+ RandomErasing(p=random_erase)].
    """
    if auto_augment not in (None, "ta_wide"):
        raise ConfigError(f"auto_augment must be None or 'ta_wide', got {auto_augment!r}")
    steps: list[Callable[[Any], Any]] = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
    if auto_augment == "ta_wide":
        steps.append(TrivialAugmentWide(interpolation="bilinear"))
    steps += [T.ToTensor(), T.Normalize(T.IMAGENET_MEAN, T.IMAGENET_STD)]
    if random_erase > 0:
        steps.append(RandomErasing(p=random_erase))
    return T.Compose(steps)


def imagenet_eval(size: int = 224, resize: int | None = None) -> T.Compose:
    """ImageNet validation: Resize(resize, default size * 256 / 224) + CenterCrop(size) +
    normalise, i.e. Resize(256) + CenterCrop(224) at the default size."""
    return T.Compose(
        [
            T.Resize(resize or round(size * 256 / 224)),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(T.IMAGENET_MEAN, T.IMAGENET_STD),
        ]
    )


def classification_view(
    name: str, options: Mapping[str, Any]
) -> tuple[Callable[[Image.Image], Image.Image], T.Normalize | None]:
    """Any image file as a classifier trained on data set ``name`` sees it:
    ``(PIL -> PIL at the model's input size, normalisation or None)``.

    ``options`` are the data set's (``image_size`` of ``imagefolder``, ``size`` of ``digits``).
    """
    if name == "imagefolder":
        size = int(options.get("image_size", 224))
        crop = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size)])
        return crop, T.Normalize(T.IMAGENET_MEAN, T.IMAGENET_STD)
    if name == "digits":
        size = int(options.get("size", 32))
        return T.Resize((size, size)), None
    cifar10 = name == "cifar10"
    mean = T.CIFAR10_MEAN if cifar10 else T.CIFAR100_MEAN
    std = T.CIFAR10_STD if cifar10 else T.CIFAR100_STD
    return T.Resize((32, 32)), T.Normalize(mean, std)


def _detection_normalize(kind: str) -> DetNormalize:
    if kind == "pytorch":  # RGB, ImageNet mean and std: torchvision backbones
        return DetNormalize()
    if kind == "caffe":  # BGR, CAFFE_MEAN, std 1: Detectron's caffe-style backbones
        return DetNormalize(CAFFE_MEAN, (1.0, 1.0, 1.0), to_bgr=True)
    raise ConfigError(f"normalize must be 'pytorch' or 'caffe', got {kind!r}")


def detection_train(
    scale: Scale = (1333, 800),
    train_scales: Sequence[Scale] | None = None,
    multiscale_mode: str = "range",
    normalize: str = "pytorch",
    augment: str = "resize_flip",
) -> DetCompose:
    """mmdetection's training pipeline: keep-ratio resize to ``scale`` (or
    ``DetRandomResize(train_scales, multiscale_mode)``, e.g. ``[(1333, 640), (1333, 800)]``),
    flip with p=0.5, normalise (``"pytorch"`` or ``"caffe"``). ``collate_detection`` pads.
    ``augment="detr"``: the DETR family's flip + random choice of multi-scale resize or
    resize-crop-resize (:func:`~kdforge.data.det_augment.detr_train_augment`) instead."""
    normalizer = _detection_normalize(normalize)
    if augment == "detr":
        return DetCompose([detr_train_augment(), normalizer])
    if augment != "resize_flip":
        raise ConfigError(f"augment must be 'resize_flip' or 'detr', got {augment!r}")
    resize = DetRandomResize(train_scales, multiscale_mode) if train_scales else DetResize(scale)
    return DetCompose([resize, DetRandomFlip(0.5), normalizer])


def detection_eval(scale: Scale = (1333, 800), normalize: str = "pytorch") -> DetCompose:
    """mmdetection's test pipeline: keep-ratio resize to ``scale``, normalise."""
    return DetCompose([DetResize(scale), _detection_normalize(normalize)])


def segmentation_train(
    crop_size: tuple[int, int] = (512, 1024),
    scale: tuple[int, int] = (2048, 1024),
    ratio_range: tuple[float, float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    flip_prob: float = 0.5,
    photometric: bool = True,
    ignore_index: int = 255,
) -> SegCompose:
    """mmsegmentation's Cityscapes training pipeline.

    Random resize (``scale × U(ratio_range)``, keep ratio), random crop ``crop_size``
    ``(h, w)`` with ``cat_max_ratio``, flip, photometric distortion, normalise, pad to
    ``crop_size`` (0 / ``ignore_index``).
    """
    return SegCompose(
        [
            SegRandomResize(scale, ratio_range),
            SegRandomCrop(crop_size, cat_max_ratio, ignore_index),
            SegRandomFlip(flip_prob),
            *([PhotoMetricDistortion()] if photometric else []),
            SegNormalize(),
            SegPad(crop_size, 0.0, ignore_index),
        ]
    )


def segmentation_eval() -> SegCompose:
    """mmsegmentation's test pipeline: normalise only (full resolution)."""
    return SegCompose([SegNormalize()])
