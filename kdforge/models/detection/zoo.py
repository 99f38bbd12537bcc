"""Registered detectors: ``{retinanet,fcos,atss,gfl}_r{18,50,101}_fpn``, the ResNeXt-101
ones of mmdetection's model zoo that distillation papers use as teachers
(``retinanet_x101_{32x4d,64x4d}_fpn`` and ``fcos_x101_64x4d_fpn``), and the two-stage
``faster_rcnn_r{18,50,101}_fpn`` (see :mod:`~kdforge.models.detection.faster_rcnn`), and
``cascade_mask_rcnn_x101_64x4d_fpn`` (CanKD's teacher) with a small
``cascade_mask_rcnn_r18_fpn`` (see :mod:`~kdforge.models.detection.cascade_rcnn`).

Each follows its mmdetection config (see the head modules for the exact settings):

=========  =======  ===================  =======================  ==========
detector   style    BN affine trainable  FPN extra convs          head NMS
=========  =======  ===================  =======================  ==========
retinanet  pytorch  yes                  on_input                 0.5
fcos       caffe    no                   on_output, ReLU before   0.5
atss       pytorch  yes                  on_output                0.6
gfl        pytorch  yes                  on_output                0.6
=========  =======  ===================  =======================  ==========

All use ``frozen_stages=1``, ``norm_eval=True``, FPN ``P3..P7`` with 256 channels.
The ResNeXt backbones are pytorch style with trainable BN affine parameters, FCOS's
included (``fcos_x101-64x4d_fpn_gn-head_ms-640-800-2x_coco.py``; its inputs are RGB with
the ImageNet mean and std, not the caffe normalisation of the ResNet FCOS configs).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from kdforge.errors import ConfigError
from kdforge.models._registry import register_model
from kdforge.models.detection._dense_head import DenseHead
from kdforge.models.detection.atss import ATSSHead
from kdforge.models.detection.backbone import ResNetBackbone
from kdforge.models.detection.cascade_rcnn import build_cascade_rcnn
from kdforge.models.detection.detector import DenseDetector
from kdforge.models.detection.dino import build_dino
from kdforge.models.detection.faster_rcnn import build_faster_rcnn
from kdforge.models.detection.fcos import FCOSHead
from kdforge.models.detection.fpn import FPN
from kdforge.models.detection.gfl import GFLHead
from kdforge.models.detection.grounding_dino import build_grounding_dino
from kdforge.models.detection.reppoints import RepPointsHead
from kdforge.models.detection.retinanet import RetinaHead
from kdforge.models.detection.swin import SWIN_ARCHS, SwinTransformer

__all__ = ["DETECTORS", "build_detector", "build_swin_detector"]

# head class, backbone style, BN requires_grad, FPN add_extra_convs, relu_before_extra_convs
DETECTORS: dict[str, tuple[type[DenseHead], str, bool, str, bool]] = {
    "retinanet": (RetinaHead, "pytorch", True, "on_input", False),
    "fcos": (FCOSHead, "caffe", False, "on_output", True),
    "atss": (ATSSHead, "pytorch", True, "on_output", False),
    "gfl": (GFLHead, "pytorch", True, "on_output", False),
    "reppoints": (RepPointsHead, "pytorch", True, "on_input", False),
}
_DEPTHS = (18, 50, 101)
# name -> (head kind, backbone keywords), as mmdetection's ResNeXt-101 configs
_X64 = {"groups": 64, "base_width": 4}
_RESNEXT: dict[str, tuple[str, dict]] = {
    "retinanet_x101_32x4d_fpn": ("retinanet", {"groups": 32, "base_width": 4}),
    "retinanet_x101_64x4d_fpn": ("retinanet", _X64),
    # pytorch style with trainable BN affine, unlike the ResNet (caffe) FCOS configs
    "fcos_x101_64x4d_fpn": ("fcos", {**_X64, "style": "pytorch", "norm_requires_grad": True}),
}


def build_detector(
    kind: str,
    depth: int = 50,
    num_classes: int = 80,
    *,
    style: str | None = None,
    frozen_stages: int = 1,
    norm_eval: bool = True,
    norm_requires_grad: bool | None = None,
    backbone_pretrained: str | Path | None = None,
    fpn_channels: int = 256,
    fpn_norm_groups: int | None = None,
    add_extra_convs: str | None = None,
    groups: int = 1,
    base_width: int = 4,
    dcn: dict | None = None,
    stage_with_dcn: tuple[bool, bool, bool, bool] = (False, False, False, False),
    **head_kwargs,
) -> DenseDetector:
    """Build a ResNet-FPN (or ResNeXt-FPN) dense detector with its mmdetection defaults.

    Args:
        kind: ``"retinanet"``, ``"fcos"``, ``"atss"`` or ``"gfl"``.
        depth: ResNet depth (18, 34, 50, 101).
        num_classes: object classes.
        groups, base_width: ResNeXt cardinality and width per group (``groups=64,
            base_width=4``: 64x4d); ``groups=1`` is a ResNet.
        dcn, stage_with_dcn: deformable ``conv2`` in the chosen stages (mmdetection's
            ``dcn=dict(type="DCN", deform_groups=1, fallback_on_stride=False)``).
        style, norm_requires_grad: backbone overrides (defaults per detector, table above).
        frozen_stages, norm_eval: see :class:`ResNetBackbone`.
        backbone_pretrained: a torchvision-keyed ImageNet ResNet/ResNeXt checkpoint.
        fpn_channels: FPN output channels (the head's input channels).
        fpn_norm_groups: GroupNorm groups in the FPN (RepPoints' ``fpn-gn``: 32), or None.
        add_extra_convs: what P6 is computed from, overriding the detector's default
            (``"on_input"``, ``"on_lateral"`` or ``"on_output"``; table above).
        **head_kwargs: keyword arguments of the head class (e.g. ``feat_channels``,
            ``stacked_convs``, ``center_sampling``, ``nms_iou``).
    """
    if kind not in DETECTORS:
        raise ConfigError(f"unknown detector {kind!r}; known: {', '.join(DETECTORS)}")
    head_cls, default_style, bn_grad, extra_convs, relu_before = DETECTORS[kind]
    backbone = ResNetBackbone(
        depth,
        style=style or default_style,
        frozen_stages=frozen_stages,
        norm_eval=norm_eval,
        norm_requires_grad=bn_grad if norm_requires_grad is None else norm_requires_grad,
        groups=groups,
        base_width=base_width,
        dcn=dcn,
        stage_with_dcn=stage_with_dcn,
    )
    if backbone_pretrained is not None:
        backbone.load_torchvision(backbone_pretrained)
    neck = FPN(
        [info["num_chs"] for info in backbone.feature_info],
        fpn_channels,
        start_level=1,
        num_outs=5,
        add_extra_convs=add_extra_convs or extra_convs,
        relu_before_extra_convs=relu_before,
        norm_groups=fpn_norm_groups,
    )
    head = head_cls(num_classes, in_channels=fpn_channels, **head_kwargs)
    return DenseDetector(backbone, neck, head)


def _builder(
    name: str, kind: str, depth: int, backbone: dict | None = None
) -> Callable[..., DenseDetector]:
    backbone = backbone or {}

    def build(num_classes: int = 80, **kwargs) -> DenseDetector:
        return build_detector(kind, depth, num_classes, **{**backbone, **kwargs})

    arch = f"ResNet-{depth}"
    if backbone.get("groups", 1) > 1:
        arch = f"ResNeXt-{depth} {backbone['groups']}x{backbone['base_width']}d"
    build.__name__ = name
    build.__doc__ = f"{DETECTORS[kind][0].__name__} on {arch} FPN (mmdetection defaults)."
    return build


def _register(name: str, build: Callable[..., nn.Module]) -> None:
    register_model(name, input_size=(3, 800, 1333), family="detection", num_classes=80)(build)


for _kind in ("retinanet", "fcos", "atss", "gfl"):
    for _depth in _DEPTHS:
        _register(f"{_kind}_r{_depth}_fpn", _builder(f"{_kind}_r{_depth}_fpn", _kind, _depth))
for _name, (_kind, _backbone) in _RESNEXT.items():
    _register(_name, _builder(_name, _kind, 101, _backbone))


def _faster_rcnn_builder(depth: int) -> Callable[..., nn.Module]:
    def build(num_classes: int = 80, **kwargs) -> nn.Module:
        return build_faster_rcnn(depth, num_classes, **kwargs)

    build.__name__ = f"faster_rcnn_r{depth}_fpn"
    build.__doc__ = f"Faster R-CNN on ResNet-{depth} FPN (mmdetection defaults)."
    return build


for _depth in _DEPTHS:
    _register(f"faster_rcnn_r{_depth}_fpn", _faster_rcnn_builder(_depth))


def _cascade_builder(name: str, depth: int, backbone: dict) -> Callable[..., nn.Module]:
    def build(num_classes: int = 80, **kwargs) -> nn.Module:
        return build_cascade_rcnn(depth, num_classes, **{**backbone, **kwargs})

    arch = f"ResNeXt-{depth} 64x4d" if backbone else f"ResNet-{depth}"
    build.__name__ = name
    build.__doc__ = f"Cascade Mask R-CNN on {arch} FPN (mmdetection defaults)."
    return build


# the CanKD teacher (cascade_mask_rcnn_x101_64x4d_fpn_20e_coco) and a small one for tests
_register("cascade_mask_rcnn_r18_fpn", _cascade_builder("cascade_mask_rcnn_r18_fpn", 18, {}))
_register(
    "cascade_mask_rcnn_x101_64x4d_fpn",
    _cascade_builder("cascade_mask_rcnn_x101_64x4d_fpn", 101, _X64),
)

# RepPoints moment with GN in the FPN and the head (reppoints-moment_r*_fpn-gn_head-gn)
_GN = {"fpn_norm_groups": 32}
for _depth in _DEPTHS:
    _name = f"reppoints_moment_r{_depth}_fpn_gn"
    _register(_name, _builder(_name, "reppoints", _depth, _GN))
# CanKD's teacher: reppoints-moment_x101-dconv-c3-c5_fpn-gn_head-gn_2x_coco (ResNeXt 32x4d)
_DCN = {"dcn": {"type": "DCN", "deform_groups": 1, "fallback_on_stride": False}}
_X101_DCN = {**_GN, "groups": 32, "base_width": 4, **_DCN}
_X101_DCN["stage_with_dcn"] = (False, True, True, True)
_register(
    "reppoints_moment_x101_32x4d_dcn_fpn_gn",
    _builder("reppoints_moment_x101_32x4d_dcn_fpn_gn", "reppoints", 101, _X101_DCN),
)


def build_swin_detector(
    kind: str,
    arch: str = "swin_t",
    num_classes: int = 80,
    *,
    drop_path_rate: float = 0.2,
    frozen_stages: int = -1,
    with_cp: bool = False,
    backbone_pretrained: str | Path | None = None,
    fpn_channels: int = 256,
    add_extra_convs: str | None = None,
    **head_kwargs,
) -> DenseDetector:
    """A Swin-FPN dense detector as mmdetection's ``retinanet_swin-t-p4-w7_fpn_1x_coco.py``:
    stages 1-3 (``norm1..3``, strides 8-32) into an FPN with ``start_level=0``, whose P6
    and P7 come from extra convs (by default from the last Swin stage for RetinaNet).

    Args:
        kind: a head kind of :data:`DETECTORS`.
        arch: ``"swin_t"``, ``"swin_s"`` or ``"swin_b"`` (:data:`SWIN_ARCHS`).
        drop_path_rate, frozen_stages, with_cp: see :class:`SwinTransformer`.
        backbone_pretrained: an official ImageNet Swin checkpoint
            (``swin_tiny_patch4_window7_224.pth``), converted as mmdetection does.
        fpn_channels, add_extra_convs, **head_kwargs: as :func:`build_detector`.
    """
    if kind not in DETECTORS or arch not in SWIN_ARCHS:
        raise ConfigError(
            f"unknown Swin detector {kind!r}/{arch!r}; heads: {', '.join(DETECTORS)}; "
            f"backbones: {', '.join(SWIN_ARCHS)}"
        )
    head_cls, _, _, extra_convs, relu_before = DETECTORS[kind]
    backbone = SwinTransformer(
        **SWIN_ARCHS[arch],
        drop_path_rate=drop_path_rate,
        out_indices=(1, 2, 3),
        frozen_stages=frozen_stages,
        with_cp=with_cp,
    )
    if backbone_pretrained is not None:
        backbone.load_official(backbone_pretrained)
    neck = FPN(
        [info["num_chs"] for info in backbone.feature_info],
        fpn_channels,
        start_level=0,
        num_outs=5,
        add_extra_convs=add_extra_convs or extra_convs,
        relu_before_extra_convs=relu_before,
    )
    return DenseDetector(
        backbone, neck, head_cls(num_classes, in_channels=fpn_channels, **head_kwargs)
    )


def _swin_builder(kind: str, arch: str) -> Callable[..., nn.Module]:
    def build(num_classes: int = 80, **kwargs) -> DenseDetector:
        return build_swin_detector(kind, arch, num_classes, **kwargs)

    build.__name__ = f"{kind}_{arch}_fpn"
    build.__doc__ = f"{DETECTORS[kind][0].__name__} on {arch} FPN (mmdetection defaults)."
    return build


# CrossKD's heterogeneous teacher (retinanet_swin-t-p4-w7_fpn_1x_coco.py)
_register("retinanet_swin_t_fpn", _swin_builder("retinanet", "swin_t"))


def _dino_builder(depth: int) -> Callable[..., nn.Module]:
    def build(num_classes: int = 80, **kwargs) -> nn.Module:
        return build_dino(depth, num_classes, **kwargs)

    build.__name__ = f"dino_4scale_r{depth}"
    build.__doc__ = f"DINO-4scale on ResNet-{depth} (mmdetection's dino-4scale_r50_8xb2-12e_coco)."
    return build


for _depth in _DEPTHS:
    _register(f"dino_4scale_r{_depth}", _dino_builder(_depth))


def _grounding_dino_builder(depth: int) -> Callable[..., nn.Module]:
    def build(num_classes: int = 80, **kwargs) -> nn.Module:
        return build_grounding_dino(depth, num_classes, **kwargs)

    build.__name__ = f"grounding_dino_r{depth}"
    build.__doc__ = (
        f"Grounding DINO on ResNet-{depth} (mmdetection's "
        "grounding_dino_r50_scratch_8xb2_1x_coco); needs class_names and text_folder."
    )
    return build


for _depth in _DEPTHS:
    _register(f"grounding_dino_r{_depth}", _grounding_dino_builder(_depth))
