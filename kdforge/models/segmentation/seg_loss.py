"""Pixel-wise cross-entropy for segmentation logits at a lower resolution than the labels."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["segmentation_loss", "upsample_logits"]


def upsample_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear ``(N, K, h, w) -> (N, K, H, W)`` with ``align_corners=False`` (mmsegmentation)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def segmentation_loss(
    logits: Tensor, target: Tensor, ignore_index: int = 255, avg_non_ignore: bool = False
) -> Tensor:
    """Cross-entropy of ``logits (N, K, h, w)`` against ``target (N, H, W)`` labels.

    The logits are upsampled to the label size first. As mmsegmentation's
    ``CrossEntropyLoss`` (whose ``avg_non_ignore`` defaults to False), the per-pixel losses
    are averaged over **all** ``N·H·W`` pixels, ignored ones counting as 0; set
    ``avg_non_ignore=True`` for PyTorch's mean over the labelled pixels only.
    """
    if target.dim() != 3 or logits.dim() != 4 or logits.shape[0] != target.shape[0]:
        raise ValueError(
            f"expected logits (N, K, h, w) and target (N, H, W); got {tuple(logits.shape)} "
            f"and {tuple(target.shape)}"
        )
    logits = upsample_logits(logits.float(), tuple(target.shape[-2:]))
    target = target.long()
    if avg_non_ignore:
        return F.cross_entropy(logits, target, ignore_index=ignore_index)
    per_pixel = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    return per_pixel.mean()
