"""Loss terms, one file per method: a pure loss function first, then a thin module."""

from kdforge.losses._cakd_modules import (
    GroupLinearProjector,
    PartialCrossAttentionProjector,
    PatchDiscriminator,
)
from kdforge.losses.base import DistillBatch, LossTerm
from kdforge.losses.cakd import CAKDLoss, cakd_ramp
from kdforge.losses.cat_kd import (
    CATKDLoss,
    binarize_cam,
    cam_paths,
    cat_kd_loss,
    class_activation_map,
    select_partial_cams,
)
from kdforge.losses.ce import CrossEntropyLoss
from kdforge.losses.detection import DetectionLoss
from kdforge.losses.dkd import DKDLoss, dkd_loss
from kdforge.losses.fitnet import ConvRegressor, FitNetLoss, fitnet_loss
from kdforge.losses.kd import KDLoss, kd_loss
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
}

__all__ = [
    "TERMS",
    "CAKDLoss",
    "CATKDLoss",
    "ConvRegressor",
    "CrossEntropyLoss",
    "DKDLoss",
    "DetectionLoss",
    "DistillBatch",
    "FitNetLoss",
    "GroupLinearProjector",
    "KDLoss",
    "LossTerm",
    "PartialCrossAttentionProjector",
    "PatchDiscriminator",
    "SegmentationLoss",
    "binarize_cam",
    "cakd_ramp",
    "cam_paths",
    "cat_kd_loss",
    "class_activation_map",
    "dkd_loss",
    "fitnet_loss",
    "kd_loss",
    "select_partial_cams",
]
