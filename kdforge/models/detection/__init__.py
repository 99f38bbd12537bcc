"""Dense object detectors in plain PyTorch: ResNet/ResNeXt-FPN with RetinaNet, FCOS, ATSS, GFL.

Importing this package registers ``{retinanet,fcos,atss,gfl}_r{18,50,101}_fpn``,
``retinanet_x101_{32x4d,64x4d}_fpn`` and ``fcos_x101_64x4d_fpn`` under the
``"detection"`` family. Parameter names are mmdetection's, so its checkpoints load
through :func:`convert_mmdet`.
"""

from kdforge.models.detection._dense_head import ConvModule, DenseHead, Scale
from kdforge.models.detection.atss import ATSSHead
from kdforge.models.detection.backbone import ResNetBackbone
from kdforge.models.detection.convert import (
    convert_mmdet,
    convert_mmdet_checkpoint,
    detect_mmdet_model,
)
from kdforge.models.detection.detector import DenseDetector
from kdforge.models.detection.fcos import FCOSHead
from kdforge.models.detection.fpn import FPN
from kdforge.models.detection.gfl import GFLHead
from kdforge.models.detection.retinanet import RetinaHead
from kdforge.models.detection.zoo import build_detector

__all__ = [
    "FPN",
    "ATSSHead",
    "ConvModule",
    "DenseDetector",
    "DenseHead",
    "FCOSHead",
    "GFLHead",
    "ResNetBackbone",
    "RetinaHead",
    "Scale",
    "build_detector",
    "convert_mmdet",
    "convert_mmdet_checkpoint",
    "detect_mmdet_model",
]
