"""Loss terms, one file per method: a pure loss function first, then a thin term module.

Every term subclasses :class:`LossTerm`, is named ``<Method>Loss`` and is registered in
:data:`TERMS` under the key that recipes give as ``type:``. Constructors take module paths
first, then keyword-only hyper-parameters, ``weight`` first with the official default.
Shared argument and shape checks live in ``_checks.py``, other shared helpers in
``_common.py``; method files import neither each other nor anything but these and ``base``.
"""

from kdforge.losses._cakd_modules import (
    GroupLinearProjector,
    PartialCrossAttentionProjector,
    PatchDiscriminator,
)
from kdforge.losses._common import init_student_from_teacher
from kdforge.losses.base import DistillBatch, LayerPairTerm, LossTerm
from kdforge.losses.cakd import CAKDLoss, cakd_ramp
from kdforge.losses.cankd import CanKDAlignLoss, CanKDLevelLoss, CanKDLoss
from kdforge.losses.cat_kd import (
    CATKDLoss,
    binarize_cam,
    cam_paths,
    cat_kd_loss,
    class_activation_map,
    select_partial_cams,
)
from kdforge.losses.ce import CrossEntropyLoss
from kdforge.losses.crosskd import (
    CrossKDLoss,
    align_scale,
    cross_head_forward,
    kd_quality_focal_loss,
    kl_div_distill_loss,
)
from kdforge.losses.detection import DetectionLoss
from kdforge.losses.dkd import DKDLoss, dkd_loss
from kdforge.losses.fitnet import ConvRegressor, FitNetLoss, fitnet_loss
from kdforge.losses.kd import KDLoss, kd_loss
from kdforge.losses.mgd import MGDLoss, mgd_loss
from kdforge.losses.pkd import PKDLoss, pkd_loss
from kdforge.losses.segmentation import SegmentationLoss

# Config name -> term class; `loss: {<name>: {type: <key>, ...}}` in a recipe picks one.
TERMS: dict[str, type[LossTerm]] = {
    "ce": CrossEntropyLoss,
    "detection": DetectionLoss,
    "segmentation": SegmentationLoss,
    "kd": KDLoss,
    "dkd": DKDLoss,
    "fitnet": FitNetLoss,
    "cakd": CAKDLoss,
    "cat_kd": CATKDLoss,
    "crosskd": CrossKDLoss,
    "pkd": PKDLoss,
    "cankd": CanKDLoss,
    "mgd": MGDLoss,
}

__all__ = [
    "TERMS",
    "CAKDLoss",
    "CATKDLoss",
    "CanKDAlignLoss",
    "CanKDLevelLoss",
    "CanKDLoss",
    "ConvRegressor",
    "CrossEntropyLoss",
    "CrossKDLoss",
    "DKDLoss",
    "DetectionLoss",
    "DistillBatch",
    "FitNetLoss",
    "GroupLinearProjector",
    "KDLoss",
    "LayerPairTerm",
    "LossTerm",
    "MGDLoss",
    "PKDLoss",
    "PartialCrossAttentionProjector",
    "PatchDiscriminator",
    "SegmentationLoss",
    "align_scale",
    "binarize_cam",
    "cakd_ramp",
    "cam_paths",
    "cat_kd_loss",
    "class_activation_map",
    "cross_head_forward",
    "dkd_loss",
    "fitnet_loss",
    "init_student_from_teacher",
    "kd_loss",
    "kd_quality_focal_loss",
    "kl_div_distill_loss",
    "mgd_loss",
    "pkd_loss",
    "select_partial_cams",
]
