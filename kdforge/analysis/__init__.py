"""Analysis of trained models: feature maps, confusion matrices, robustness, run comparison.

Each module backs one command: ``kdforge visualize features`` (:mod:`.features`),
``kdforge confusion-matrix`` (:mod:`.confusion`), ``kdforge robustness`` (:mod:`.robustness`
with the corruptions of :mod:`.corruptions`) and ``kdforge compare`` (:mod:`.compare`).
"""

from kdforge.analysis.compare import run_compare
from kdforge.analysis.confusion import run_confusion_matrix
from kdforge.analysis.corruptions import CORRUPTIONS, corrupt
from kdforge.analysis.features import visualize_features
from kdforge.analysis.robustness import CorruptedDataset, run_robustness

__all__ = [
    "CORRUPTIONS",
    "CorruptedDataset",
    "corrupt",
    "run_compare",
    "run_confusion_matrix",
    "run_robustness",
    "visualize_features",
]
