"""What differs between classification, detection and segmentation runs, a record each.

A recipe's ``task`` key picks one (:func:`get_task`). The trainer itself knows no task: it
gets batches, a loss dict and an evaluation function; the analysis commands read a task's
input view and confusion counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset

from kdforge.data import build_coco_datasets, build_datasets, build_segmentation_datasets
from kdforge.data import transforms as T
from kdforge.data.det_transforms import collate_detection, rescale_boxes
from kdforge.data.objects365 import build_objects365v2_datasets
from kdforge.data.presets import classification_view, detection_eval, segmentation_eval
from kdforge.data.seg_transforms import collate_segmentation
from kdforge.engine.eval import (
    classification_confusion,
    confusion_matrix,
    detection_confusion,
    evaluate_classifier,
    evaluate_detector,
    evaluate_segmentation,
    segmentation_logits,
)
from kdforge.errors import ConfigError
from kdforge.models.segmentation.seg_loss import upsample_logits

__all__ = [
    "TASKS",
    "Task",
    "check_detector_ap",
    "check_segmentor_miou",
    "check_teacher_accuracy",
    "get_task",
]

View = tuple[np.ndarray, Tensor]  # (picture (H, W, 3) uint8, model input (1, 3, H', W'))


def check_teacher_accuracy(metrics: dict[str, float], num_classes: int, name: str) -> None:
    """Fail when the teacher is not clearly better than guessing (3 sigma above chance)."""
    top1, count = metrics["top1"], metrics["count"]
    chance = 100.0 / num_classes
    sigma = 100.0 * math.sqrt((chance / 100) * (1 - chance / 100) / max(count, 1))
    if top1 <= chance + 3 * sigma:
        raise ConfigError(
            f"teacher {name!r} scores {top1:.2f}% top-1 on the validation set, no better than "
            f"chance ({chance:.2f}%). Set teacher.pretrained to a trained checkpoint, or "
            "train.check_teacher=false to distil from it anyway."
        )


def check_detector_ap(metrics: dict[str, float], num_classes: int, name: str) -> None:
    """Fail when the teacher detector finds (almost) nothing: AP under 1 point."""
    if metrics["AP"] < 0.01:
        raise ConfigError(
            f"teacher {name!r} scores {metrics['AP']:.3f} COCO AP on the validation set: it "
            "detects nothing. Set teacher.pretrained to a trained detector (an mmdetection "
            "checkpoint converts with `kdforge convert mmdet`), or train.check_teacher=false."
        )


def check_segmentor_miou(metrics: dict[str, float], num_classes: int, name: str) -> None:
    """Fail when the teacher segmentor is no better than labelling every pixel one class."""
    if metrics["mIoU"] <= 100.0 / num_classes:
        raise ConfigError(
            f"teacher {name!r} scores {metrics['mIoU']:.2f} mIoU on the validation set, no "
            f"better than one class everywhere ({100.0 / num_classes:.2f}). Set "
            "teacher.pretrained to a trained segmentor (`kdforge convert mmseg` converts "
            "mmsegmentation checkpoints), or train.check_teacher=false."
        )


def _options(data_cfg: DictConfig, tuples: tuple[str, ...]) -> dict[str, Any]:
    """``data.options`` as a dict, the keys in ``tuples`` (YAML lists) as tuples."""
    options: dict[str, Any] = OmegaConf.to_container(data_cfg.options, resolve=True)
    options["on_bad_sample"] = data_cfg.get("on_bad_sample", "error")  # data/bad_samples.py
    return {k: tuple(v) if k in tuples else v for k, v in options.items()}


def _classification_data(data_cfg: DictConfig) -> tuple[Dataset, Dataset]:
    return build_datasets(data_cfg.name, data_cfg.root, **_options(data_cfg, ()))


_DET_DATA = {"coco": build_coco_datasets, "objects365v2": build_objects365v2_datasets}


def _detection_options(data_cfg: DictConfig) -> dict[str, Any]:
    """The data set builder's options (``size_divisor`` is the collate's: left out)."""
    if data_cfg.name not in _DET_DATA:
        raise ConfigError(
            "task detection reads COCO-format data: set data.name=objects365v2 (Objects365 v2 "
            f"as mmdetection lays it out) or data.name=coco, not {data_cfg.name!r}"
        )
    options = _options(data_cfg, ("scale",))
    options.pop("size_divisor", None)
    if options.get("train_scales"):
        options["train_scales"] = [tuple(s) for s in options["train_scales"]]
    return options


def _detection_data(data_cfg: DictConfig) -> tuple[Dataset, Dataset]:
    options = _detection_options(data_cfg)  # checks data.name first
    _detection_batching(data_cfg)  # a bad size_divisor fails before the data loads
    return _DET_DATA[data_cfg.name](data_cfg.root, **options)


def _detection_batching(data_cfg: DictConfig) -> dict[str, Any]:
    """``collate_detection``'s ``size_divisor`` from ``data.options.size_divisor`` (default
    32; mmdetection's ``pad_size_divisor``, 1 for DINO and Grounding DINO)."""
    divisor = data_cfg.options.get("size_divisor", 32)
    if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 1:
        raise ConfigError(
            f"data.options.size_divisor={divisor!r}: batches are padded to a multiple of it, "
            "so it must be a positive integer (32 for most detectors, 1 for the DETR family)"
        )
    return {"size_divisor": divisor}


_SEG_DATA = {"cityscapes": "cityscapes", "segfolder": "folder"}
_SEG_TUPLES = ("crop_size", "scale", "ratio_range", "splits", "slide_crop", "slide_stride")


def _segmentation_data(data_cfg: DictConfig) -> tuple[Dataset, Dataset]:
    if data_cfg.name not in _SEG_DATA:
        raise ConfigError(
            f"task segmentation reads data.name cityscapes or segfolder, not {data_cfg.name!r}"
        )
    options = _options(data_cfg, _SEG_TUPLES)
    inference = options.pop("inference", "whole")  # how evaluate_segmentation runs
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


def _classification_view(data_cfg: DictConfig, image: Image.Image) -> View:
    """Resized (and cropped) to the model's input size, as the data set's images are."""
    resize, normalize = classification_view(data_cfg.name, data_cfg.options)
    view = resize(image)
    x = T.ToTensor()(view)
    return np.asarray(view), (normalize(x) if normalize is not None else x)[None]


def _pipeline_view(pipeline: Callable, collate: Callable, image: Image.Image, blank: Any) -> View:
    """Through the validation pipeline with an empty ``blank`` target, batched as the task
    batches (detection pads to ``data.options.size_divisor``: ``H', W' >= H, W``, bottom and
    right)."""
    item = pipeline(image, blank)
    height, width = item[0].shape[-2:]
    picture = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
    return picture, collate([item])[0]


def _detection_view(data_cfg: DictConfig, image: Image.Image) -> View:
    options = _detection_options(data_cfg)
    pipeline = detection_eval(**{k: options[k] for k in ("scale", "normalize") if k in options})
    width, height = image.size
    blank = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "ignore_boxes": torch.zeros(0, 4),
        "image_id": 0,
        "orig_size": (height, width),
        "img_shape": (height, width),
        "scale_factor": (1.0, 1.0),
        "flip": False,
    }
    collate = partial(collate_detection, **_detection_batching(data_cfg))
    return _pipeline_view(pipeline, collate, image, blank)


def _segmentation_view(data_cfg: DictConfig, image: Image.Image) -> View:
    unlabelled = Image.new("L", image.size, 255)
    return _pipeline_view(segmentation_eval(), collate_segmentation, image, unlabelled)


def _classification_counts(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    val: Dataset,
    score_thr: float,
    iou_thr: float,
) -> Tensor:
    return classification_confusion(model(images).argmax(1).cpu(), targets, val.num_classes)


def _segmentation_counts(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    val: Dataset,
    score_thr: float,
    iou_thr: float,
) -> Tensor:
    logits = segmentation_logits(model, images, val.num_classes, **getattr(val, "inference", {}))
    pred = upsample_logits(logits, tuple(targets.shape[-2:])).argmax(1).cpu()
    return confusion_matrix(pred, targets, val.num_classes)


def _detection_counts(
    model: nn.Module,
    images: Tensor,
    targets: list,
    val: Dataset,
    score_thr: float,
    iou_thr: float,
) -> Tensor:
    k = val.num_classes
    matrix = torch.zeros(k + 1, k + 1, dtype=torch.int64)
    results = model.predict(model(images), [t["img_shape"] for t in targets])
    for result, target in zip(results, targets, strict=True):
        matrix += detection_confusion(
            rescale_boxes(result["boxes"].float().cpu(), target),
            result["scores"].cpu(),
            result["labels"].cpu(),
            rescale_boxes(target["boxes"].float(), target),
            target["labels"],
            k,
            score_thr,
            iou_thr,
        )
    return matrix


@dataclass(frozen=True)
class Task:
    """One kind of run.

    Attributes:
        name: the recipe's ``task`` value.
        metric: the evaluation key that selects ``best.pt`` (higher is better).
        loss: the loss term of the ground truth, used when a recipe lists no loss.
        build_datasets: ``data config -> (train, val)`` data sets with ``num_classes``.
        collate: batches items into ``(inputs, targets)`` (None: torch's default).
        batching: ``data config -> keyword arguments of collate`` (the recipe's batching
            options); :meth:`collate_for` binds them.
        evaluate: ``(model, loader, device, amp_dtype, max_batches) -> metrics``.
        check_teacher: ``(metrics, num_classes, name)``; raises if the teacher is useless.
        counted: what the evaluation's ``count`` counts, for messages.
        report: which evaluation papers of this task report: ``"best"`` (mdistiller's
            best epoch) or ``"final"`` (mmdetection's and mmsegmentation's last checkpoint);
            a recipe's ``train.report`` overrides it.
        view: ``(data config, PIL image) -> (picture (H, W, 3) uint8, input (1, 3, H', W'))``:
            any image file as the models see it, from the recipe alone.
        confusion: ``(model, images, targets, val set, score_thr, iou_thr) -> counts`` of one
            batch, rows the true class, columns the predicted one: ``(K, K)``, or
            ``(K + 1, K + 1)`` with background last when detections are matched to boxes
            (by score and IoU thresholds, which only detection reads).
    """

    name: str
    metric: str
    loss: str
    build_datasets: Callable[[DictConfig], tuple[Dataset, Dataset]]
    collate: Callable | None
    evaluate: Callable[..., dict[str, float]]
    check_teacher: Callable[[dict[str, float], int, str], None]
    counted: str
    report: str
    view: Callable[[DictConfig, Image.Image], View]
    confusion: Callable[..., Tensor]
    batching: Callable[[DictConfig], dict[str, Any]] = lambda _data_cfg: {}  # no options

    def collate_for(self, data_cfg: DictConfig) -> Callable | None:
        """``collate`` with the recipe's batching options bound (None: torch's default)."""
        options = self.batching(data_cfg)
        return partial(self.collate, **options) if options and self.collate else self.collate


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            name="classification",
            metric="top1",
            loss="ce",
            build_datasets=_classification_data,
            collate=None,
            evaluate=evaluate_classifier,
            check_teacher=check_teacher_accuracy,
            counted="images",
            report="best",
            view=_classification_view,
            confusion=_classification_counts,
        ),
        Task(
            name="segmentation",
            metric="mIoU",
            loss="segmentation",
            build_datasets=_segmentation_data,
            collate=collate_segmentation,
            evaluate=_evaluate_segmentor,
            check_teacher=check_segmentor_miou,
            counted="labelled pixels",
            report="final",
            view=_segmentation_view,
            confusion=_segmentation_counts,
        ),
        Task(
            name="detection",
            metric="AP",
            loss="detection",
            build_datasets=_detection_data,
            collate=collate_detection,
            evaluate=evaluate_detector,
            check_teacher=check_detector_ap,
            counted="images",
            report="final",
            view=_detection_view,
            confusion=_detection_counts,
            batching=_detection_batching,
        ),
    )
}


def get_task(name: str) -> Task:
    """The task a recipe's ``task`` value names; an unknown name lists the valid ones."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[name]
