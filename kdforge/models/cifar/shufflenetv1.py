"""ShuffleNet V1 for CIFAR (Zhang et al., 2018), the ``ShuffleV1`` of RepDistiller.

Zhang, Zhou, Lin and Sun, "ShuffleNet: An Extremely Efficient Convolutional Neural
Network for Mobile Devices", CVPR 2018. The CIFAR variant: a 1x1 stem to 24 channels at
full resolution, three stages of [4, 8, 4] units with 3 groups (240/480/960 channels),
each stage opening with a stride-2 unit whose shortcut is a 3x3 average pool
concatenated to the branch.

Parameter and buffer names follow RepDistiller's ``models/ShuffleNetv1.py`` so its
checkpoints load with strict loading.
"""

from __future__ import annotations

import torch
from torch import nn

from kdforge.models._registry import register_model

__all__ = ["ChannelShuffle", "ShuffleNet", "ShuffleUnit", "ShuffleV1"]


class ChannelShuffle(nn.Module):
    """Interleave ``groups`` channel groups: (N, g*c, H, W) -> (N, c*g, H, W)."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.reshape(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """Grouped 1x1, shuffle, 3x3 depthwise (strided), grouped 1x1; add or concat shortcut.

    The first 1x1 is ungrouped when fed by the 24-channel stem, as in the reference.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid = out_chs // 4
        first_groups = 1 if in_chs == 24 else groups
        self.conv1 = nn.Conv2d(in_chs, mid, 1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shuffle1 = ChannelShuffle(first_groups)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_chs, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.shortcut = nn.Sequential()
        if stride == 2:
            self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(self.shuffle1(out))))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        return torch.relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNet(nn.Module):
    """CIFAR ShuffleNet V1: 1x1 stem, three stages of ShuffleUnits, pool, ``linear``.

    Args:
        stage_chs: output channels of the three stages.
        depths: units per stage.
        groups: groups of the pointwise convolutions.
        num_classes: outputs of the final linear layer.

    Attributes:
        feature_info: stem and stage outputs (the reference's ``feats``), each a dict
            with ``module``, ``num_chs`` and ``reduction``; the last one is pooled.
        classifier_name: module path of the final linear layer (``"linear"``).
    """

    classifier_name = "linear"

    def __init__(
        self,
        stage_chs: tuple[int, int, int] = (240, 480, 960),
        depths: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
        num_classes: int = 100,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        self.feature_info: list[dict] = [{"module": "relu", "num_chs": 24, "reduction": 1}]
        in_chs = 24
        for i, (out_chs, depth) in enumerate(zip(stage_chs, depths, strict=True)):
            # The first (strided) unit concatenates its input, so its branch makes the rest.
            units = [ShuffleUnit(in_chs, out_chs - in_chs, 2, groups)]
            units += [ShuffleUnit(out_chs, out_chs, 1, groups) for _ in range(depth - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*units))
            self.feature_info.append(
                {"module": f"layer{i + 1}", "num_chs": out_chs, "reduction": 2 ** (i + 1)}
            )
            in_chs = out_chs
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_chs, num_classes)
        self.num_features = in_chs

    def get_classifier(self) -> nn.Module:
        """Return the final linear layer."""
        return self.linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the ``layer3`` feature map (before pooling)."""
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(self.avgpool(self.forward_features(x)), 1))


@register_model("ShuffleV1", input_size=(3, 32, 32), family="cifar", num_classes=100)
def ShuffleV1(num_classes: int = 100) -> ShuffleNet:
    """ShuffleNet V1, g=3 (Zhang et al., 2018), 0.95M parameters."""
    return ShuffleNet((240, 480, 960), (4, 8, 4), 3, num_classes)
