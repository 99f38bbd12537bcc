"""Data sets (reading files), transforms (primitives), presets (task pipelines), samplers.

``build_datasets(name, root, **options)`` gives classification ``(train, val)`` data sets;
``build_coco_datasets`` and ``build_segmentation_datasets`` those of detection and
segmentation. Files are decoded by :mod:`.decode`; what a data set does with one it cannot
use is its ``on_bad_sample`` (:mod:`.bad_samples`); :mod:`.check` checks a whole data set.
"""

from kdforge.data.bad_samples import (
    ON_BAD_SAMPLE,
    DataProblems,
    DataWarning,
    SampleError,
    skipped_samples,
)
from kdforge.data.build import (
    DATASETS,
    build_coco_datasets,
    build_datasets,
    build_segmentation_datasets,
)
from kdforge.data.cifar import CIFAR, write_fake_cifar
from kdforge.data.decode import decode_image, decode_image_cv, decode_mask
from kdforge.data.digits import Digits
from kdforge.data.imagefolder import IMAGE_EXTENSIONS, ImageFolder
from kdforge.data.reduction import ReducedDataset, reduce_indices
from kdforge.data.samplers import (
    AspectRatioBatchSampler,
    drop_last_needed,
    last_batch_size,
    portrait_flags,
)
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
    "ON_BAD_SAMPLE",
    "AspectRatioBatchSampler",
    "CenterCrop",
    "Compose",
    "DataProblems",
    "DataWarning",
    "Digits",
    "ImageFolder",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "RandomTransform",
    "ReducedDataset",
    "Resize",
    "SampleError",
    "ToTensor",
    "build_coco_datasets",
    "build_datasets",
    "build_segmentation_datasets",
    "decode_image",
    "decode_image_cv",
    "decode_mask",
    "drop_last_needed",
    "last_batch_size",
    "portrait_flags",
    "reduce_indices",
    "skipped_samples",
    "write_fake_cifar",
]
