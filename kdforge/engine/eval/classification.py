"""Classifier evaluation: top-1/top-5 accuracy and loss, and the confusion matrix."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.engine.distributed import all_reduce_sum
from kdforge.models.external import logits_of

__all__ = ["classification_confusion", "evaluate_classifier"]


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
            logits = logits_of(model(images))  # .logits of a transformers output
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


def classification_confusion(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """``(K, K)`` int64 counts of ``(true, predicted)`` label pairs."""
    index = target.long().flatten() * num_classes + pred.long().flatten()
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)
