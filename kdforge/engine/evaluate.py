"""Evaluation of a student: top-1/top-5 for classifiers, COCO AP for detectors."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from kdforge.data.det_transforms import rescale_boxes
from kdforge.engine.coco_eval import evaluate_coco
from kdforge.engine.distributed import all_reduce_sum

__all__ = ["evaluate_classifier", "evaluate_detector"]


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    max_batches: int | None = None,
) -> dict[str, float]:
    """Top-1/top-5 accuracy (%) and loss of ``model`` over ``loader``, summed over processes.

    Each process evaluates its own shard; counts are all-reduced, so the result is exact
    for the whole validation set when the shards partition it.
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # correct@1, correct@5, loss, n
    for i, (images, targets) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        images, targets = (
            images.to(device, non_blocking=True),
            targets.to(device, non_blocking=True),
        )
        with torch.autocast(
            device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        ):
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices  # (N, k)
        hits = top.eq(targets[:, None])
        totals[0] += hits[:, 0].sum()
        totals[1] += hits.any(dim=1).sum()
        totals[2] += F.cross_entropy(logits, targets, reduction="sum")
        totals[3] += targets.numel()
    model.train(was_training)
    all_reduce_sum(totals)
    n = max(totals[3].item(), 1.0)
    return {
        "top1": 100.0 * totals[0].item() / n,
        "top5": 100.0 * totals[1].item() / n,
        "loss": totals[2].item() / n,
        "count": int(totals[3].item()),
    }


@torch.no_grad()
def evaluate_detector(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    max_batches: int | None = None,
) -> dict[str, float]:
    """COCO bbox AP of a dense detector over ``loader`` (a ``CocoDetection`` loader).

    Boxes are mapped back to original-image pixels; every process's predictions are
    gathered and scored once with pycocotools. Metrics are in [0, 1], as mmdetection's.
    """
    was_training = model.training
    model.eval()
    predictions = []
    for i, (images, targets) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        with torch.autocast(
            device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        ):
            outputs = model(images.to(device, non_blocking=True))
        results = model.predict(outputs, [t["img_shape"] for t in targets])
        for result, target in zip(results, targets, strict=True):
            predictions.append(
                {
                    "image_id": target["image_id"],
                    "boxes": rescale_boxes(result["boxes"].float().cpu(), target),
                    "scores": result["scores"].float().cpu(),
                    "labels": result["labels"].cpu(),
                }
            )
    model.train(was_training)
    if dist.is_available() and dist.is_initialized():
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, predictions)
        predictions = [p for part in gathered for p in part]
    image_ids = [p["image_id"] for p in predictions]
    metrics = evaluate_coco(predictions, loader.dataset, image_ids=image_ids)
    return metrics | {"count": len(image_ids)}
