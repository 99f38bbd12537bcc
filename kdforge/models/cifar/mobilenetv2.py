"""MobileNetV2 for CIFAR (Sandler et al., 2018), mdistiller's ``mobile_half``.

Sandler, Howard, Zhu, Zhmoginov and Chen, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018. The RepDistiller/mdistiller CIFAR variant: width multiplier
0.5, expansion 6, a stride-2 stem (so 32x32 ends at 2x2), every inverted residual with
its 1x1 expansion conv (also at expansion 1), a 1x1 conv to 1280 channels and a linear
classifier.

Parameter and buffer names (``conv1.0.weight``, ``blocks.3.2.conv.6.weight``...,
``classifier.0.weight``) follow RepDistiller's ``models/mobilenetv2.py`` so its
checkpoints load with strict loading.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kdforge.models._registry import register_model

__all__ = ["InvertedResidual", "MobileNetV2", "mobile_half"]

# (output channels before the width multiplier, blocks, stride of the first block) of the
# seven block groups; the first group expands by 1, the others by ``expansion``.
_SETTINGS = ((16, 1, 1), (24, 2, 1), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1))


def _conv_bn_relu(in_chs: int, out_chs: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 project-BN, residual if shapes match."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = in_chs * expansion
        self.use_res_connect = stride == 1 and in_chs == out_chs
        self.conv = nn.Sequential(
            nn.Conv2d(in_chs, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, out_chs, 1, bias=False),
            nn.BatchNorm2d(out_chs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2: stride-2 stem, seven block groups, 1x1 conv to 1280, classifier.

    Args:
        expansion: expansion ratio of the inverted residuals after the first group.
        width_mult: channel multiplier (0.5 for ``mobile_half``).
        num_classes: outputs of the final linear layer.

    Attributes:
        feature_info: the reference's ``feats`` (``conv1``, ``blocks.1``, ``blocks.2``,
            ``blocks.4``, ``blocks.6``), then ``conv2``, the 1280-channel map that is
            pooled. Dicts with ``module``, ``num_chs`` and ``reduction``.
        classifier_name: module path of the final linear layer (``"classifier.0"``).
    """

    classifier_name = "classifier.0"

    def __init__(self, expansion: int = 6, width_mult: float = 0.5, num_classes: int = 100) -> None:
        super().__init__()
        in_chs = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, in_chs, 3, 2)
        self.feature_info: list[dict] = [{"module": "conv1", "num_chs": in_chs, "reduction": 2}]
        self.blocks = nn.ModuleList()
        reduction = 2
        for i, (chs, n, stride) in enumerate(_SETTINGS):
            out_chs, t = int(chs * width_mult), 1 if i == 0 else expansion
            group = []
            for j in range(n):
                group.append(InvertedResidual(in_chs, out_chs, stride if j == 0 else 1, t))
                in_chs = out_chs
            self.blocks.append(nn.Sequential(*group))
            reduction *= stride
            if i in (1, 2, 4, 6):
                self.feature_info.append(
                    {"module": f"blocks.{i}", "num_chs": out_chs, "reduction": reduction}
                )
        self.num_features = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(in_chs, self.num_features, 1, 1)
        self.feature_info.append(
            {"module": "conv2", "num_chs": self.num_features, "reduction": reduction}
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(self.num_features, num_classes))

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        """Return the final linear layer."""
        return self.classifier[0]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the 1280-channel ``conv2`` feature map (before pooling)."""
        x = self.conv1(x)
        for group in self.blocks:
            x = group(x)
        return self.conv2(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.forward_features(x)), 1))


@register_model("MobileNetV2", input_size=(3, 32, 32), family="cifar", num_classes=100)
def mobile_half(num_classes: int = 100) -> MobileNetV2:
    """MobileNetV2 x0.5 for CIFAR (Sandler et al., 2018), 0.81M parameters."""
    return MobileNetV2(expansion=6, width_mult=0.5, num_classes=num_classes)
