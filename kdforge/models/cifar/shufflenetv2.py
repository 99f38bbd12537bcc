"""ShuffleNet V2 1.0x for CIFAR (Ma et al., 2018), the ``ShuffleV2`` of RepDistiller.

Ma, Zhang, Zheng and Sun, "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design", ECCV 2018. The CIFAR variant: a 1x1 stem to 24 channels at full
resolution (no max pool), three stages (116/232/464 channels) each of one stride-2
down-sampling unit and [3, 7, 3] channel-split units, then a 1x1 conv to 1024 channels.

Parameter and buffer names follow RepDistiller's ``models/ShuffleNetv2.py`` so its
checkpoints load with strict loading.
"""

from __future__ import annotations

import torch
from torch import nn

from kdforge.models._registry import register_model
from kdforge.models.cifar.shufflenetv1 import ChannelShuffle

__all__ = ["BasicBlock", "DownBlock", "ShuffleNetV2", "ShuffleV2"]


def _conv_bn(
    in_chs: int, out_chs: int, kernel: int = 1, stride: int = 1, dw: bool = False
) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """A bias-free (optionally depthwise) convolution and its BatchNorm."""
    conv = nn.Conv2d(
        in_chs, out_chs, kernel, stride, kernel // 2, groups=in_chs if dw else 1, bias=False
    )
    return conv, nn.BatchNorm2d(out_chs)


class BasicBlock(nn.Module):
    """Basic unit: split the channels in half, transform one half, concat, shuffle."""

    def __init__(self, chs: int) -> None:
        super().__init__()
        self.half = chs // 2
        self.conv1, self.bn1 = _conv_bn(self.half, self.half)
        self.conv2, self.bn2 = _conv_bn(self.half, self.half, 3, dw=True)
        self.conv3, self.bn3 = _conv_bn(self.half, self.half)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[:, : self.half], x[:, self.half :]
        out = torch.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = torch.relu(self.bn3(self.conv3(out)))
        return self.shuffle(torch.cat([x1, out], 1))


class DownBlock(nn.Module):
    """Down-sampling unit: two stride-2 branches of ``out_chs / 2`` each, concat, shuffle."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        mid = out_chs // 2
        # left: depthwise 3x3 s2, 1x1
        self.conv1, self.bn1 = _conv_bn(in_chs, in_chs, 3, 2, dw=True)
        self.conv2, self.bn2 = _conv_bn(in_chs, mid)
        # right: 1x1, depthwise 3x3 s2, 1x1
        self.conv3, self.bn3 = _conv_bn(in_chs, mid)
        self.conv4, self.bn4 = _conv_bn(mid, mid, 3, 2, dw=True)
        self.conv5, self.bn5 = _conv_bn(mid, mid)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = torch.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = torch.relu(self.bn3(self.conv3(x)))
        right = torch.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return self.shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(nn.Module):
    """CIFAR ShuffleNet V2: 1x1 stem, three stages, 1x1 conv-BN-ReLU head, pool, ``linear``.

    Args:
        stage_chs: output channels of the three stages and of the head conv.
        depths: channel-split units per stage (after its down-sampling unit).
        num_classes: outputs of the final linear layer.

    Attributes:
        feature_info: the reference's ``feats`` (stem ``relu``, ``layer1`` .. ``layer3``),
            then ``head_relu``, the 1024-channel map that is pooled. Dicts with
            ``module``, ``num_chs`` and ``reduction``.
        classifier_name: module path of the final linear layer (``"linear"``).
    """

    classifier_name = "linear"

    def __init__(
        self,
        stage_chs: tuple[int, int, int, int] = (116, 232, 464, 1024),
        depths: tuple[int, int, int] = (3, 7, 3),
        num_classes: int = 100,
    ) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(3, 24)
        self.relu = nn.ReLU()
        self.feature_info: list[dict] = [{"module": "relu", "num_chs": 24, "reduction": 1}]
        in_chs = 24
        for i, (out_chs, depth) in enumerate(zip(stage_chs[:3], depths, strict=True)):
            units = [DownBlock(in_chs, out_chs)] + [BasicBlock(out_chs) for _ in range(depth)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*units))
            self.feature_info.append(
                {"module": f"layer{i + 1}", "num_chs": out_chs, "reduction": 2 ** (i + 1)}
            )
            in_chs = out_chs
        self.num_features = stage_chs[3]
        self.conv2, self.bn2 = _conv_bn(in_chs, self.num_features)
        self.head_relu = nn.ReLU()
        self.feature_info.append(
            {"module": "head_relu", "num_chs": self.num_features, "reduction": 8}
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(self.num_features, num_classes)

    def get_classifier(self) -> nn.Module:
        """Return the final linear layer."""
        return self.linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the 1024-channel head feature map (before pooling)."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.head_relu(self.bn2(self.conv2(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(self.avgpool(self.forward_features(x)), 1))


@register_model("ShuffleV2", input_size=(3, 32, 32), family="cifar", num_classes=100)
def ShuffleV2(num_classes: int = 100) -> ShuffleNetV2:
    """ShuffleNet V2 1.0x (Ma et al., 2018), 1.36M parameters."""
    return ShuffleNetV2((116, 232, 464, 1024), (3, 7, 3), num_classes)
