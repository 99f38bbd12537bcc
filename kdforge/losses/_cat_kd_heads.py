"""How CAT-KD's official code initialises the student's CAM head, per model family."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from kdforge.losses._checks import check_choice
from kdforge.models import cifar, imagenet
from kdforge.models.cifar import resnet as cifar_resnet
from kdforge.models.cifar import resnetv2 as cifar_resnetv2
from kdforge.taps import unwrap_model

__all__ = ["OFFICIAL_HEAD_INIT", "init_cam_head", "official_head_init"]

# How the official ``*_test`` twin of a zoo model starts its bias-free 1×1 ``conv_test``
# (K classes × C features; CAT-KD ``mdistiller/models/{cifar,imagenet}/*.py``):
# "normal": N(0, 2/K). conv_test is created before the model's init loop, which draws every
#   Conv2d from kaiming_normal_(fan_out, relu) (CIFAR resnet.py, resnetv2.py) or
#   normal_(0, √(2/(k·k·out))) (wrn.py, CIFAR mobilenetv2.py, ImageNet resnet.py): for a 1×1
#   conv both are N(0, 2/K).
# "default": PyTorch's Conv2d init, kaiming_uniform_(a=√5) = U(±1/√C). conv_test is created
#   after the loop (vgg.py) or the model has no loop (ShuffleNetv1/v2.py, ImageNet
#   mobilenetv2.py, which is a MobileNetV1).
# Zoo models without an official twin (ImageNet mobilenet_v2, user models) are left alone.
OFFICIAL_HEAD_INIT: dict[type[nn.Module], str] = {
    cifar_resnet.ResNet: "normal",
    cifar_resnetv2.ResNet: "normal",
    cifar.WideResNet: "normal",
    cifar.MobileNetV2: "normal",
    imagenet.ResNet: "normal",
    cifar.VGG: "default",
    cifar.ShuffleNet: "default",
    cifar.ShuffleNetV2: "default",
    imagenet.MobileNetV1: "default",
}


def official_head_init(model: nn.Module) -> str | None:
    """``"normal"`` or ``"default"``: how the official ``*_test`` twin of ``model`` initialises
    its CAM head (:data:`OFFICIAL_HEAD_INIT`); None for a model without one."""
    model = unwrap_model(model)
    return next((v for cls, v in OFFICIAL_HEAD_INIT.items() if isinstance(model, cls)), None)


def init_cam_head(weight: Tensor, scheme: str) -> None:
    """Redraw a ``(K, C)`` classifier weight as the official bias-free 1×1 conv's, in place,
    from the global RNG: ``"normal"`` N(0, 2/K), ``"default"`` U(±1/√C) (PyTorch's Conv2d
    init; a 1×1 conv's fan-in is C, as the linear layer's)."""
    check_choice("scheme", scheme, ("normal", "default"))
    with torch.no_grad():
        if scheme == "normal":
            weight.normal_(0.0, math.sqrt(2.0 / weight.shape[0]))
        else:
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
