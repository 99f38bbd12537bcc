"""Evaluation by task: top-1/top-5 (classification), COCO box AP (detection), mIoU
(segmentation), and the confusion counts of each."""

from kdforge.engine.eval.classification import classification_confusion, evaluate_classifier
from kdforge.engine.eval.detection import (
    METRICS,
    detection_confusion,
    evaluate_coco,
    evaluate_detector,
    to_coco_results,
)
from kdforge.engine.eval.segmentation import (
    confusion_matrix,
    evaluate_segmentation,
    format_iou_table,
    segmentation_logits,
    segmentation_metrics,
    slide_inference,
    whole_inference,
)

__all__ = [
    "METRICS",
    "classification_confusion",
    "confusion_matrix",
    "detection_confusion",
    "evaluate_classifier",
    "evaluate_coco",
    "evaluate_detector",
    "evaluate_segmentation",
    "format_iou_table",
    "segmentation_logits",
    "segmentation_metrics",
    "slide_inference",
    "to_coco_results",
    "whole_inference",
]
