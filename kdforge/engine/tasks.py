"""What differs between classification, detection and segmentation runs, a record each.

A recipe's ``task`` key picks one. The trainer itself knows no task: it gets batches,
a loss dict and an evaluation function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from kdforge.data import build_datasets
from kdforge.data.cityscapes import build_segmentation_datasets
from kdforge.data.coco import build_coco_datasets
from kdforge.data.det_transforms import collate_detection
from kdforge.data.seg_transforms import collate_segmentation
from kdforge.engine.evaluate import evaluate_classifier, evaluate_detector
from kdforge.engine.seg_eval import evaluate_segmentation

__all__ = ["TASKS", "Task", "check_detector_ap", "check_segmentor_miou", "check_teacher_accuracy"]


def check_teacher_accuracy(metrics: dict[str, float], num_classes: int, name: str) -> None:
    """Fail when the teacher is not clearly better than guessing (3 sigma above chance)."""
    top1, count = metrics["top1"], metrics["count"]
    chance = 100.0 / num_classes
    sigma = 100.0 * math.sqrt((chance / 100) * (1 - chance / 100) / max(count, 1))
    if top1 <= chance + 3 * sigma:
        raise RuntimeError(
            f"teacher {name!r} scores {top1:.2f}% top-1 on the validation set, no better than "
            f"chance ({chance:.2f}%). Set teacher.pretrained to a trained checkpoint, or "
            "train.check_teacher=false to distil from it anyway."
        )


def check_detector_ap(metrics: dict[str, float], num_classes: int, name: str) -> None:
    """Fail when the teacher detector finds (almost) nothing: AP under 1 point."""
    if metrics["AP"] < 0.01:
        raise RuntimeError(
            f"teacher {name!r} scores {metrics['AP']:.3f} COCO AP on the validation set: it "
            "detects nothing. Set teacher.pretrained to a trained detector (an mmdetection "
            "checkpoint converts with `kdforge convert mmdet`), or train.check_teacher=false."
        )


def check_segmentor_miou(metrics: dict[str, float], num_classes: int, name: str) -> None:
    """Fail when the teacher segmentor is no better than labelling every pixel one class."""
    if metrics["mIoU"] <= 100.0 / num_classes:
        raise RuntimeError(
            f"teacher {name!r} scores {metrics['mIoU']:.2f} mIoU on the validation set, no "
            f"better than one class everywhere ({100.0 / num_classes:.2f}). Set "
            "teacher.pretrained to a trained segmentor (`kdforge convert mmseg` converts "
            "mmsegmentation checkpoints), or train.check_teacher=false."
        )


def _classification_data(data_cfg: DictConfig) -> tuple[Dataset, Dataset]:
    options = OmegaConf.to_container(data_cfg.options, resolve=True)
    return build_datasets(data_cfg.name, data_cfg.root, **options)


def _detection_data(data_cfg: DictConfig) -> tuple[Dataset, Dataset]:
    if data_cfg.name != "coco":
        raise ValueError(
            f"task detection reads COCO-format data: set data.name=coco, not {data_cfg.name!r}"
        )
    options: dict[str, Any] = OmegaConf.to_container(data_cfg.options, resolve=True)
    for key in ("scale",):
        if key in options:
            options[key] = tuple(options[key])
    if options.get("train_scales"):
        options["train_scales"] = [tuple(s) for s in options["train_scales"]]
    return build_coco_datasets(data_cfg.root, **options)


_SEG_DATA = {"cityscapes": "cityscapes", "segfolder": "folder"}


def _segmentation_data(data_cfg: DictConfig) -> tuple[Dataset, Dataset]:
    if data_cfg.name not in _SEG_DATA:
        raise ValueError(
            f"task segmentation reads data.name cityscapes or segfolder, not {data_cfg.name!r}"
        )
    options: dict[str, Any] = OmegaConf.to_container(data_cfg.options, resolve=True)
    inference = options.pop("inference", "whole")  # how evaluate_segmentation runs
    for key in ("crop_size", "scale", "ratio_range", "splits", "slide_crop", "slide_stride"):
        if key in options:
            options[key] = tuple(options[key])
    slide = {k: options.pop(f"slide_{k}") for k in ("crop", "stride") if f"slide_{k}" in options}
    train, val = build_segmentation_datasets(
        data_cfg.root, layout=_SEG_DATA[data_cfg.name], **options
    )
    val.inference = {"mode": inference, **slide}
    return train, val


def _evaluate_segmentor(model, loader, device, amp_dtype=None, max_batches=None):
    """mIoU/mAcc/aAcc (%) and the per-class table; inference mode from ``data.options``."""
    val = loader.dataset
    return evaluate_segmentation(
        model,
        loader,
        device,
        val.num_classes,
        class_names=val.classes,
        amp_dtype=amp_dtype,
        max_batches=max_batches,
        **getattr(val, "inference", {}),
    )


@dataclass(frozen=True)
class Task:
    """One kind of run.

    Attributes:
        metric: the evaluation key that selects ``best.pt`` (higher is better).
        loss: the loss term of the ground truth, used when a recipe lists no loss.
        build_datasets: ``data config -> (train, val)`` data sets with ``num_classes``.
        collate: batches items into ``(inputs, targets)`` (None: torch's default).
        evaluate: ``(model, loader, device, amp_dtype, max_batches) -> metrics``.
        check_teacher: ``(metrics, num_classes, name)``; raises if the teacher is useless.
    """

    metric: str
    loss: str
    build_datasets: Callable[[DictConfig], tuple[Dataset, Dataset]]
    collate: Callable | None
    evaluate: Callable[..., dict[str, float]]
    check_teacher: Callable[[dict[str, float], int, str], None]


TASKS: dict[str, Task] = {
    "classification": Task(
        "top1", "ce", _classification_data, None, evaluate_classifier, check_teacher_accuracy
    ),
    "segmentation": Task(
        "mIoU",
        "segmentation",
        _segmentation_data,
        collate_segmentation,
        _evaluate_segmentor,
        check_segmentor_miou,
    ),
    "detection": Task(
        "AP",
        "detection",
        _detection_data,
        collate_detection,
        evaluate_detector,
        check_detector_ap,
    ),
}
