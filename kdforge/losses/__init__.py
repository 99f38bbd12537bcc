"""Loss terms, one file per method: a pure loss function first, then a thin module."""

from kdforge.losses._cakd_modules import (
    GroupLinearProjector,
    PartialCrossAttentionProjector,
    PatchDiscriminator,
)
from kdforge.losses.base import DistillBatch, LossTerm
from kdforge.losses.cakd import CAKDLoss, cakd_ramp
from kdforge.losses.ce import CrossEntropyLoss
from kdforge.losses.detection import DetectionLoss
from kdforge.losses.dkd import DKDLoss, dkd_loss
from kdforge.losses.fitnet import ConvRegressor, FitNetLoss, fitnet_loss
from kdforge.losses.kd import KDLoss, kd_loss

# Config name -> term class; `loss: {<name>: {type: <key>, ...}}` in a recipe picks one.
TERMS: dict[str, type[LossTerm]] = {
    "ce": CrossEntropyLoss,
    "detection": DetectionLoss,
    "kd": KDLoss,
    "dkd": DKDLoss,
    "fitnet": FitNetLoss,
    "cakd": CAKDLoss,
}

__all__ = [
    "TERMS",
    "CAKDLoss",
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
    "cakd_ramp",
    "dkd_loss",
    "fitnet_loss",
    "kd_loss",
]
