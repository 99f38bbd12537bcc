"""Training-target assignment for one image: max-IoU, ATSS and FCOS (mmdetection semantics).

``max_iou_assign`` and ``atss_assign`` return ``gt_inds`` per prior: ``-1`` ignored (no
loss), ``0`` background, ``i + 1`` positive for ground-truth box ``i``. ``fcos_targets``
returns class labels (``num_classes`` = background) and ``(l, t, r, b)`` distances.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from kdforge.models.detection.boxes import bbox_overlaps, box_centers

__all__ = ["atss_assign", "centerness_target", "fcos_targets", "max_iou_assign", "point_assign"]

_INF = 100000000.0


def _ignored(priors: Tensor, ignore_boxes: Tensor | None, ignore_iof_thr: float) -> Tensor | None:
    """Priors covered more than ``ignore_iof_thr`` by a crowd box (IoF w.r.t. the prior)."""
    if ignore_iof_thr <= 0 or ignore_boxes is None or ignore_boxes.numel() == 0:
        return None
    if priors.numel() == 0:
        return None
    iof = bbox_overlaps(priors, ignore_boxes, mode="iof")  # (P, K)
    return iof.max(dim=1).values > ignore_iof_thr


def max_iou_assign(
    priors: Tensor,
    gt_boxes: Tensor,
    pos_iou_thr: float = 0.5,
    neg_iou_thr: float = 0.4,
    min_pos_iou: float = 0.0,
    match_low_quality: bool = True,
    gt_max_assign_all: bool = True,
    ignore_boxes: Tensor | None = None,
    ignore_iof_thr: float = -1.0,
) -> Tensor:
    """mmdetection's ``MaxIoUAssigner`` (RetinaNet: pos 0.5, neg 0.4, min_pos 0).

    1. every prior starts ignored (-1); 2. max IoU over boxes in ``[0, neg_iou_thr)``
    -> background; 3. max IoU ``>= pos_iou_thr`` -> that box; 4. low-quality matches:
    for each box ``i`` in order, if its best IoU is ``>= min_pos_iou``, every prior
    reaching that best IoU (``gt_max_assign_all``) is given to ``i``, overwriting step 3.
    Quirk kept from mmdetection: with ``min_pos_iou=0`` a box overlapping no prior at all
    (best IoU 0) claims every prior with IoU 0 to it.

    Args:
        priors: ``(P, 4)`` anchors.
        gt_boxes: ``(G, 4)`` boxes.
        ignore_boxes: ``(K, 4)`` crowd boxes; with ``ignore_iof_thr > 0`` priors whose IoF
            with one of them exceeds it get IoU -1 with every box (so stay ignored unless
            matched as a low-quality best prior). mmdetection configs use -1 (off).

    Returns:
        ``(P,)`` int64 ``gt_inds``.
    """
    num_gts, num_priors = gt_boxes.shape[0], priors.shape[0]
    if num_gts == 0 or num_priors == 0:
        return priors.new_full((num_priors,), 0 if num_gts == 0 else -1, dtype=torch.long)
    overlaps = bbox_overlaps(gt_boxes, priors)  # (G, P)
    ignored = _ignored(priors, ignore_boxes, ignore_iof_thr)
    if ignored is not None:
        overlaps[:, ignored] = -1
    gt_inds = priors.new_full((num_priors,), -1, dtype=torch.long)
    max_overlaps, argmax = overlaps.max(dim=0)
    gt_inds[(max_overlaps >= 0) & (max_overlaps < neg_iou_thr)] = 0
    pos = max_overlaps >= pos_iou_thr
    gt_inds[pos] = argmax[pos] + 1
    if match_low_quality:
        gt_max, gt_argmax = overlaps.max(dim=1)
        for i in range(num_gts):
            if gt_max[i] >= min_pos_iou:
                if gt_max_assign_all:
                    gt_inds[overlaps[i] == gt_max[i]] = i + 1
                else:
                    gt_inds[gt_argmax[i]] = i + 1
    return gt_inds


def atss_assign(
    priors: Tensor,
    num_level_priors: Sequence[int],
    gt_boxes: Tensor,
    topk: int = 9,
    ignore_boxes: Tensor | None = None,
    ignore_iof_thr: float = -1.0,
) -> Tensor:
    """Adaptive Training Sample Selection (Zhang et al., 2020, ATSS), as mmdetection.

    For each box: on every level take the ``topk`` priors whose centres are closest
    (L2) to the box centre; their IoUs give the threshold ``mean + std`` (unbiased std);
    candidates with IoU ``>=`` it whose centre lies inside the box (every side distance
    ``> 0.01``) are positive. A prior positive for several boxes goes to the one with the
    highest IoU (the lowest box index on ties). All others are background.

    Args:
        priors: ``(P, 4)`` anchors, levels concatenated.
        num_level_priors: number of priors on each level (sums to ``P``).
        gt_boxes: ``(G, 4)`` boxes.
        ignore_boxes: crowd boxes; with ``ignore_iof_thr > 0`` priors covered beyond it
            are ignored (-1) and never candidates. mmdetection configs use -1 (off).

    Returns:
        ``(P,)`` int64 ``gt_inds``.
    """
    num_gts, num_priors = gt_boxes.shape[0], priors.shape[0]
    gt_inds = priors.new_zeros((num_priors,), dtype=torch.long)
    if num_gts == 0 or num_priors == 0:
        return gt_inds
    overlaps = bbox_overlaps(priors, gt_boxes)  # (P, G)
    prior_ctr = box_centers(priors)  # (P, 2)
    # exact L2 (torch.cdist's matmul path rounds differently and can reorder ties)
    distances = (prior_ctr[:, None] - box_centers(gt_boxes)[None]).pow(2).sum(-1).sqrt()
    ignored = _ignored(priors, ignore_boxes, ignore_iof_thr)
    if ignored is not None:
        distances[ignored] = _INF
        gt_inds[ignored] = -1

    candidates, start = [], 0
    for count in num_level_priors:
        k = min(topk, count)
        _, idx = distances[start : start + count].topk(k, dim=0, largest=False)  # (k, G)
        candidates.append(idx + start)
        start += count
    candidates = torch.cat(candidates)  # (C, G)
    gt_range = torch.arange(num_gts, device=priors.device)
    cand_iou = overlaps[candidates, gt_range]  # (C, G)
    threshold = cand_iou.mean(0) + cand_iou.std(0)
    cx, cy = prior_ctr[candidates, 0], prior_ctr[candidates, 1]  # (C, G)
    inside = torch.stack(
        (cx - gt_boxes[:, 0], cy - gt_boxes[:, 1], gt_boxes[:, 2] - cx, gt_boxes[:, 3] - cy)
    ).amin(0)
    is_pos = (cand_iou >= threshold) & (inside > 0.01)

    masked = torch.full_like(overlaps, -_INF)  # (P, G): IoU where positive, else -INF
    masked[candidates[is_pos], gt_range.expand_as(candidates)[is_pos]] = cand_iou[is_pos]
    best, best_gt = masked.max(dim=1)
    gt_inds[best != -_INF] = best_gt[best != -_INF] + 1
    return gt_inds


def fcos_targets(
    points: Tensor,
    num_level_points: Sequence[int],
    strides: Sequence[int],
    regress_ranges: Sequence[tuple[float, float]],
    gt_boxes: Tensor,
    gt_labels: Tensor,
    num_classes: int,
    center_sampling: bool = False,
    center_sample_radius: float = 1.5,
) -> tuple[Tensor, Tensor]:
    """FCOS targets (Tian et al., 2019) for one image, as mmdetection's ``FCOSHead``.

    A point is a candidate for a box when it lies strictly inside it (or, with
    ``center_sampling``, inside the box's centre region of half-size
    ``stride * center_sample_radius``, clipped to the box) and its largest distance
    ``max(l, t, r, b)`` is within its level's ``regress_range`` (both ends inclusive).
    Among candidate boxes the one with the smallest area wins.

    Args:
        points: ``(P, 2)`` locations, levels concatenated.
        num_level_points: points per level.
        strides: stride per level.
        regress_ranges: ``(lo, hi)`` per level, FCOS: ``(-1, 64), (64, 128), (128, 256),
            (256, 512), (512, 1e8)``.
        gt_boxes: ``(G, 4)`` boxes; ``gt_labels``: ``(G,)`` classes in ``[0, num_classes)``.

    Returns:
        ``(P,)`` labels (``num_classes`` for background) and ``(P, 4)`` ``(l, t, r, b)``
        distances to the assigned box (to box 0 for background points, unused).
    """
    num_points, num_gts = points.shape[0], gt_boxes.shape[0]
    if num_gts == 0:
        return gt_labels.new_full((num_points,), num_classes), points.new_zeros(num_points, 4)
    areas = ((gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1]))[None]
    areas = areas.repeat(num_points, 1)  # (P, G)
    xs, ys = points[:, 0, None], points[:, 1, None]  # (P, 1)
    x1, y1, x2, y2 = gt_boxes.T[:, None, :].unbind(0)  # each (1, G)
    box_targets = torch.stack((xs - x1, ys - y1, x2 - xs, y2 - ys), -1)  # (P, G, 4)

    lengths = torch.as_tensor(list(num_level_points), device=points.device)
    if center_sampling:
        radius = torch.repeat_interleave(
            points.new_tensor(list(strides)) * center_sample_radius, lengths
        )[:, None]  # (P, 1)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        cx1, cy1 = torch.maximum(cx - radius, x1), torch.maximum(cy - radius, y1)
        cx2, cy2 = torch.minimum(cx + radius, x2), torch.minimum(cy + radius, y2)
        inside = torch.stack((xs - cx1, ys - cy1, cx2 - xs, cy2 - ys), -1).amin(-1) > 0
    else:
        inside = box_targets.amin(-1) > 0
    ranges = torch.repeat_interleave(
        points.new_tensor([list(r) for r in regress_ranges]), lengths, 0
    )
    max_dist = box_targets.amax(-1)  # (P, G)
    in_range = (max_dist >= ranges[:, :1]) & (max_dist <= ranges[:, 1:])
    areas[~inside] = _INF
    areas[~in_range] = _INF
    min_area, min_idx = areas.min(dim=1)
    labels = gt_labels[min_idx].clone()
    labels[min_area == _INF] = num_classes
    return labels, box_targets[torch.arange(num_points, device=points.device), min_idx]


def centerness_target(distances: Tensor) -> Tensor:
    """FCOS centerness ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` of ``(M, 4)``
    ``(l, t, r, b)`` distances from points inside their boxes (Tian et al., 2019)."""
    lr, tb = distances[:, 0::2], distances[:, 1::2]
    return torch.sqrt(lr.amin(1) / lr.amax(1) * (tb.amin(1) / tb.amax(1)))


def point_assign(
    points: Tensor, point_strides: Tensor, gt_boxes: Tensor, scale: float = 4, pos_num: int = 1
) -> Tensor:
    """mmdetection's ``PointAssigner`` (RepPoints' init stage, Yang et al., 2019).

    Box ``i`` of size ``(w, h)`` belongs to pyramid level ``int((log2(w / scale) +
    log2(h / scale)) / 2)`` (truncated toward zero, clamped to the levels present, level
    ``log2(stride)``); on that level the ``pos_num`` points closest to its centre, by the
    distance ``||(p - c) / (w, h)||``, become positive for it unless an earlier box already
    holds them at a distance no larger. All other points are background (no ignored ones).

    Args:
        points: ``(P, 2)`` ``(x, y)`` locations, levels concatenated.
        point_strides: ``(P,)`` stride of each point's level (powers of two).
        gt_boxes: ``(G, 4)`` boxes.

    Returns:
        ``(P,)`` int64 ``gt_inds`` (0 background, ``i + 1`` box ``i``).
    """
    num_points, num_gts = points.shape[0], gt_boxes.shape[0]
    gt_inds = points.new_zeros((num_points,), dtype=torch.long)
    if num_gts == 0 or num_points == 0:
        return gt_inds
    points_lvl = torch.log2(point_strides).int()
    centers = box_centers(gt_boxes)
    wh = (gt_boxes[:, 2:] - gt_boxes[:, :2]).clamp(min=1e-6)
    gt_lvl = ((torch.log2(wh[:, 0] / scale) + torch.log2(wh[:, 1] / scale)) / 2).int()
    gt_lvl = gt_lvl.clamp(min=points_lvl.min(), max=points_lvl.max())
    assigned_dist = points.new_full((num_points,), float("inf"))
    for i in range(num_gts):
        on_level = (points_lvl == gt_lvl[i]).nonzero().squeeze(1)
        dist = ((points[on_level] - centers[i]) / wh[i]).norm(dim=1)
        min_dist, nearest = dist.topk(min(pos_num, dist.numel()), largest=False)
        idx = on_level[nearest]
        closer = min_dist < assigned_dist[idx]
        gt_inds[idx[closer]] = i + 1
        assigned_dist[idx[closer]] = min_dist[closer]
    return gt_inds
