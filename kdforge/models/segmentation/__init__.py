"""Semantic segmentation in plain PyTorch: PSPNet and DeepLabV3 on dilated ResNet/MobileNetV2.

Importing this package registers ``{pspnet,deeplabv3}_{r18,r50,r101,mobilenetv2}`` under
the ``"segmentation"`` family. Parameter names are mmsegmentation's, so its checkpoints
load through :func:`convert_mmseg`.
"""

from kdforge.models.segmentation._blocks import ConvBNReLU
from kdforge.models.segmentation.convert import (
    convert_mmseg,
    convert_mmseg_checkpoint,
    detect_mmseg_model,
)
from kdforge.models.segmentation.heads import ASPPHead, DecodeHead, FCNHead, PSPHead
from kdforge.models.segmentation.mobilenetv2 import DilatedInvertedResidual, MobileNetV2Backbone
from kdforge.models.segmentation.resnet import DilatedBasicBlock, DilatedBottleneck, ResNetV1c
from kdforge.models.segmentation.seg_loss import segmentation_loss, upsample_logits
from kdforge.models.segmentation.segmentor import (
    AUX_LOSS_WEIGHT,
    EncoderDecoder,
    build_segmentor,
    load_imagenet_backbone,
)

__all__ = [
    "AUX_LOSS_WEIGHT",
    "ASPPHead",
    "ConvBNReLU",
    "DecodeHead",
    "DilatedBasicBlock",
    "DilatedBottleneck",
    "DilatedInvertedResidual",
    "EncoderDecoder",
    "FCNHead",
    "MobileNetV2Backbone",
    "PSPHead",
    "ResNetV1c",
    "build_segmentor",
    "convert_mmseg",
    "convert_mmseg_checkpoint",
    "detect_mmseg_model",
    "load_imagenet_backbone",
    "segmentation_loss",
    "upsample_logits",
]
