"""``kdforge confusion-matrix``: the confusion matrix of a model on the validation set.

Rows are the true class, columns the predicted class, for

* classification: one count per image (the top-1 class);
* segmentation: one count per labelled pixel (the ignore index left out), the matrix
  ``kdforge.engine.seg_eval`` computes mIoU from;
* detection: mmdetection's ``tools/analysis_tools/confusion_matrix.py``: a ``K + 1``
  matrix whose last row and column are *background*. Per image, every detection scoring at
  least ``score_thr`` (0.3) counts once for each ground truth it overlaps with IoU >=
  ``iou_thr`` (0.5), at ``[gt label, det label]``; a detection overlapping none counts at
  ``[background, det label]``; a ground truth that no detection of its own label matched
  counts at ``[gt label, background]``. Crowd regions are left out (mmdetection 2.x's
  ``get_ann_info`` does so).

The picture is normalised per row (each true class sums to 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from tqdm import tqdm

from kdforge.analysis._common import load_model, task_of, validation_loader, write_csv
from kdforge.config import load_config
from kdforge.data.det_transforms import rescale_boxes
from kdforge.engine.seg_eval import confusion_matrix, slide_inference, whole_inference
from kdforge.models.detection.boxes import bbox_overlaps
from kdforge.models.segmentation.seg_loss import upsample_logits

__all__ = [
    "classification_confusion",
    "detection_confusion",
    "draw_confusion",
    "model_confusion",
    "most_confused",
    "run_confusion_matrix",
]


def classification_confusion(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """``(K, K)`` int64 counts of ``(true, predicted)`` label pairs."""
    index = target.long().flatten() * num_classes + pred.long().flatten()
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def detection_confusion(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    num_classes: int,
    score_thr: float = 0.3,
    iou_thr: float = 0.5,
) -> Tensor:
    """One image's ``(K + 1, K + 1)`` counts by mmdetection's rules (see the module docstring).

    Args:
        boxes, scores, labels: detections, ``(M, 4)`` xyxy, ``(M,)``, ``(M,)``.
        gt_boxes, gt_labels: ground truths, ``(G, 4)`` xyxy in the same pixels, ``(G,)``.
        num_classes: ``K``; index ``K`` is background.
        score_thr: detections scoring less are ignored.
        iou_thr: the IoU at which a detection matches a ground truth.
    """
    matrix = torch.zeros(num_classes + 1, num_classes + 1, dtype=torch.int64)
    keep = scores >= score_thr
    boxes, labels = boxes[keep].float(), labels[keep].long()
    gt_labels = gt_labels.long()
    if len(gt_boxes) and len(boxes):
        matched = bbox_overlaps(boxes, gt_boxes.float()) >= iou_thr  # (M, G)
    else:
        matched = torch.zeros(len(boxes), len(gt_boxes), dtype=torch.bool)
    for i, label in enumerate(labels.tolist()):
        gts = matched[i].nonzero().flatten().tolist()
        for j in gts:
            matrix[gt_labels[j], label] += 1
        if not gts:
            matrix[num_classes, label] += 1  # a false positive on background
    found = (matched & (labels[:, None] == gt_labels[None])).any(dim=0)  # (G,)
    for label in gt_labels[~found].tolist():
        matrix[label, num_classes] += 1  # missed
    return matrix


def most_confused(
    matrix: Tensor, names: Sequence[str], top_k: int = 10
) -> list[tuple[str, str, int, float]]:
    """The ``top_k`` largest off-diagonal counts as ``(true, predicted, count, row share)``."""
    counts = matrix.double().clone()
    counts.fill_diagonal_(0)
    rows = matrix.double().sum(1)
    order = counts.flatten().argsort(descending=True)[:top_k].tolist()
    k = matrix.shape[1]
    pairs = []
    for flat in order:
        i, j = divmod(flat, k)
        if counts[i, j] > 0:
            pairs.append((names[i], names[j], int(counts[i, j]), float(counts[i, j] / rows[i])))
    return pairs


def draw_confusion(
    matrix: Tensor,
    names: Sequence[str],
    path: str | Path,
    title: str,
    top_k: int = 10,
) -> Path:
    """Row-normalised matrix as a heatmap with class names and a colour bar; with more
    than 20 classes, cell values are left out and the ``top_k`` confused pairs listed."""
    from matplotlib.figure import Figure

    k = len(names)
    rows = matrix.double().sum(1, keepdim=True)
    shares = (matrix.double() / rows.clamp_min(1)).numpy()
    many = k > 20
    side = min(max(6.5, 0.45 * k + 3.0), 24.0)
    width = side + (4.5 if many else 0.0)
    fig = Figure(figsize=(width, side), layout="constrained")
    if many:
        ax, text_ax = fig.subplots(1, 2, width_ratios=[side, 4.5])
    else:
        ax, text_ax = fig.subplots(1, 1), None
    shown = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(shown, ax=ax, shrink=0.8).set_label("share of the true class's count")
    ticks = np.arange(k)
    size = 9 if k <= 20 else max(3, 9 - k // 20)
    if k <= 100:
        ax.set_xticks(ticks, labels=names, rotation=60, ha="right", fontsize=size)
        ax.set_yticks(ticks, labels=names, fontsize=size)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    if not many:
        for i in range(k):
            for j in range(k):
                if rows[i] > 0:
                    colour = "white" if shares[i, j] > 0.5 else "black"
                    text = f"{shares[i, j]:.2f}"
                    ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    if text_ax is not None:
        text_ax.axis("off")
        lines = [f"{t} → {p}: {n} ({s:.0%})" for t, p, n, s in most_confused(matrix, names, top_k)]
        text_ax.set_title(f"top {top_k} confused pairs (true → predicted)", fontsize=9)
        text_ax.text(0, 1, "\n".join(lines), va="top", fontsize=8, family="monospace")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


@torch.no_grad()
def model_confusion(
    model: nn.Module,
    loader: Iterable,
    task: str,
    num_classes: int,
    device: torch.device,
    max_batches: int | None = None,
    score_thr: float = 0.3,
    iou_thr: float = 0.5,
) -> Tensor:
    """The confusion matrix of ``model`` over a validation ``loader`` of the given task."""
    size = num_classes + 1 if task == "detection" else num_classes
    matrix = torch.zeros(size, size, dtype=torch.int64)
    inference = getattr(getattr(loader, "dataset", None), "inference", {})
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    for i, (images, targets) in enumerate(tqdm(loader, total=total, desc="confusion matrix")):
        if max_batches is not None and i >= max_batches:
            break
        images = images.to(device)
        if task == "classification":
            matrix += classification_confusion(model(images).argmax(1).cpu(), targets, num_classes)
        elif task == "segmentation":
            if inference.get("mode", "whole") == "slide":
                crop = {k: v for k, v in inference.items() if k != "mode"}
                logits = slide_inference(model, images, num_classes, **crop)
            else:
                logits = whole_inference(model, images)
            pred = upsample_logits(logits, tuple(targets.shape[-2:])).argmax(1).cpu()
            matrix += confusion_matrix(pred, targets, num_classes)
        else:
            results = model.predict(model(images), [t["img_shape"] for t in targets])
            for result, target in zip(results, targets, strict=True):
                matrix += detection_confusion(
                    rescale_boxes(result["boxes"].float().cpu(), target),
                    result["scores"].cpu(),
                    result["labels"].cpu(),
                    rescale_boxes(target["boxes"].float(), target),
                    target["labels"],
                    num_classes,
                    score_thr,
                    iou_thr,
                )
    return matrix


def run_confusion_matrix(
    config: str | Path,
    checkpoint: str | Path | None,
    out: str | Path = "confusion",
    role: str = "student",
    top_k: int = 10,
    score_thr: float = 0.3,
    iou_thr: float = 0.5,
    max_batches: int | None = None,
    overrides: Sequence[str] | None = None,
) -> tuple[Path, Path, list[tuple[str, str, int, float]]]:
    """Write ``out/confusion_matrix.{png,csv}`` (raw counts in the CSV) for a recipe's model.

    Returns the two paths and the ``top_k`` most confused pairs.
    """
    cfg: DictConfig = load_config(config, list(overrides or []))
    task_of(cfg)
    loader, device = validation_loader(cfg)
    dataset = loader.dataset
    names = [str(n) for n in dataset.classes]
    model = load_model(cfg, role, checkpoint, dataset.num_classes).to(device)
    matrix = model_confusion(
        model, loader, cfg.task, len(names), device, max_batches, score_thr, iou_thr
    )
    if cfg.task == "detection":
        names.append("background")
    unit = {"classification": "images", "segmentation": "pixels", "detection": "counts"}[cfg.task]
    title = f"{role} {cfg[role].name}: confusion on validation ({int(matrix.sum())} {unit})"
    if cfg.task == "detection":
        title += f"\nscore >= {score_thr}, IoU >= {iou_thr}; background = missed / false alarm"
    out = Path(out)
    png = draw_confusion(matrix, names, out / "confusion_matrix.png", title, top_k)
    rows = [[name, *row] for name, row in zip(names, matrix.tolist(), strict=True)]
    csv = write_csv(out / "confusion_matrix.csv", ["true \\ predicted", *names], rows)
    return png, csv, most_confused(matrix, names, top_k)
