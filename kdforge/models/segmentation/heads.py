"""Decode heads with mmsegmentation's parameter names: PSPHead, ASPPHead, FCNHead.

* :class:`PSPHead` — Zhao, Shi, Qi, Wang and Jia, "Pyramid Scene Parsing Network", CVPR
  2017: average-pool to 1x1, 2x2, 3x3, 6x6 bins, 1x1 conv each, upsample, concatenate with
  the input, 3x3 bottleneck conv.
* :class:`ASPPHead` — Chen, Papandreou, Schroff and Adam, "Rethinking Atrous Convolution
  for Semantic Image Segmentation" (DeepLabV3), 2017: image-level pooling plus a 1x1 and
  three 3x3 atrous convolutions (rates 12, 24, 36 at output stride 8), concatenated, 3x3
  bottleneck conv.
* :class:`FCNHead` — Long, Shelhamer and Darrell, "Fully Convolutional Networks for
  Semantic Segmentation", CVPR 2015: the auxiliary head on stage 3 (one 3x3 conv).

Every head ends as mmsegmentation's ``BaseDecodeHead.cls_seg``: ``Dropout2d(0.1)`` then a
1x1 ``conv_seg`` (with bias, init N(0, 0.01)). Upsampling uses ``align_corners=False``.
"""

from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.models.segmentation._blocks import ConvBNReLU, init_weights

__all__ = ["ASPPHead", "DecodeHead", "FCNHead", "PSPHead"]


class DecodeHead(nn.Module, abc.ABC):
    """Base: ``forward(x) = conv_seg(dropout(features(x)))``; subclasses define ``features``.

    Args:
        in_channels: channels of the backbone feature the head reads.
        channels: channels of the head's inner layers (before ``conv_seg``).
        num_classes: output logits per pixel.
        dropout_ratio: ``Dropout2d`` probability before ``conv_seg`` (0 disables it).
    """

    def __init__(
        self, in_channels: int, channels: int, num_classes: int, dropout_ratio: float = 0.1
    ) -> None:
        super().__init__()
        self.in_channels, self.channels, self.num_classes = in_channels, channels, num_classes
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else None

    def _init(self) -> None:
        """Call at the end of a subclass ``__init__``, once all layers exist."""
        init_weights(self)
        nn.init.normal_(self.conv_seg.weight, 0.0, 0.01)
        nn.init.zeros_(self.conv_seg.bias)

    @abc.abstractmethod
    def features(self, x: Tensor) -> Tensor:
        """The head's features before dropout and the 1x1 classifier, ``(N, channels, h, w)``."""

    def forward(self, x: Tensor) -> Tensor:
        feat = self.features(x)  # (N, channels, h, w)
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.conv_seg(feat)  # (N, num_classes, h, w)


class PSPHead(DecodeHead):
    """Pyramid pooling module + bottleneck (Zhao et al., 2017).

    Keys: ``psp_modules.{i}.1.conv.weight`` (index 0 of each branch is the pooling),
    ``bottleneck.conv.weight``, ``conv_seg.weight``.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        pool_scales: tuple[int, ...] = (1, 2, 3, 6),
        dropout_ratio: float = 0.1,
    ) -> None:
        super().__init__(in_channels, channels, num_classes, dropout_ratio)
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvBNReLU(in_channels, channels))
            for s in pool_scales
        )
        self.bottleneck = ConvBNReLU(
            in_channels + len(pool_scales) * channels, channels, 3, padding=1
        )
        self._init()

    def features(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(branch(x), size=size, mode="bilinear", align_corners=False)
            for branch in self.psp_modules
        ]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class ASPPHead(DecodeHead):
    """Atrous spatial pyramid pooling + bottleneck (Chen et al., 2017).

    Keys: ``image_pool.1.conv.weight``, ``aspp_modules.{i}.conv.weight`` (0 is the 1x1
    branch), ``bottleneck.conv.weight``, ``conv_seg.weight``.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        dilations: tuple[int, ...] = (1, 12, 24, 36),
        dropout_ratio: float = 0.1,
    ) -> None:
        super().__init__(in_channels, channels, num_classes, dropout_ratio)
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNReLU(in_channels, channels))
        self.aspp_modules = nn.ModuleList(
            ConvBNReLU(in_channels, channels, 1)
            if d == 1
            else ConvBNReLU(in_channels, channels, 3, padding=d, dilation=d)
            for d in dilations
        )
        self.bottleneck = ConvBNReLU((len(dilations) + 1) * channels, channels, 3, padding=1)
        self._init()

    def features(self, x: Tensor) -> Tensor:
        pooled = self.image_pool(x)  # (N, channels, 1, 1)
        outs = [F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False)]
        outs += [branch(x) for branch in self.aspp_modules]
        return self.bottleneck(torch.cat(outs, dim=1))


class FCNHead(DecodeHead):
    """``num_convs`` 3x3 convs, optionally concatenated with the input (Long et al., 2015).

    mmsegmentation's auxiliary head is ``FCNHead(num_convs=1, concat_input=False)``; keys
    ``convs.0.conv.weight`` (``conv_cat.conv.weight`` with ``concat_input``), ``conv_seg``.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        num_convs: int = 1,
        concat_input: bool = False,
        dropout_ratio: float = 0.1,
    ) -> None:
        super().__init__(in_channels, channels, num_classes, dropout_ratio)
        if num_convs < 1:
            raise ValueError(f"num_convs must be >= 1, got {num_convs}")
        self.convs = nn.Sequential(
            *(
                ConvBNReLU(in_channels if i == 0 else channels, channels, 3, padding=1)
                for i in range(num_convs)
            )
        )
        self.conv_cat = (
            ConvBNReLU(in_channels + channels, channels, 3, padding=1) if concat_input else None
        )
        self._init()

    def features(self, x: Tensor) -> Tensor:
        out = self.convs(x)
        return out if self.conv_cat is None else self.conv_cat(torch.cat([x, out], dim=1))
