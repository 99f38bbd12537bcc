"""Data sets (reading files), transforms (primitives), presets (task pipelines), samplers.

``build_datasets(name, root, **options)`` gives classification ``(train, val)`` data sets;
``build_coco_datasets`` and ``build_segmentation_datasets`` those of detection and
segmentation.
"""

from kdforge.data.build import (
    DATASETS,
    build_coco_datasets,
    build_datasets,
    build_segmentation_datasets,
)
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
    "build_coco_datasets",
    "build_datasets",
    "build_segmentation_datasets",
    "reduce_indices",
    "write_fake_cifar",
]
