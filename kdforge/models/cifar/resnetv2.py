"""ResNet-50 for CIFAR (He et al., 2016), the ``ResNet50`` of RepDistiller/mdistiller.

He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
The ImageNet layout ([3, 4, 6, 3] Bottlenecks, 256..2048 channels) with a 3x3 stride-1
stem and no max pool, so a 32x32 input ends at 4x4.

Parameter and buffer names (``layer1.0.shortcut.0.weight``..., ``linear.weight``)
follow RepDistiller's ``models/resnetv2.py`` so its released teacher loads with strict
loading.
"""

from __future__ import annotations

import torch
from torch import nn

from kdforge.models._registry import register_model

__all__ = ["Bottleneck", "ResNet", "ResNet50"]


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with an identity or projected shortcut."""

    expansion = 4

    def __init__(self, in_chs: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_chs = width * self.expansion
        self.conv1 = nn.Conv2d(in_chs, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        # An empty Sequential is the identity and holds no keys, as in the reference.
        self.shortcut = nn.Sequential()
        if stride != 1 or in_chs != out_chs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_chs),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Four-stage Bottleneck ResNet with a CIFAR stem (3x3, stride 1, no max pool).

    Args:
        depths: number of Bottlenecks in each of the four stages.
        num_classes: outputs of the final linear layer.

    Attributes:
        feature_info: stem and stage outputs (the reference's ``feats``), each a dict
            with ``module``, ``num_chs`` and ``reduction``; the last one is pooled.
        classifier_name: module path of the final linear layer (``"linear"``).
    """

    classifier_name = "linear"

    def __init__(self, depths: tuple[int, int, int, int], num_classes: int = 100) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.feature_info: list[dict] = [{"module": "relu", "num_chs": 64, "reduction": 1}]
        in_chs = 64
        for i, depth in enumerate(depths):
            width, stride = 64 * 2**i, 1 if i == 0 else 2
            blocks = []
            for j in range(depth):
                blocks.append(Bottleneck(in_chs, width, stride if j == 0 else 1))
                in_chs = width * Bottleneck.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.feature_info.append(
                {"module": f"layer{i + 1}", "num_chs": in_chs, "reduction": 2**i}
            )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_chs, num_classes)
        self.num_features = in_chs

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        """Return the final linear layer."""
        return self.linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the ``layer4`` feature map (before pooling)."""
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(self.avgpool(self.forward_features(x)), 1))


@register_model("ResNet50", input_size=(3, 32, 32), family="cifar", num_classes=100)
def ResNet50(num_classes: int = 100) -> ResNet:
    """ResNet-50 for CIFAR (He et al., 2016): Bottlenecks [3, 4, 6, 3], 23.71M parameters."""
    return ResNet((3, 4, 6, 3), num_classes)
