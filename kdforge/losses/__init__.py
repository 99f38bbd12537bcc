"""Loss terms, one file per method: a pure loss function first, then a thin module."""

from kdforge.losses.base import DistillBatch, LossTerm
from kdforge.losses.ce import CrossEntropyLoss
from kdforge.losses.dkd import DKDLoss, dkd_loss
from kdforge.losses.fitnet import ConvRegressor, FitNetLoss, fitnet_loss
from kdforge.losses.kd import KDLoss, kd_loss

# Config name -> term class; `loss: {<name>: {type: <key>, ...}}` in a recipe picks one.
TERMS: dict[str, type[LossTerm]] = {
    "ce": CrossEntropyLoss,
    "kd": KDLoss,
    "dkd": DKDLoss,
    "fitnet": FitNetLoss,
}

__all__ = [
    "TERMS",
    "ConvRegressor",
    "CrossEntropyLoss",
    "DKDLoss",
    "DistillBatch",
    "FitNetLoss",
    "KDLoss",
    "LossTerm",
    "dkd_loss",
    "fitnet_loss",
    "kd_loss",
]
