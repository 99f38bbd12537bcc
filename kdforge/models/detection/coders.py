"""Box coders: anchor deltas (R-CNN ``delta_xywh``) and point distances (FCOS/GFL ``ltrb``).

Same formulas as mmdetection's ``DeltaXYWHBBoxCoder`` (``bbox2delta``/``delta2bbox``)
and ``DistancePointBBoxCoder`` (``bbox2distance``/``distance2bbox``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["DeltaXYWHCoder", "bbox2distance", "clip_boxes", "distance2bbox"]


def clip_boxes(boxes: Tensor, max_shape: tuple[int, int] | None) -> Tensor:
    """Clamp x to ``[0, W]`` and y to ``[0, H]`` for ``max_shape = (H, W)``; no-op if None."""
    if max_shape is None:
        return boxes
    h, w = max_shape
    x = boxes[..., 0::2].clamp(min=0, max=w)
    y = boxes[..., 1::2].clamp(min=0, max=h)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), -1)


class DeltaXYWHCoder:
    """Girshick et al., 2014 box deltas, normalised by ``means``/``stds``.

    ``encode``: ``d = ((gx - px) / pw, (gy - py) / ph, log(gw / pw), log(gh / ph))``,
    then ``(d - means) / stds``. ``decode`` inverts it, clamping ``dw, dh`` to
    ``±|log(wh_ratio_clip)|`` (default ``16 / 1000``) before the exponential.

    Args:
        means: target means (mmdetection configs: all 0).
        stds: target stds (RetinaNet ``(1, 1, 1, 1)``, ATSS ``(0.1, 0.1, 0.2, 0.2)``).
        wh_ratio_clip: the largest allowed ``exp(|dw|)`` is ``1 / wh_ratio_clip``.
    """

    def __init__(
        self,
        means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        wh_ratio_clip: float = 16 / 1000,
    ) -> None:
        self.means = tuple(means)
        self.stds = tuple(stds)
        self.max_ratio = abs(math.log(wh_ratio_clip))

    def encode(self, priors: Tensor, gt_boxes: Tensor) -> Tensor:
        """``(M, 4)`` priors and matched ``(M, 4)`` boxes -> ``(M, 4)`` normalised deltas."""
        pxy, pwh = (priors[:, :2] + priors[:, 2:]) / 2, priors[:, 2:] - priors[:, :2]
        gxy, gwh = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2, gt_boxes[:, 2:] - gt_boxes[:, :2]
        deltas = torch.cat(((gxy - pxy) / pwh, torch.log(gwh / pwh)), 1)
        return (deltas - deltas.new_tensor(self.means)) / deltas.new_tensor(self.stds)

    def decode(
        self, priors: Tensor, deltas: Tensor, max_shape: tuple[int, int] | None = None
    ) -> Tensor:
        """``(M, 4)`` priors and ``(M, 4)`` deltas -> boxes, clipped to ``max_shape=(H, W)``."""
        deltas = deltas * deltas.new_tensor(self.stds) + deltas.new_tensor(self.means)
        pxy, pwh = (priors[:, :2] + priors[:, 2:]) / 2, priors[:, 2:] - priors[:, :2]
        dwh = deltas[:, 2:].clamp(min=-self.max_ratio, max=self.max_ratio)
        gxy, gwh = pxy + pwh * deltas[:, :2], pwh * dwh.exp()
        return clip_boxes(torch.cat((gxy - gwh / 2, gxy + gwh / 2), 1), max_shape)


def distance2bbox(
    points: Tensor, distance: Tensor, max_shape: tuple[int, int] | None = None
) -> Tensor:
    """``(M, 2)`` points and ``(M, 4)`` ``(left, top, right, bottom)`` distances -> boxes."""
    boxes = torch.cat((points - distance[:, :2], points + distance[:, 2:]), 1)
    return clip_boxes(boxes, max_shape)


def bbox2distance(
    points: Tensor, boxes: Tensor, max_dis: float | None = None, eps: float = 0.1
) -> Tensor:
    """``(M, 2)`` points and ``(M, 4)`` boxes -> ``(left, top, right, bottom)`` distances.

    With ``max_dis`` (GFL's ``reg_max``) the distances are clamped to
    ``[0, max_dis - eps]`` so that the DFL target's right bin ``floor(d) + 1`` exists.
    """
    distance = torch.cat((points - boxes[:, :2], boxes[:, 2:] - points), 1)
    if max_dis is not None:
        distance = distance.clamp(min=0, max=max_dis - eps)
    return distance
