"""ImageNet MobileNet-V1 (Howard et al., 2017) with mdistiller-compatible parameter names.

Howard, Zhu, Chen, Kalenichenko, Wang, Weyand, Andreetto and Adam, "MobileNets: Efficient
Convolutional Neural Networks for Mobile Vision Applications", arXiv:1704.04861. This is the
ImageNet student of mdistiller (``mdistiller/models/imagenet/mobilenetv1.py``, class
``MobileNetV1``), which mdistiller and the CAT-KD repository register as ``"MobileNetV2"``.
Module paths (``model.0`` ... ``model.13``, ``fc``) follow that class, so its released
checkpoints load with strict loading.
"""

from __future__ import annotations

import torch
from torch import nn

from kdforge.models._registry import register_model

__all__ = ["MobileNetV1", "mobilenet_v1"]

# (output channels, stride) of the 13 depthwise-separable blocks after the 32-channel stem.
_BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


def _stem(out_chs: int) -> nn.Sequential:
    """Full 3x3 stride-2 conv (no bias) -> BN -> ReLU (keys ``.0``, ``.1``)."""
    return nn.Sequential(
        nn.Conv2d(3, out_chs, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.ReLU(inplace=True),
    )


def _depthwise_separable(in_chs: int, out_chs: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU (keys ``.0/.1/.3/.4``)."""
    return nn.Sequential(
        nn.Conv2d(in_chs, in_chs, 3, stride=stride, padding=1, groups=in_chs, bias=False),
        nn.BatchNorm2d(in_chs),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_chs, out_chs, 1, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.ReLU(inplace=True),
    )


def _info(index: int, num_chs: int, reduction: int) -> dict:
    """A timm-style ``feature_info`` entry for ``model.<index>``."""
    return {"module": f"model.{index}", "num_chs": num_chs, "reduction": reduction}


class MobileNetV1(nn.Module):
    """MobileNet-V1 (width 1.0): stem, 13 depthwise-separable blocks, pool, linear.

    The reference pools with ``AvgPool2d(7)``, i.e. a global mean at 224 pixels; this uses
    the global mean at every input size. Weights keep PyTorch's default initialisation,
    as in the reference.

    Args:
        num_classes: outputs of the final linear layer.

    Attributes:
        feature_info: the block ending each stride level (``model.1/3/5/11/13``), with
            ``num_chs`` and ``reduction``; the last one is the globally pooled map.
        classifier_name: module path of the final linear layer (``"fc"``).
    """

    classifier_name = "fc"

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        in_chs, reduction = 32, 2
        layers: list[nn.Module] = [_stem(in_chs)]
        self.feature_info: list[dict] = []
        for out_chs, stride in _BLOCKS:
            if stride > 1:  # the previous block closed a stride level
                self.feature_info.append(_info(len(layers) - 1, in_chs, reduction))
                reduction *= stride
            layers.append(_depthwise_separable(in_chs, out_chs, stride))
            in_chs = out_chs
        self.feature_info.append(_info(len(layers) - 1, in_chs, reduction))
        self.model = nn.Sequential(*layers)
        self.num_features = in_chs
        self.fc = nn.Linear(in_chs, num_classes)

    def get_classifier(self) -> nn.Module:
        """Return the final linear layer."""
        return self.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the ``model.13`` map (after its ReLU, before pooling)."""
        return self.model(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x).mean(dim=(2, 3)))


@register_model("mobilenet_v1", input_size=(3, 224, 224), family="imagenet", num_classes=1000)
def mobilenet_v1(num_classes: int = 1000) -> MobileNetV1:
    """MobileNet-V1 (Howard et al., 2017), mdistiller's ImageNet student: 4.2M parameters."""
    return MobileNetV1(num_classes)
