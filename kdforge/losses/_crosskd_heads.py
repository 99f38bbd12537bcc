"""CrossKD's per-detector KD terms (Wang et al., CVPR 2024): GFL, RetinaNet, ATSS, FCOS.

Each function compares the cross-head predictions (the teacher head run on the student's
held features) with the teacher's own predictions and returns the *unweighted* KD losses,
summed over FPN levels, with the official normalisers:

* **GFL**: KDQFL with the label weights ``/ reduce_mean(num_pos)``; KL(T) on the
  17-bin side distributions, weighted by ``w`` with ``avg_factor=4``, then divided by
  ``sum_levels sum w`` (per process, not averaged, not clamped).
* **RetinaNet**: KDQFL with the label weights and GIoU of the ``DeltaXYWH``-decoded boxes
  weighted by ``w``, both ``/ num_pos`` (per process).
* **ATSS**: as RetinaNet (decoding stds 0.1/0.2) plus a centerness BCE on the positives
  with the teacher's centerness probability as target, all ``/ reduce_mean(num_pos)``.
* **FCOS** (all levels at once): KDQFL over all points without weights, and IoU-log of
  the ``distance2bbox`` boxes at every point weighted by ``w`` (unmasked), both
  ``/ max(reduce_mean(sum of the positives' centerness targets), 1e-6)``.

``w = sigmoid(max_k teacher_cls)``, set to 0 where the label weight is 0 (not for FCOS);
``num_pos = sum_i max(#positives_i, 1)`` from the head's own target assignment.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from kdforge.losses._crosskd_losses import kd_quality_focal_loss, kl_div_distill_loss
from kdforge.models.detection._dense_head import flatten_levels, reduce_mean
from kdforge.models.detection.anchors import grid_points
from kdforge.models.detection.assigners import centerness_target, fcos_targets
from kdforge.models.detection.atss import ATSSHead
from kdforge.models.detection.coders import distance2bbox
from kdforge.models.detection.det_losses import binary_cross_entropy, giou_loss, iou_loss
from kdforge.models.detection.fcos import FCOSHead
from kdforge.models.detection.gfl import GFLHead
from kdforge.models.detection.retinanet import RetinaHead

__all__ = ["KD_FUNCTIONS", "atss_kd", "fcos_kd", "gfl_kd", "retina_kd"]

Outputs = dict[str, list[Tensor]]
ImageSizes = Sequence[tuple[int, int]]


def _rows(x: Tensor, channels: int) -> Tensor:
    """``(N, A * C, H, W)`` -> ``(N * H * W * A, C)`` (mmdetection's flattening)."""
    return x.permute(0, 2, 3, 1).reshape(-1, channels)


def _confidence(teacher_cls: Tensor, label_weights: Tensor | None) -> Tensor:
    """``w = sigmoid(max_k teacher_cls)``, zero where ``label_weights == 0``."""
    w = teacher_cls.detach().amax(1).sigmoid()
    return w if label_weights is None else w.masked_fill(label_weights == 0, 0.0)


def gfl_kd(
    head: GFLHead,
    reused: Outputs,
    teacher: Outputs,
    targets: Sequence[dict],
    image_sizes: ImageSizes,
    beta: float = 1.0,
    temperature: float = 1.0,
) -> dict[str, Tensor]:
    """GFL: KDQFL on the class logits, KL (``class_reduction="sum"``) on the box bins."""
    sizes = [tuple(o.shape[-2:]) for o in teacher["cls"]]
    t = head.anchor_targets(sizes, targets, image_sizes, True, teacher["cls"][0].device)
    num = [h * w * head.num_anchors for h, w in sizes]
    k, bins = head.num_classes, head.reg_max + 1
    loss_cls, loss_reg, weight_sum = 0.0, 0.0, 0.0
    for level, lw in enumerate(t.label_weights.split(num, 1)):
        lw = lw.reshape(-1)
        tc, rc = _rows(teacher["cls"][level], k), _rows(reused["cls"][level], k)
        loss_cls = loss_cls + kd_quality_focal_loss(rc, tc, lw, t.avg_factor, beta)
        w = _confidence(tc, lw)
        loss_reg = loss_reg + kl_div_distill_loss(
            _rows(reused["reg"][level], bins),
            _rows(teacher["reg"][level], bins),
            temperature,
            "sum",
            weight=w[:, None].expand(-1, 4).reshape(-1),  # one row per (location, side)
            avg_factor=4.0,
        )
        weight_sum = weight_sum + w.sum()
    return {"cls": loss_cls, "reg": loss_reg / weight_sum}  # per process, not averaged


def _anchor_kd(
    head: RetinaHead | ATSSHead,
    reused: Outputs,
    teacher: Outputs,
    targets: Sequence[dict],
    image_sizes: ImageSizes,
    beta: float,
    reduce: bool,
) -> dict[str, Tensor]:
    """RetinaNet/ATSS: KDQFL and GIoU of decoded boxes (+ ATSS centerness KD)."""
    sizes = [tuple(o.shape[-2:]) for o in teacher["cls"]]
    device = teacher["cls"][0].device
    t = head.anchor_targets(sizes, targets, image_sizes, reduce, device)
    avg = max(t.avg_factor, 1.0)
    anchors = head._priors(sizes, device, torch.float32)
    num = [a.shape[0] for a in anchors]
    n, k = len(targets), head.num_classes
    with_center = "centerness" in teacher
    losses: dict[str, Tensor] = {}
    for level, (lw, labels) in enumerate(
        zip(t.label_weights.split(num, 1), t.labels.split(num, 1), strict=True)
    ):
        lw, labels = lw.reshape(-1), labels.reshape(-1)
        tc, rc = _rows(teacher["cls"][level], k), _rows(reused["cls"][level], k)
        priors = anchors[level].repeat(n, 1)  # rows (image, y, x, anchor)
        parts = {
            "cls": kd_quality_focal_loss(rc, tc, lw, avg, beta),
            "reg": giou_loss(
                head.coder.decode(priors, _rows(reused["reg"][level], 4)),
                head.coder.decode(priors, _rows(teacher["reg"][level], 4)),
                _confidence(tc, lw),
                avg_factor=avg,
            ),
        }
        if with_center:
            rctr, tctr = (
                _rows(reused["centerness"][level], 1),
                _rows(teacher["centerness"][level], 1),
            )
            pos = (labels >= 0) & (labels < k)
            parts["center"] = (
                binary_cross_entropy(rctr[pos, 0], tctr[pos, 0].sigmoid(), avg_factor=avg)
                if pos.any()
                else rctr.sum() * 0
            )
        for name, value in parts.items():
            losses[name] = losses[name] + value if name in losses else value
    return losses


def retina_kd(
    head: RetinaHead,
    reused: Outputs,
    teacher: Outputs,
    targets: Sequence[dict],
    image_sizes: ImageSizes,
    beta: float = 1.0,
    temperature: float = 1.0,
) -> dict[str, Tensor]:
    """RetinaNet: KDQFL + GIoU of ``DeltaXYWH``-decoded boxes, ``/ num_pos`` (per process)."""
    return _anchor_kd(head, reused, teacher, targets, image_sizes, beta, reduce=False)


def atss_kd(
    head: ATSSHead,
    reused: Outputs,
    teacher: Outputs,
    targets: Sequence[dict],
    image_sizes: ImageSizes,
    beta: float = 1.0,
    temperature: float = 1.0,
) -> dict[str, Tensor]:
    """ATSS: KDQFL + GIoU + centerness BCE (teacher's sigmoid as target, positives only),
    all ``/ reduce_mean(num_pos)``."""
    return _anchor_kd(head, reused, teacher, targets, image_sizes, beta, reduce=True)


def fcos_kd(
    head: FCOSHead,
    reused: Outputs,
    teacher: Outputs,
    targets: Sequence[dict],
    image_sizes: ImageSizes,
    beta: float = 1.0,
    temperature: float = 1.0,
) -> dict[str, Tensor]:
    """FCOS: KDQFL over all points (no label weights) and IoU-log of the boxes at every
    point weighted by ``w`` (unmasked), both ``/ max(reduce_mean(sum c), 1e-6)`` where
    ``c`` are the centerness targets of the positives."""
    device = teacher["cls"][0].device
    sizes = [tuple(o.shape[-2:]) for o in teacher["cls"]]
    per_level = grid_points(sizes, head.strides, device)
    points = torch.cat(per_level)
    ctr_sum = points.new_zeros(())
    for target in targets:
        labels, boxes = fcos_targets(
            points,
            [p.shape[0] for p in per_level],
            head.strides,
            head.regress_ranges,
            target["boxes"].to(device, torch.float32).reshape(-1, 4),
            target["labels"].to(device, torch.long).reshape(-1),
            head.num_classes,
            head.center_sampling,
            head.center_sample_radius,
        )
        pos = (labels >= 0) & (labels < head.num_classes)
        ctr_sum = ctr_sum + centerness_target(boxes[pos]).sum()
    denorm = max(reduce_mean(ctr_sum).item(), 1e-6)
    k = head.num_classes
    tc = flatten_levels(teacher["cls"], k).reshape(-1, k)
    rc = flatten_levels(reused["cls"], k).reshape(-1, k)
    all_points = points.repeat(len(targets), 1)  # rows (image, level, location)
    boxes_r = distance2bbox(all_points, flatten_levels(reused["reg"], 4).reshape(-1, 4))
    boxes_t = distance2bbox(all_points, flatten_levels(teacher["reg"], 4).reshape(-1, 4))
    return {
        "cls": kd_quality_focal_loss(rc, tc, None, denorm, beta),
        "reg": iou_loss(boxes_r, boxes_t, _confidence(tc, None), avg_factor=denorm),  # -log IoU
    }


# head class -> its KD function
KD_FUNCTIONS = {GFLHead: gfl_kd, RetinaHead: retina_kd, ATSSHead: atss_kd, FCOSHead: fcos_kd}
