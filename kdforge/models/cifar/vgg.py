"""VGG with batch normalisation for CIFAR (Simonyan & Zisserman, 2015).

Simonyan and Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015. The CIFAR variant of RepDistiller/mdistiller: five blocks of
3x3 conv-BN(-ReLU) layers (``block0`` .. ``block4``), max pooling between the first
four, global average pooling and a single 512 -> classes linear layer.

Parameter and buffer names (``block0.0.weight``, ``block0.1.running_mean``...,
``classifier.weight``) follow RepDistiller's ``models/vgg.py`` (``vgg*_bn``) so its
released teachers load with strict loading.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kdforge.models._registry import register_model

__all__ = ["VGG", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19"]

# Output channels of the 3x3 convolutions in each of the five blocks.
_CFGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": (
        (64, 64),
        (128, 128),
        (256, 256, 256, 256),
        (512, 512, 512, 512),
        (512, 512, 512, 512),
    ),
}


def _make_block(in_chs: int, widths: tuple[int, ...]) -> nn.Sequential:
    """conv-BN-ReLU per width, without the final ReLU (applied by the VGG's ``reluN``)."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_chs, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        in_chs = width
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """CIFAR VGG-BN: five conv blocks, four max pools, global average pool, ``classifier``.

    The fourth max pool (``pool3``) is used only for 64x64 inputs (Tiny-ImageNet), as
    in the reference, so a 32x32 input reaches ``block4`` at 4x4.

    Args:
        cfg: conv widths of each of the five blocks.
        num_classes: outputs of the final linear layer.

    Attributes:
        feature_info: the ReLU'd output of each block (the reference's ``feats``), read
            from the parameter-free ``relu0`` .. ``relu4`` modules (their forward-hook
            input is the pre-activation block output). The last one is pooled.
        classifier_name: module path of the final linear layer (``"classifier"``).
    """

    classifier_name = "classifier"

    def __init__(self, cfg: tuple[tuple[int, ...], ...], num_classes: int = 100) -> None:
        super().__init__()
        in_chs = 3
        self.feature_info: list[dict] = []
        for i, widths in enumerate(cfg):
            self.add_module(f"block{i}", _make_block(in_chs, widths))
            in_chs = widths[-1]
            self.feature_info.append(
                {"module": f"relu{i}", "num_chs": in_chs, "reduction": 2 ** min(i, 3)}
            )
        for i in range(4):
            self.add_module(f"pool{i}", nn.MaxPool2d(2, stride=2))
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        for i in range(5):
            self.add_module(f"relu{i}", nn.ReLU())
        self.classifier = nn.Linear(in_chs, num_classes)
        self.num_features = in_chs

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        """Return the final linear layer."""
        return self.classifier

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the ReLU'd ``block4`` feature map (before pooling)."""
        tiny_imagenet = x.shape[2] == 64
        x = self.pool0(self.relu0(self.block0(x)))
        x = self.pool1(self.relu1(self.block1(x)))
        x = self.pool2(self.relu2(self.block2(x)))
        x = self.relu3(self.block3(x))
        if tiny_imagenet:
            x = self.pool3(x)
        return self.relu4(self.block4(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool4(self.forward_features(x)), 1))


@register_model("vgg8", input_size=(3, 32, 32), family="cifar", num_classes=100)
def vgg8(num_classes: int = 100) -> VGG:
    """VGG-8-BN (Simonyan & Zisserman, 2015; RepDistiller's config "S"), 3.97M parameters."""
    return VGG(_CFGS["vgg8"], num_classes)


@register_model("vgg11", input_size=(3, 32, 32), family="cifar", num_classes=100)
def vgg11(num_classes: int = 100) -> VGG:
    """VGG-11-BN (Simonyan & Zisserman, 2015; config "A"), 9.28M parameters."""
    return VGG(_CFGS["vgg11"], num_classes)


@register_model("vgg13", input_size=(3, 32, 32), family="cifar", num_classes=100)
def vgg13(num_classes: int = 100) -> VGG:
    """VGG-13-BN (Simonyan & Zisserman, 2015; config "B"), 9.46M parameters."""
    return VGG(_CFGS["vgg13"], num_classes)


@register_model("vgg16", input_size=(3, 32, 32), family="cifar", num_classes=100)
def vgg16(num_classes: int = 100) -> VGG:
    """VGG-16-BN (Simonyan & Zisserman, 2015; config "D"), 14.77M parameters."""
    return VGG(_CFGS["vgg16"], num_classes)


@register_model("vgg19", input_size=(3, 32, 32), family="cifar", num_classes=100)
def vgg19(num_classes: int = 100) -> VGG:
    """VGG-19-BN (Simonyan & Zisserman, 2015; config "E"), 20.09M parameters."""
    return VGG(_CFGS["vgg19"], num_classes)
