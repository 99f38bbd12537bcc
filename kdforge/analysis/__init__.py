"""Analysis of trained models: what they attend to, where they err, how robust they are.

Each module backs one command: ``kdforge visualize features|cam|attention``
(:mod:`.features`, :mod:`.cam`, :mod:`.attention`), ``kdforge confusion-matrix``
(:mod:`.confusion`), ``kdforge robustness`` (:mod:`.robustness` with the corruptions of
:mod:`.corruptions`) and ``kdforge probe`` (:mod:`.probe`). :mod:`.loading` builds a
recipe's models, validation data and model inputs for all of them.
"""

from kdforge.analysis.attention import visualize_attention
from kdforge.analysis.cam import visualize_cam
from kdforge.analysis.confusion import run_confusion_matrix
from kdforge.analysis.corruptions import CORRUPTIONS, corrupt
from kdforge.analysis.features import visualize_features
from kdforge.analysis.loading import load_model, model_input, validation_loader, write_csv
from kdforge.analysis.probe import format_probe, probe_model
from kdforge.analysis.robustness import CorruptedDataset, run_robustness

__all__ = [
    "CORRUPTIONS",
    "CorruptedDataset",
    "corrupt",
    "format_probe",
    "load_model",
    "model_input",
    "probe_model",
    "run_confusion_matrix",
    "run_robustness",
    "validation_loader",
    "visualize_attention",
    "visualize_cam",
    "visualize_features",
    "write_csv",
]
