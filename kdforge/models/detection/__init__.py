"""Object detectors in plain PyTorch: ResNet/ResNeXt-FPN with RetinaNet, FCOS, ATSS, GFL,
Faster R-CNN and Cascade (Mask) R-CNN.

Importing this package registers ``{retinanet,fcos,atss,gfl}_r{18,50,101}_fpn``,
``retinanet_x101_{32x4d,64x4d}_fpn``, ``fcos_x101_64x4d_fpn`` and
``faster_rcnn_r{18,50,101}_fpn``, ``cascade_mask_rcnn_{r18,x101_64x4d}_fpn``,
``reppoints_moment_r{18,50,101}_fpn_gn``, ``reppoints_moment_x101_32x4d_dcn_fpn_gn``,
``retinanet_swin_t_fpn`` (on :class:`SwinTransformer`) under the ``"detection"`` family.
Parameter names are mmdetection's, so its checkpoints load through :func:`convert_mmdet`.
"""

from kdforge.models.detection._dense_head import ConvModule, DenseHead, Scale
from kdforge.models.detection.atss import ATSSHead
from kdforge.models.detection.backbone import ResNetBackbone
from kdforge.models.detection.cascade_rcnn import build_cascade_rcnn
from kdforge.models.detection.cascade_roi_head import CascadeRoIHead
from kdforge.models.detection.convert import (
    convert_mmdet,
    convert_mmdet_checkpoint,
    detect_mmdet_model,
)
from kdforge.models.detection.detector import DenseDetector
from kdforge.models.detection.faster_rcnn import build_faster_rcnn
from kdforge.models.detection.fcos import FCOSHead
from kdforge.models.detection.fpn import FPN
from kdforge.models.detection.gfl import GFLHead
from kdforge.models.detection.mask_head import FCNMaskHead
from kdforge.models.detection.reppoints import RepPointsHead
from kdforge.models.detection.retinanet import RetinaHead
from kdforge.models.detection.roi_head import StandardRoIHead
from kdforge.models.detection.rpn_head import RPNHead
from kdforge.models.detection.swin import SwinTransformer
from kdforge.models.detection.two_stage import TwoStageDetector
from kdforge.models.detection.zoo import build_detector, build_swin_detector

__all__ = [
    "FPN",
    "ATSSHead",
    "CascadeRoIHead",
    "ConvModule",
    "DenseDetector",
    "DenseHead",
    "FCNMaskHead",
    "FCOSHead",
    "GFLHead",
    "RPNHead",
    "RepPointsHead",
    "ResNetBackbone",
    "RetinaHead",
    "Scale",
    "StandardRoIHead",
    "SwinTransformer",
    "TwoStageDetector",
    "build_cascade_rcnn",
    "build_detector",
    "build_faster_rcnn",
    "build_swin_detector",
    "convert_mmdet",
    "convert_mmdet_checkpoint",
    "detect_mmdet_model",
]
