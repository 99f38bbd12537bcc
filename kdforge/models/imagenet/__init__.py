"""ImageNet classification zoo with torchvision-compatible state dicts.

Importing this package registers ``resnet18/34/50/101`` (He et al., 2016) and
``mobilenet_v2`` (Sandler et al., 2018) under the ``"imagenet"`` family.
"""

from kdforge.models.imagenet.mobilenetv2 import MobileNetV2, mobilenet_v2
from kdforge.models.imagenet.resnet import (
    ResNet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
)

__all__ = ["MobileNetV2", "ResNet", "mobilenet_v2", "resnet18", "resnet34", "resnet50", "resnet101"]
