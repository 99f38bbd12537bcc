"""CIFAR classification zoo with RepDistiller/mdistiller-compatible state dicts.

Importing this package registers, under the ``"cifar"`` family (32x32 inputs, 100
classes by default): ``resnet8/14/20/32/44/56/110``, ``resnet8x4``, ``resnet32x4``,
``wrn_16_1/16_2/40_1/40_2``, ``vgg8/11/13/16/19`` (BN variants), ``ResNet50``,
``MobileNetV2`` (width 0.5), ``ShuffleV1`` and ``ShuffleV2``. Their parameter and buffer
names match RepDistiller's, so its released ``ckpt_epoch_240.pth`` teachers load with
``create_model(name, pretrained=path)``.

Every model's ``forward`` returns the logits only. ``model.feature_info`` lists the
modules whose outputs are the intermediate feature maps (for forward hooks), the last one
being the map that is globally average-pooled into ``model.get_classifier()``
(module path ``model.classifier_name``).
"""

from kdforge.models.cifar.mobilenetv2 import MobileNetV2, mobile_half
from kdforge.models.cifar.resnet import (
    resnet8,
    resnet8x4,
    resnet14,
    resnet20,
    resnet32,
    resnet32x4,
    resnet44,
    resnet56,
    resnet110,
)
from kdforge.models.cifar.resnetv2 import ResNet50
from kdforge.models.cifar.shufflenetv1 import ShuffleNet, ShuffleV1
from kdforge.models.cifar.shufflenetv2 import ShuffleNetV2, ShuffleV2
from kdforge.models.cifar.vgg import VGG, vgg8, vgg11, vgg13, vgg16, vgg19
from kdforge.models.cifar.wrn import WideResNet, wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2

__all__ = [
    "VGG",
    "MobileNetV2",
    "ResNet50",
    "ShuffleNet",
    "ShuffleNetV2",
    "ShuffleV1",
    "ShuffleV2",
    "WideResNet",
    "mobile_half",
    "resnet8",
    "resnet8x4",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet32x4",
    "resnet44",
    "resnet56",
    "resnet110",
    "vgg8",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
]
