"""Anchor-based dense heads (RetinaNet, ATSS, GFL): anchors and per-anchor training targets."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from kdforge.models.detection._dense_head import DenseHead, image_sizes_of, reduce_mean
from kdforge.models.detection.anchors import AnchorGenerator, valid_flags

__all__ = ["AnchorHead", "AnchorTargets"]


@dataclass
class AnchorTargets:
    """Targets of a batch, priors of all levels concatenated.

    Attributes:
        anchors: ``(P, 4)`` anchors (the same for every image).
        labels: ``(N, P)`` int64 classes, ``num_classes`` for background and ignored.
        label_weights: ``(N, P)`` 1 for positives and negatives, 0 for ignored anchors
            and anchors on another image's batch padding.
        gt_boxes: ``(N, P, 4)`` the box assigned to each positive (0 elsewhere).
        pos: ``(N, P)`` positive mask.
        avg_factor: ``sum_i max(#positives_i, 1)``, averaged over processes when asked.
    """

    anchors: Tensor
    labels: Tensor
    label_weights: Tensor
    gt_boxes: Tensor
    pos: Tensor
    avg_factor: float


class AnchorHead(DenseHead):
    """A dense head whose priors are the anchors of ``AnchorGenerator``.

    Args:
        anchor_generator: anchors per level; its strides are the head's strides.
        **kwargs: :class:`DenseHead` arguments.
    """

    def __init__(self, anchor_generator: AnchorGenerator, **kwargs) -> None:
        super().__init__(**kwargs)
        self.anchor_generator = anchor_generator
        self.strides = anchor_generator.strides
        self.num_anchors = anchor_generator.num_base_anchors

    def _priors(self, featmap_sizes: list[tuple[int, int]], device, dtype) -> list[Tensor]:
        return self.anchor_generator.grid_anchors(featmap_sizes, device, dtype)

    @abc.abstractmethod
    def assign_priors(
        self,
        anchors: Tensor,
        num_level_anchors: list[int],
        gt_boxes: Tensor,
        ignore_boxes: Tensor | None,
    ) -> Tensor:
        """``gt_inds`` of one image's valid anchors (-1 ignored, 0 negative, i + 1 box i)."""

    def anchor_targets(
        self,
        featmap_sizes: list[tuple[int, int]],
        targets: Sequence[dict[str, Tensor]],
        image_size: tuple[int, int] | Sequence[tuple[int, int]],
        reduce: bool,
        device: torch.device,
    ) -> AnchorTargets:
        """Assign every image's boxes to the anchors (mmdetection ``AnchorHead.get_targets``)
        with ``assign_priors``.

        Only anchors on the image's own padded area (``valid_flags``) take part in the
        assignment (``allowed_border=-1``: no further border filter), with the PseudoSampler
        (all positives and negatives used).

        Args:
            featmap_sizes: ``(H_l, W_l)`` of each level.
            targets: per image ``{"boxes": (M, 4), "labels": (M,), "ignore_boxes": (K, 4)?}``.
            image_size: the ``pad_shape`` ``(H, W)`` shared by the batch, or one per image.
            reduce: average ``avg_factor`` over processes (ATSS, GFL) or not (RetinaNet).
        """
        anchors_per_level = self._priors(featmap_sizes, device, torch.float32)
        anchors = torch.cat(anchors_per_level)
        num_level = [a.shape[0] for a in anchors_per_level]
        sizes = image_sizes_of(image_size, len(targets))
        labels, weights, boxes, positives, avg_factor = [], [], [], [], 0
        for target, size in zip(targets, sizes, strict=True):
            valid = valid_flags(featmap_sizes, self.strides, size, self.num_anchors, device)
            valid_idx = valid.nonzero().squeeze(1)
            level_valid = [int(v.sum()) for v in valid.split(num_level)]
            gt_boxes = target["boxes"].to(device, torch.float32).reshape(-1, 4)
            gt_labels = target["labels"].to(device, torch.long).reshape(-1)
            ignore = target.get("ignore_boxes")
            ignore = None if ignore is None else ignore.to(device, torch.float32).reshape(-1, 4)
            gt_inds = self.assign_priors(anchors[valid_idx], level_valid, gt_boxes, ignore)
            pos_v, neg_v = gt_inds > 0, gt_inds == 0
            lab = torch.full_like(valid, self.num_classes, dtype=torch.long)
            w = anchors.new_zeros(anchors.shape[0])
            box = torch.zeros_like(anchors)
            pos_idx = valid_idx[pos_v]
            lab[pos_idx] = gt_labels[gt_inds[pos_v] - 1]
            box[pos_idx] = gt_boxes[gt_inds[pos_v] - 1]
            w[valid_idx[pos_v | neg_v]] = 1.0
            pos = torch.zeros_like(valid)
            pos[pos_idx] = True
            labels.append(lab)
            weights.append(w)
            boxes.append(box)
            positives.append(pos)
            avg_factor += max(int(pos_v.sum()), 1)
        avg = torch.tensor(float(avg_factor), device=device)
        return AnchorTargets(
            anchors=anchors,
            labels=torch.stack(labels),
            label_weights=torch.stack(weights),
            gt_boxes=torch.stack(boxes),
            pos=torch.stack(positives),
            avg_factor=(reduce_mean(avg) if reduce else avg).item(),
        )
