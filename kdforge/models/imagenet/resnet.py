"""ImageNet ResNets (He et al., 2016) with torchvision-compatible parameter names.

He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
The Bottleneck puts its stride on the 3x3 convolution ("ResNet V1.5"), as torchvision
does, so torchvision ImageNet checkpoints load here with strict loading.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kdforge.models._registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101"]


def _shortcut(in_chs: int, out_chs: int, stride: int) -> nn.Module | None:
    """1x1 projection + BN when the residual branch changes shape, else ``None``."""
    if stride == 1 and in_chs == out_chs:
        return None
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs)
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or projected) shortcut."""

    expansion = 1

    def __init__(self, in_chs: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_chs, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, grouped for ResNeXt), 1x1 expand to ``4 * width``.

    ``stride_in_1x1=True`` moves the stride to the first 1x1 convolution: the original
    Caffe ResNet ("caffe" style in mmdetection, used by the Detectron checkpoints).
    With ``groups > 1`` (ResNeXt, Xie et al., 2017) the inner width is
    ``floor(width * base_width / 64) * groups``, as in mmdetection's and torchvision's
    ResNeXt (e.g. 32x4d: 128 channels in 32 groups in the first stage); ``base_width`` is
    unused when ``groups == 1``. ``conv2_layer`` builds the 3x3 convolution, called as
    ``nn.Conv2d`` is (e.g. a deformable one for mmdetection's DCN backbones); its parameter
    names stay under ``conv2``.
    """

    expansion = 4

    def __init__(
        self,
        in_chs: int,
        width: int,
        stride: int = 1,
        stride_in_1x1: bool = False,
        groups: int = 1,
        base_width: int = 4,
        conv2_layer: Callable[..., nn.Module] = nn.Conv2d,
    ) -> None:
        super().__init__()
        out_chs = width * self.expansion
        inner = width if groups == 1 else width * base_width // 64 * groups
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_chs, inner, 1, stride=s1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = conv2_layer(inner, inner, 3, stride=s3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_chs, out_chs, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ImageNet ResNet: 7x7 stem, max-pool, four stages, global average pool, ``fc``.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        depths: number of blocks in each of the four stages.
        num_classes: outputs of the final linear layer.
        zero_init_residual: start the last BN of every block at zero so that each
            residual branch begins as the identity (Goyal et al., 2017).

    Attributes:
        feature_info: one dict per stage with ``module``, ``num_chs`` and ``reduction``.
        classifier_name: module path of the final linear layer (``"fc"``).
    """

    classifier_name = "fc"

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        depths: tuple[int, int, int, int],
        num_classes: int = 1000,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.feature_info: list[dict] = []
        in_chs = 64
        for i, depth in enumerate(depths):
            width, stride = 64 * 2**i, 1 if i == 0 else 2
            blocks = []
            for j in range(depth):
                blocks.append(block(in_chs, width, stride if j == 0 else 1))
                in_chs = width * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.feature_info.append(
                {"module": f"layer{i + 1}", "num_chs": in_chs, "reduction": 4 * 2**i}
            )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_chs, num_classes)
        self.num_features = in_chs

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def get_classifier(self) -> nn.Module:
        """Return the final linear layer."""
        return self.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the ``layer4`` feature map (before pooling)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


@register_model("resnet18", input_size=(3, 224, 224), family="imagenet", num_classes=1000)
def resnet18(num_classes: int = 1000, **kwargs: bool) -> ResNet:
    """ResNet-18 (He et al., 2016): BasicBlocks [2, 2, 2, 2], 11.7M parameters."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, **kwargs)


@register_model("resnet34", input_size=(3, 224, 224), family="imagenet", num_classes=1000)
def resnet34(num_classes: int = 1000, **kwargs: bool) -> ResNet:
    """ResNet-34 (He et al., 2016): BasicBlocks [3, 4, 6, 3], 21.8M parameters."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, **kwargs)


@register_model("resnet50", input_size=(3, 224, 224), family="imagenet", num_classes=1000)
def resnet50(num_classes: int = 1000, **kwargs: bool) -> ResNet:
    """ResNet-50 (He et al., 2016): Bottlenecks [3, 4, 6, 3], 25.6M parameters."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, **kwargs)


@register_model("resnet101", input_size=(3, 224, 224), family="imagenet", num_classes=1000)
def resnet101(num_classes: int = 1000, **kwargs: bool) -> ResNet:
    """ResNet-101 (He et al., 2016): Bottlenecks [3, 4, 23, 3], 44.5M parameters."""
    return ResNet(Bottleneck, (3, 4, 23, 3), num_classes, **kwargs)
