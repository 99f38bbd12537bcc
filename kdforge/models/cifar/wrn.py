"""Wide Residual Networks for CIFAR (Zagoruyko & Komodakis, 2016).

Zagoruyko and Komodakis, "Wide Residual Networks", BMVC 2016. WRN-d-k has a 3x3 stem
and three stages of ``(d - 4) / 6`` pre-activation blocks with ``16k``, ``32k`` and
``64k`` channels, then BN-ReLU, global average pooling and a linear layer.

Parameter and buffer names (``block1.layer.0.convShortcut``...) follow RepDistiller's
``models/wrn.py`` so its released teachers load with strict loading.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.models._registry import register_model

__all__ = [
    "NetworkBlock",
    "WideBasicBlock",
    "WideResNet",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
]


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3 twice, 1x1 projection when widths differ.

    When the width changes, the projection is applied to the pre-activated input (as in
    the reference), otherwise the raw input is added back.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.convShortcut: nn.Module | None = None  # reference name, kept for the keys
        if in_chs != out_chs:
            self.convShortcut = nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    """One stage: ``num_blocks`` blocks in ``self.layer``, the first one strided."""

    def __init__(
        self, num_blocks: int, in_chs: int, out_chs: int, stride: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBasicBlock(
                    in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1, drop_rate
                )
                for i in range(num_blocks)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen_factor for 32x32 inputs.

    Args:
        depth: ``6n + 4`` (16, 22, 28, 40...).
        widen_factor: channel multiplier ``k``.
        num_classes: outputs of the final linear layer.
        drop_rate: dropout between the two convolutions of each block.

    Attributes:
        feature_info: the reference's ``feats`` (stem and the three stage outputs, which
            are pre-activation in a WRN), then ``relu``, the post-BN-ReLU map that is
            pooled. Dicts with ``module``, ``num_chs`` and ``reduction``.
        classifier_name: module path of the final linear layer (``"fc"``).
    """

    classifier_name = "fc"

    def __init__(
        self, depth: int, widen_factor: int = 1, num_classes: int = 100, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        chs = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, chs[0], 3, padding=1, bias=False)
        self.block1 = NetworkBlock(n, chs[0], chs[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, chs[1], chs[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, chs[2], chs[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(chs[3])
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(chs[3], num_classes)
        self.num_features = chs[3]
        self.feature_info: list[dict] = [
            {"module": "conv1", "num_chs": chs[0], "reduction": 1},
            {"module": "block1", "num_chs": chs[1], "reduction": 1},
            {"module": "block2", "num_chs": chs[2], "reduction": 2},
            {"module": "block3", "num_chs": chs[3], "reduction": 4},
            {"module": "relu", "num_chs": chs[3], "reduction": 4},
        ]

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        """Return the final linear layer."""
        return self.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the BN-ReLU'd ``block3`` feature map (before pooling)."""
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.relu(self.bn1(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


@register_model("wrn_16_1", input_size=(3, 32, 32), family="cifar", num_classes=100)
def wrn_16_1(num_classes: int = 100) -> WideResNet:
    """WRN-16-1 (Zagoruyko & Komodakis, 2016), 0.18M parameters."""
    return WideResNet(16, 1, num_classes)


@register_model("wrn_16_2", input_size=(3, 32, 32), family="cifar", num_classes=100)
def wrn_16_2(num_classes: int = 100) -> WideResNet:
    """WRN-16-2 (Zagoruyko & Komodakis, 2016), 0.70M parameters."""
    return WideResNet(16, 2, num_classes)


@register_model("wrn_40_1", input_size=(3, 32, 32), family="cifar", num_classes=100)
def wrn_40_1(num_classes: int = 100) -> WideResNet:
    """WRN-40-1 (Zagoruyko & Komodakis, 2016), 0.57M parameters."""
    return WideResNet(40, 1, num_classes)


@register_model("wrn_40_2", input_size=(3, 32, 32), family="cifar", num_classes=100)
def wrn_40_2(num_classes: int = 100) -> WideResNet:
    """WRN-40-2 (Zagoruyko & Komodakis, 2016), 2.26M parameters."""
    return WideResNet(40, 2, num_classes)
