"""kdforge: knowledge distillation in plain PyTorch."""

from kdforge.distiller import Distiller
from kdforge.models import create_model, list_models, load_model
from kdforge.taps import FeatureTaps

__all__ = ["Distiller", "FeatureTaps", "create_model", "list_models", "load_model"]
__version__ = "0.1.0"
