"""CIFAR ResNets (He et al., 2016) as used by RepDistiller and mdistiller.

He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
Section 4.2: a 3x3 stem and three stages of ``n`` BasicBlocks at 32x32, 16x16 and 8x8,
depth ``6n + 2``. The ``x4`` variants (resnet8x4, resnet32x4) of Tian et al. (2020,
CRD) widen the stages to 64/128/256 channels after a 32-channel stem.

Parameter and buffer names follow RepDistiller's ``models/resnet.py`` so its released
teachers (``ckpt_epoch_240.pth``) load with strict loading.
"""

from __future__ import annotations

import torch
from torch import nn

from kdforge.models._registry import register_model

__all__ = [
    "BasicBlock",
    "ResNet",
    "resnet8",
    "resnet8x4",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet32x4",
    "resnet44",
    "resnet56",
    "resnet110",
]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut, ReLU after the sum."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_chs),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + shortcut)


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem, three BasicBlock stages, global average pool, ``fc``.

    Args:
        depth: ``6n + 2`` (8, 14, 20, 32, 44, 56, 110).
        widths: channels of the stem and of the three stages.
        num_classes: outputs of the final linear layer.

    Attributes:
        feature_info: stem and stage outputs (the reference's ``feats``), each a dict
            with ``module``, ``num_chs`` and ``reduction``; the last one is pooled.
        classifier_name: module path of the final linear layer (``"fc"``).
    """

    classifier_name = "fc"

    def __init__(
        self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.feature_info: list[dict] = [{"module": "relu", "num_chs": widths[0], "reduction": 1}]
        in_chs = widths[0]
        for i, width in enumerate(widths[1:]):
            stride = 1 if i == 0 else 2
            blocks = [
                BasicBlock(in_chs if j == 0 else width, width, stride if j == 0 else 1)
                for j in range(n)
            ]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.feature_info.append(
                {"module": f"layer{i + 1}", "num_chs": width, "reduction": 2**i}
            )
            in_chs = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_chs, num_classes)
        self.num_features = in_chs

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        """Return the final linear layer."""
        return self.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the ``layer3`` feature map (before pooling)."""
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


@register_model("resnet8", input_size=(3, 32, 32), family="cifar", num_classes=100)
def resnet8(num_classes: int = 100) -> ResNet:
    """ResNet-8 for CIFAR (He et al., 2016): 1 block per stage, 0.08M parameters."""
    return ResNet(8, _NARROW, num_classes)


@register_model("resnet14", input_size=(3, 32, 32), family="cifar", num_classes=100)
def resnet14(num_classes: int = 100) -> ResNet:
    """ResNet-14 for CIFAR (He et al., 2016): 2 blocks per stage, 0.18M parameters."""
    return ResNet(14, _NARROW, num_classes)


@register_model("resnet20", input_size=(3, 32, 32), family="cifar", num_classes=100)
def resnet20(num_classes: int = 100) -> ResNet:
    """ResNet-20 for CIFAR (He et al., 2016): 3 blocks per stage, 0.28M parameters."""
    return ResNet(20, _NARROW, num_classes)


@register_model("resnet32", input_size=(3, 32, 32), family="cifar", num_classes=100)
def resnet32(num_classes: int = 100) -> ResNet:
    """ResNet-32 for CIFAR (He et al., 2016): 5 blocks per stage, 0.47M parameters."""
    return ResNet(32, _NARROW, num_classes)


@register_model("resnet44", input_size=(3, 32, 32), family="cifar", num_classes=100)
def resnet44(num_classes: int = 100) -> ResNet:
    """ResNet-44 for CIFAR (He et al., 2016): 7 blocks per stage, 0.67M parameters."""
    return ResNet(44, _NARROW, num_classes)


@register_model("resnet56", input_size=(3, 32, 32), family="cifar", num_classes=100)
def resnet56(num_classes: int = 100) -> ResNet:
    """ResNet-56 for CIFAR (He et al., 2016): 9 blocks per stage, 0.86M parameters."""
    return ResNet(56, _NARROW, num_classes)


@register_model("resnet110", input_size=(3, 32, 32), family="cifar", num_classes=100)
def resnet110(num_classes: int = 100) -> ResNet:
    """ResNet-110 for CIFAR (He et al., 2016): 18 blocks per stage, 1.74M parameters."""
    return ResNet(110, _NARROW, num_classes)


@register_model("resnet8x4", input_size=(3, 32, 32), family="cifar", num_classes=100)
def resnet8x4(num_classes: int = 100) -> ResNet:
    """ResNet-8 with 4x wider stages (64/128/256), 1.23M parameters."""
    return ResNet(8, _WIDE, num_classes)


@register_model("resnet32x4", input_size=(3, 32, 32), family="cifar", num_classes=100)
def resnet32x4(num_classes: int = 100) -> ResNet:
    """ResNet-32 with 4x wider stages (64/128/256), 7.43M parameters."""
    return ResNet(32, _WIDE, num_classes)
