"""ImageNet classification zoo with torchvision-compatible state dicts.

Importing this package registers ``resnet18/34/50/101`` (He et al., 2016),
``mobilenet_v2`` (Sandler et al., 2018) and ``mobilenet_v1`` (Howard et al., 2017; keys
follow mdistiller) under the ``"imagenet"`` family.
"""

from kdforge.models.imagenet.mobilenetv1 import MobileNetV1, mobilenet_v1
from kdforge.models.imagenet.mobilenetv2 import MobileNetV2, mobilenet_v2
from kdforge.models.imagenet.resnet import (
    ResNet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
)

__all__ = [
    "MobileNetV1",
    "MobileNetV2",
    "ResNet",
    "mobilenet_v1",
    "mobilenet_v2",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
]
