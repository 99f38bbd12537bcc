"""Dilated MobileNetV2 backbone (output stride 8) with mmsegmentation's parameter names.

Sandler, Howard, Zhu, Zhmoginov and Chen, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018. This is mmsegmentation's ``MobileNetV2(widen_factor=1.,
strides=(1, 2, 2, 1, 1, 1, 1), dilations=(1, 1, 1, 2, 2, 4, 4), out_indices=(1, 2, 4, 6))``
of its ``*_m-v2-d8`` Cityscapes configs: the stem ``conv1`` and seven ``layer1..layer7``
(no final 1280-channel conv), keys ``conv1.conv.weight``, ``layer2.0.conv.0.conv.weight``,
``layer2.0.conv.1.bn.weight`` ...; ``forward`` returns layers 2, 3, 5 and 7.

As in mmsegmentation, a stage's dilation applies to its **first** block only (the other
blocks use dilation 1).
"""

from __future__ import annotations

from torch import Tensor, nn

from kdforge.models.segmentation._blocks import ConvBNReLU, init_weights

__all__ = ["DilatedInvertedResidual", "MobileNetV2Backbone"]

# (expansion t, output channels c, blocks n) per stage, Table 2 of the paper.
_SETTINGS = ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1))


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to a multiple of ``divisor``, never dropping more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class DilatedInvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 (strided, dilated) -> linear 1x1, residual if shapes match.

    Submodules are ``conv.0``, ``conv.1`` (, ``conv.2``), each a :class:`ConvBNReLU` with
    ReLU6; the last has no activation.
    """

    def __init__(
        self, in_chs: int, out_chs: int, stride: int, expand_ratio: int, dilation: int = 1
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = round(in_chs * expand_ratio)
        self.use_res_connect = stride == 1 and in_chs == out_chs
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(in_chs, hidden, 1, act=nn.ReLU6))
        layers += [
            ConvBNReLU(hidden, hidden, 3, stride, dilation, dilation, hidden, act=nn.ReLU6),
            ConvBNReLU(hidden, out_chs, 1, act=None),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2Backbone(nn.Module):
    """MobileNetV2 stages for dense prediction.

    Args:
        widen_factor: channel multiplier.
        strides: stride of the first block of each of the seven stages.
        dilations: dilation of the first block of each stage.
        out_indices: stages (0-based) whose outputs ``forward`` returns.

    Attributes:
        feature_info: ``module``, ``num_chs``, ``reduction`` of each returned stage.
    """

    def __init__(
        self,
        widen_factor: float = 1.0,
        strides: tuple[int, ...] = (1, 2, 2, 1, 1, 1, 1),
        dilations: tuple[int, ...] = (1, 1, 1, 2, 2, 4, 4),
        out_indices: tuple[int, ...] = (1, 2, 4, 6),
    ) -> None:
        super().__init__()
        if not len(strides) == len(dilations) == len(_SETTINGS):
            raise ValueError(f"need {len(_SETTINGS)} strides and dilations")
        if not all(0 <= i < len(_SETTINGS) for i in out_indices):
            raise ValueError(f"out_indices must lie in 0..6, got {out_indices}")
        self.out_indices = tuple(out_indices)
        in_chs = _make_divisible(32 * widen_factor)
        self.conv1 = ConvBNReLU(3, in_chs, 3, 2, 1, act=nn.ReLU6)
        self.feature_info: list[dict] = []
        reduction = 2
        for i, ((t, c, n), stride, dilation) in enumerate(
            zip(_SETTINGS, strides, dilations, strict=True)
        ):
            out_chs = _make_divisible(c * widen_factor)
            blocks = []
            for j in range(n):
                first = j == 0
                blocks.append(
                    DilatedInvertedResidual(
                        in_chs, out_chs, stride if first else 1, t, dilation if first else 1
                    )
                )
                in_chs = out_chs
            reduction *= stride
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            if i in self.out_indices:
                self.feature_info.append(
                    {"module": f"layer{i + 1}", "num_chs": out_chs, "reduction": reduction}
                )
        init_weights(self)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        x = self.conv1(x)  # (N, 32, H/2, W/2)
        outs = []
        for i in range(len(_SETTINGS)):
            x = getattr(self, f"layer{i + 1}")(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
