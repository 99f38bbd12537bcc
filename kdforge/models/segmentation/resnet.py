"""Dilated ResNet-V1c backbones (output stride 8) with mmsegmentation's parameter names.

He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition", CVPR 2016; the
"V1c" deep stem (three 3x3 convolutions instead of one 7x7) is from He et al., "Bag of
Tricks for Image Classification with Convolutional Neural Networks", CVPR 2019; stages
3 and 4 trade their stride for dilation 2 and 4 as in Chen et al., "Rethinking Atrous
Convolution for Semantic Image Segmentation" (DeepLabV3), 2017.

This is mmsegmentation's ``ResNetV1c(depth, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
contract_dilation=True, style="pytorch")``: keys ``stem.0.weight`` ... ``stem.7.*``,
``layer1.0.conv1.weight``, ``layer1.0.bn1.*``, ``layer3.0.downsample.0.weight`` ..., so
``open-mmlab://resnet50_v1c`` weights and mmsegmentation models load unchanged.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdforge.models.segmentation._blocks import init_weights

__all__ = ["DilatedBasicBlock", "DilatedBottleneck", "ResNetV1c"]


def _shortcut(in_chs: int, out_chs: int, stride: int) -> nn.Module | None:
    """1x1 projection + BN when the block changes channels or stride (mmseg ``ResLayer``)."""
    if stride == 1 and in_chs == out_chs:
        return None
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs)
    )


class DilatedBasicBlock(nn.Module):
    """Two 3x3 convolutions; only the first is dilated (as mmsegmentation's ``BasicBlock``)."""

    expansion = 1

    def __init__(self, in_chs: int, width: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, width, 3, stride, dilation, dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_chs, width, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class DilatedBottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, dilated), 1x1 expand by 4 ("pytorch" style)."""

    expansion = 4

    def __init__(self, in_chs: int, width: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        out_chs = width * self.expansion
        self.conv1 = nn.Conv2d(in_chs, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_chs, out_chs, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_SPECS: dict[int, tuple[type[DilatedBasicBlock | DilatedBottleneck], tuple[int, ...]]] = {
    18: (DilatedBasicBlock, (2, 2, 2, 2)),
    50: (DilatedBottleneck, (3, 4, 6, 3)),
    101: (DilatedBottleneck, (3, 4, 23, 3)),
}


class ResNetV1c(nn.Module):
    """Deep-stem ResNet returning the four stage outputs ``(layer1, ..., layer4)``.

    Args:
        depth: 18, 50 or 101.
        strides: stride of the first block of each stage.
        dilations: dilation of each stage; with ``contract_dilation`` the first block of a
            dilated stage uses half of it (mmsegmentation's gridding-artefact fix).
        contract_dilation: see ``dilations``.
        zero_init_residual: start each block's last BN at 0 (mmsegmentation's default).

    Attributes:
        feature_info: ``module`` (a path under this backbone), ``num_chs``, ``reduction``
            of each stage.
    """

    def __init__(
        self,
        depth: int = 50,
        strides: tuple[int, int, int, int] = (1, 2, 1, 1),
        dilations: tuple[int, int, int, int] = (1, 1, 2, 4),
        contract_dilation: bool = True,
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        if depth not in _SPECS:
            raise ValueError(f"depth must be one of {sorted(_SPECS)}, got {depth}")
        block, depths = _SPECS[depth]
        self.stem = nn.Sequential(  # 3x3/2 (32) -> 3x3 (32) -> 3x3 (64)
            nn.Conv2d(3, 32, 3, 2, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, 1, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, 1, 1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.feature_info: list[dict] = []
        in_chs, reduction = 64, 4
        for i, (n, stride, dilation) in enumerate(zip(depths, strides, dilations, strict=True)):
            width = 64 * 2**i
            first = dilation // 2 if dilation > 1 and contract_dilation else dilation
            blocks = [block(in_chs, width, stride, first)]
            in_chs, reduction = width * block.expansion, reduction * stride
            blocks += [block(in_chs, width, 1, dilation) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.feature_info.append(
                {"module": f"layer{i + 1}", "num_chs": in_chs, "reduction": reduction}
            )

        init_weights(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, DilatedBottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, DilatedBasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = self.maxpool(self.stem(x))  # (N, 64, H/4, W/4)
        c1 = self.layer1(x)
        c2 = self.layer2(c1)  # (N, C, H/8, W/8) from here on
        c3 = self.layer3(c2)
        return c1, c2, c3, self.layer4(c3)
