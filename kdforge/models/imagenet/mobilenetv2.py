"""ImageNet MobileNetV2 (Sandler et al., 2018) with torchvision-compatible parameter names.

Sandler, Howard, Zhu, Zhmoginov and Chen, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018. Module paths (``features.0.0`` ... ``features.18.1``,
``classifier.1``) follow torchvision so its ImageNet checkpoints load with strict loading.
"""

from __future__ import annotations

import torch
from torch import nn

from kdforge.models._registry import register_model

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenet_v2"]

# (expansion t, output channels c, repeats n, first stride s), Table 2 of the paper.
_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to a multiple of ``divisor``, never dropping more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn_relu6(
    in_chs: int, out_chs: int, kernel: int = 3, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """Conv (no bias) -> BN -> ReLU6 as a 3-item ``nn.Sequential`` (keys ``.0``, ``.1``)."""
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.ReLU6(inplace=True),
    )


def _info(index: int, num_chs: int, reduction: int) -> dict:
    """A timm-style ``feature_info`` entry for ``features.<index>``."""
    return {"module": f"features.{index}", "num_chs": num_chs, "reduction": reduction}


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> linear project (1x1), residual when shapes match."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = round(in_chs * expand_ratio)
        self.use_res_connect = stride == 1 and in_chs == out_chs
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(in_chs, hidden, kernel=1))
        layers += [
            _conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_chs, 1, bias=False),
            nn.BatchNorm2d(out_chs),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2: stem, 17 inverted residual blocks, 1x1 conv to 1280, pool, classifier.

    Args:
        num_classes: outputs of the final linear layer.
        width_mult: channel multiplier (the last conv never shrinks below 1280).
        dropout: dropout probability before the final linear layer.

    Attributes:
        feature_info: the module ending each stride level, with ``num_chs`` and ``reduction``.
        classifier_name: module path of the final linear layer (``"classifier.1"``); not
            called ``classifier``, which is the torchvision name of the head submodule.
    """

    classifier_name = "classifier.1"

    def __init__(
        self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2
    ) -> None:
        super().__init__()
        in_chs = _make_divisible(32 * width_mult)
        self.num_features = _make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [_conv_bn_relu6(3, in_chs, stride=2)]
        self.feature_info: list[dict] = []
        reduction = 2
        for t, c, n, s in _SETTINGS:
            out_chs = _make_divisible(c * width_mult)
            if s > 1 and len(layers) > 1:  # the previous block closed a stride level
                self.feature_info.append(_info(len(layers) - 1, in_chs, reduction))
                reduction *= s
            for i in range(n):
                layers.append(InvertedResidual(in_chs, out_chs, s if i == 0 else 1, t))
                in_chs = out_chs
        layers.append(_conv_bn_relu6(in_chs, self.num_features, kernel=1))
        self.feature_info.append(_info(len(layers) - 1, self.num_features, reduction))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(self.num_features, num_classes)
        )

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        """Return the final linear layer."""
        return self.classifier[1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the ``features.18`` map (before pooling)."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


@register_model("mobilenet_v2", input_size=(3, 224, 224), family="imagenet", num_classes=1000)
def mobilenet_v2(num_classes: int = 1000, **kwargs: float) -> MobileNetV2:
    """MobileNetV2 (Sandler et al., 2018), width 1.0: 3.5M parameters."""
    return MobileNetV2(num_classes, **kwargs)
