"""Semantic segmentation evaluation: confusion matrix, mIoU, per-class IoU, pixel accuracy.

Follows mmsegmentation's ``IoUMetric``: pixels labelled ``ignore_index`` are skipped; per
class ``IoU = TP / (TP + FP + FN)`` and ``Acc = TP / (TP + FN)``; classes absent from both
labels and predictions (``NaN``) are left out of the means ``mIoU`` and ``mAcc``; ``aAcc``
is the fraction of labelled pixels predicted right. Inference is ``whole`` (one forward
per image, logits upsampled to the image) or ``slide`` (overlapping windows, mmseg's
``slide_inference``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from kdforge.engine.distributed import all_reduce_sum
from kdforge.models.segmentation.seg_loss import upsample_logits

__all__ = [
    "confusion_matrix",
    "evaluate_segmentation",
    "format_iou_table",
    "segmentation_logits",
    "segmentation_metrics",
    "slide_inference",
    "whole_inference",
]


def confusion_matrix(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255
) -> Tensor:
    """``(K, K)`` int64 counts, rows = true class, columns = predicted class.

    Raises:
        ValueError: a label outside ``0..K-1`` that is not ``ignore_index`` (e.g. Cityscapes
            ``labelIds`` given where train ids are expected).
    """
    target = target.long().flatten()
    valid = target != ignore_index
    target, pred = target[valid], pred.long().flatten()[valid]
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(
            f"label values {sorted(set(target.unique().tolist()) - set(range(num_classes)))} "
            f"are outside 0..{num_classes - 1} and not the ignore index {ignore_index}"
        )
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes)


def segmentation_metrics(confusion: Tensor) -> dict[str, Tensor | float]:
    """``aAcc``, ``mIoU``, ``mAcc`` (in %) and per-class ``IoU``, ``Acc`` (``(K,)``, % or NaN)."""
    conf = confusion.double().cpu()
    tp, label_area, pred_area = conf.diag(), conf.sum(1), conf.sum(0)
    iou = 100.0 * tp / (label_area + pred_area - tp)  # 0/0 = NaN: class absent from both
    acc = 100.0 * tp / label_area
    return {
        "aAcc": (100.0 * tp.sum() / conf.sum().clamp(min=1)).item(),
        "mIoU": iou.nanmean().item(),
        "mAcc": acc.nanmean().item(),
        "IoU": iou,
        "Acc": acc,
    }


def format_iou_table(metrics: dict, class_names: Sequence[str] | None = None) -> str:
    """A text table of per-class IoU and Acc (%) with the summary below, as mmseg prints."""
    iou, acc = metrics["IoU"].tolist(), metrics["Acc"].tolist()
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(iou))]
    if len(names) != len(iou):
        raise ValueError(f"{len(names)} class names for {len(iou)} classes")
    width = max(len("Class"), *(len(n) for n in names))
    rows = [f"| {'Class':<{width}} |    IoU |    Acc |", f"|{'-' * (width + 2)}|--------|--------|"]
    rows += [
        f"| {n:<{width}} | {i:6.2f} | {a:6.2f} |" for n, i, a in zip(names, iou, acc, strict=True)
    ]
    rows.append(
        f"aAcc {metrics['aAcc']:.2f}  mIoU {metrics['mIoU']:.2f}  mAcc {metrics['mAcc']:.2f}"
    )
    return "\n".join(rows)


def _logits(model: nn.Module, images: Tensor) -> Tensor:
    out = model(images)
    if isinstance(out, dict):  # torchvision-style {"out": ..., "aux": ...}
        out = out["out"]
    return upsample_logits(out.float(), tuple(images.shape[-2:]))


def whole_inference(model: nn.Module, images: Tensor) -> Tensor:
    """``(N, K, H, W)`` logits: one forward, upsampled bilinearly to the image size."""
    return _logits(model, images)


def slide_inference(
    model: nn.Module,
    image: Tensor,
    num_classes: int,
    crop: tuple[int, int] = (512, 1024),
    stride: tuple[int, int] = (341, 683),
) -> Tensor:
    """Sliding-window logits ``(N, K, H, W)``, as mmsegmentation's ``slide`` test mode.

    Windows of ``crop = (h, w)`` every ``stride`` pixels (the last row/column shifted back
    to end at the border; a window larger than the image is the image) are run one by one,
    their logits upsampled to the window, summed where windows overlap and divided by the
    number of windows covering each pixel.
    """
    n, _, height, width = image.shape
    (crop_h, crop_w), (stride_h, stride_w) = crop, stride
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    total = image.new_zeros((n, num_classes, height, width), dtype=torch.float32)
    count = image.new_zeros((1, 1, height, width), dtype=torch.float32)
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride_h + crop_h, height), min(c * stride_w + crop_w, width)
            y1, x1 = max(y2 - crop_h, 0), max(x2 - crop_w, 0)
            total[:, :, y1:y2, x1:x2] += _logits(model, image[:, :, y1:y2, x1:x2])
            count[:, :, y1:y2, x1:x2] += 1
    return total / count


def segmentation_logits(
    model: nn.Module,
    images: Tensor,
    num_classes: int,
    mode: str = "whole",
    crop: tuple[int, int] = (512, 1024),
    stride: tuple[int, int] = (341, 683),
) -> Tensor:
    """``(N, K, H, W)`` logits by :func:`whole_inference` or, with ``mode="slide"``,
    :func:`slide_inference` (windows ``crop`` every ``stride``)."""
    if mode == "slide":
        return slide_inference(model, images, num_classes, crop, stride)
    return whole_inference(model, images)


@torch.no_grad()
def evaluate_segmentation(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    num_classes: int,
    mode: str = "whole",
    class_names: Sequence[str] | None = None,
    amp_dtype: torch.dtype | None = None,
    max_batches: int | None = None,
    crop: tuple[int, int] = (512, 1024),
    stride: tuple[int, int] = (341, 683),
    ignore_index: int = 255,
) -> dict[str, float | int | str]:
    """mIoU, mAcc, aAcc (%) of ``model`` over ``loader`` of ``(images, masks)``, all processes.

    Each process evaluates its own shard; confusion matrices are summed over processes.

    Args:
        model: ``images -> logits (N, K, h, w)`` at any resolution (or a dict with ``"out"``);
            set to eval mode here and put back in the mode it was in.
        loader: ``(images (N, 3, H, W), masks (N, H, W))`` batches (``collate_segmentation``).
        device: where to run.
        num_classes: ``K``; labels must be ``0..K-1`` or ``ignore_index``.
        mode: ``"whole"`` or ``"slide"`` (windows ``crop`` every ``stride``, ``(h, w)``).
        class_names: row names of the table (indices by default).
        amp_dtype: autocast dtype (e.g. ``torch.bfloat16``); None for float32.
        max_batches: stop after this many batches (quick checks).
        crop: sliding window size.
        stride: sliding window step.
        ignore_index: label of unlabelled pixels.

    Returns:
        ``{"mIoU", "mAcc", "aAcc"`` (floats, %), ``"count"`` (labelled pixels) and
        ``"table"}`` (per-class IoU/Acc text, see :func:`format_iou_table`).
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    for i, (images, masks) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        with torch.autocast(
            device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        ):
            logits = segmentation_logits(model, images, num_classes, mode, crop, stride)
        pred = upsample_logits(logits, tuple(masks.shape[-2:])).argmax(1)  # (N, H, W)
        confusion += confusion_matrix(pred, masks, num_classes, ignore_index)
    model.train(was_training)
    all_reduce_sum(confusion)
    metrics = segmentation_metrics(confusion)
    return {
        "mIoU": metrics["mIoU"],
        "mAcc": metrics["mAcc"],
        "aAcc": metrics["aAcc"],
        "count": int(confusion.sum().item()),
        "table": format_iou_table(metrics, class_names),
    }
