"""DINO's contrastive denoising queries (Zhang et al., 2023, "DINO: DETR with Improved
DeNoising Anchor Boxes"), as mmdetection 3.x ``CdnQueryGenerator``.

Every ground-truth box gives, per group, a *positive* query (labels flipped with
probability ``label_noise_scale / 2``, corners moved by less than
``box_noise_scale * (w, h) / 2``) that must reconstruct the box, and a *negative* query
(corners moved between one and two times that) that must predict "no object". The queries
of an image are laid out group by group, ``[pos (m), neg (m), pos (m), neg (m), ...]`` with
``m`` the largest box count in the batch (images with fewer boxes are zero-padded). The
attention mask keeps groups from seeing each other and the matching queries from seeing
any denoising query.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kdforge.models.detection._dense_head import image_sizes_of
from kdforge.models.detection.boxes import inverse_sigmoid, xyxy_to_cxcywh

__all__ = ["CdnQueryGenerator", "denoising_attn_mask", "target_img_shapes"]

_GROUP_KEYS = {"dynamic", "num_groups", "num_dn_queries"}


def target_img_shapes(
    targets: Sequence[Mapping[str, Any]], image_size: tuple[int, int] | Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Each image's ``(H, W)`` before padding: ``target["img_shape"]`` when present (DETR
    normalises boxes by it, as mmdetection), else ``image_size`` (one for all, or one each)."""
    fallback = image_sizes_of(image_size, len(targets))
    return [
        tuple(int(v) for v in t["img_shape"]) if "img_shape" in t else size
        for t, size in zip(targets, fallback, strict=True)
    ]


def denoising_attn_mask(
    max_num_target: int, num_groups: int, num_matching_queries: int, device=None
) -> Tensor:
    """``(Qdn + Qm, Qdn + Qm)`` bool self-attention mask, ``True`` = may not attend.

    Denoising group ``g`` (rows ``[2 m g, 2 m (g + 1))``) sees itself and the matching
    queries; the matching queries see only each other.
    """
    group = 2 * max_num_target
    num_dn = group * num_groups
    total = num_dn + num_matching_queries
    mask = torch.zeros(total, total, dtype=torch.bool, device=device)
    mask[num_dn:, :num_dn] = True
    for g in range(num_groups):
        rows = slice(group * g, group * (g + 1))
        mask[rows, : group * g] = True
        mask[rows, group * (g + 1) : num_dn] = True
    return mask


class CdnQueryGenerator(nn.Module):
    """Noised ground-truth queries for DINO's denoising part, with mmdetection's names.

    Args:
        num_classes: object classes; ``label_embedding`` is ``Embedding(num_classes, D)``.
        embed_dims: query width ``D``.
        num_matching_queries: the detector's matching queries (900), for the mask size.
        label_noise_scale: twice the probability that a label is replaced (0.5).
        box_noise_scale: corner noise as a fraction of the box size, times 2 (1.0).
        group_cfg: ``dynamic=True`` with ``num_dn_queries`` (100): ``num_dn_queries // m``
            groups for ``m`` boxes in the fullest image (at least 1); ``dynamic=False``
            with ``num_groups``: a fixed count.
    """

    def __init__(
        self,
        num_classes: int,
        embed_dims: int,
        num_matching_queries: int,
        label_noise_scale: float = 0.5,
        box_noise_scale: float = 1.0,
        group_cfg: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        cfg = dict(group_cfg or {})
        unknown = set(cfg) - _GROUP_KEYS
        if unknown:
            raise ValueError(f"group_cfg keys must be among {sorted(_GROUP_KEYS)}, got {unknown}")
        if label_noise_scale <= 0 or box_noise_scale <= 0:
            raise ValueError("label_noise_scale and box_noise_scale must be positive")
        self.dynamic = bool(cfg.get("dynamic", True))
        self.num_dn_queries = int(cfg.get("num_dn_queries") or 100)
        self.num_groups = cfg.get("num_groups")
        if not self.dynamic and not isinstance(self.num_groups, int):
            raise ValueError("group_cfg with dynamic=False needs an integer num_groups")
        self.num_classes = num_classes
        self.embed_dims = embed_dims
        self.num_matching_queries = num_matching_queries
        self.label_noise_scale = label_noise_scale
        self.box_noise_scale = box_noise_scale
        self.label_embedding = nn.Embedding(num_classes, embed_dims)

    def groups_for(self, max_num_target: int) -> int:
        """The number of denoising groups for a batch whose fullest image has that many boxes."""
        if not self.dynamic:
            return max(int(self.num_groups), 1)
        return max(self.num_dn_queries // max_num_target, 1) if max_num_target > 0 else 1

    def noisy_labels(self, labels: Tensor, num_groups: int) -> Tensor:
        """``(T,)`` -> ``(2 G T,)``: ``labels`` repeated per positive/negative part, each
        replaced by a uniform random class with probability ``label_noise_scale / 2``."""
        expanded = labels.repeat(2 * num_groups)
        chosen = torch.rand(expanded.shape, device=labels.device) < self.label_noise_scale * 0.5
        random = torch.randint_like(expanded, 0, self.num_classes)
        return torch.where(chosen, random, expanded)

    def noisy_boxes(self, boxes: Tensor, num_groups: int) -> Tensor:
        """``(T, 4)`` normalised xyxy -> ``(2 G T, 4)`` inverse-sigmoid ``(cx, cy, w, h)``.

        Each corner coordinate moves by ``s * u * (w or h) * box_noise_scale / 2`` with a
        random sign ``s``; ``u`` is uniform in ``[0, 1)`` for positives and ``[1, 2)`` for
        negatives. Boxes are then clamped to the image.
        """
        num = boxes.shape[0]
        expanded = boxes.repeat(2 * num_groups, 1)  # (2 G T, 4) xyxy
        negative = torch.zeros(2 * num_groups, num, 1, dtype=torch.bool, device=boxes.device)
        negative[1::2] = True  # parts alternate pos, neg per group
        sign = torch.randint(0, 2, expanded.shape, device=boxes.device).to(boxes.dtype) * 2 - 1
        magnitude = torch.rand_like(expanded) + negative.reshape(-1, 1).to(boxes.dtype)
        whwh = xyxy_to_cxcywh(expanded)[:, 2:].repeat(1, 2)
        noisy = expanded + sign * magnitude * whwh * self.box_noise_scale / 2
        return inverse_sigmoid(xyxy_to_cxcywh(noisy.clamp(min=0.0, max=1.0)), eps=1e-3)

    def forward(
        self,
        targets: Sequence[Mapping[str, Tensor]],
        image_size: tuple[int, int] | Sequence[tuple[int, int]],
    ) -> tuple[Tensor, Tensor, Tensor, dict[str, int]]:
        """Denoising queries for a batch.

        Args:
            targets: per image ``{"boxes": (M, 4) xyxy pixels, "labels": (M,)}`` and
                optionally ``"img_shape"`` (the normaliser, see :func:`target_img_shapes`).
            image_size: ``(H, W)`` for the batch or one per image, when targets lack it.

        Returns:
            ``dn_label_query`` ``(N, Qdn, D)``, ``dn_bbox_query`` ``(N, Qdn, 4)``
            (inverse-sigmoid ``(cx, cy, w, h)``), ``attn_mask`` ``(Qdn + Qm, Qdn + Qm)``
            bool (True = blocked) and ``dn_meta`` ``{"num_denoising_queries": Qdn,
            "num_denoising_groups": G}``, with ``Qdn = 2 G m``.
        """
        device = self.label_embedding.weight.device
        boxes, labels = [], []
        for target, (height, width) in zip(
            targets, target_img_shapes(targets, image_size), strict=True
        ):
            factor = torch.tensor([width, height, width, height], device=device)
            boxes.append(target["boxes"].to(device=device, dtype=torch.float32) / factor)
            labels.append(target["labels"].to(device=device, dtype=torch.long))
        counts = [len(b) for b in labels]
        max_num = max(counts, default=0)
        groups = self.groups_for(max_num)
        label_query = self.label_embedding(self.noisy_labels(torch.cat(labels), groups))
        bbox_query = self.noisy_boxes(torch.cat(boxes).reshape(-1, 4), groups)
        # scatter part i (2 G parts, each all T boxes in batch order) of image b, box j
        # to row b, column i * m + j
        image = torch.cat([torch.full((n,), b, device=device) for b, n in enumerate(counts)])
        within = torch.cat([torch.arange(n, device=device) for n in counts])
        parts = torch.arange(2 * groups, device=device)[:, None] * max_num
        rows, cols = image.long().repeat(2 * groups), (within[None] + parts).flatten()
        num_dn = 2 * groups * max_num
        dn_label = label_query.new_zeros(len(counts), num_dn, self.embed_dims)
        dn_bbox = label_query.new_zeros(len(counts), num_dn, 4)
        dn_label[rows, cols] = label_query
        dn_bbox[rows, cols] = bbox_query.to(dn_bbox.dtype)
        mask = denoising_attn_mask(max_num, groups, self.num_matching_queries, device)
        return (
            dn_label,
            dn_bbox,
            mask,
            {"num_denoising_queries": num_dn, "num_denoising_groups": groups},
        )

    def extra_repr(self) -> str:
        grouping = (
            f"num_dn_queries={self.num_dn_queries}"
            if self.dynamic
            else f"num_groups={self.num_groups}"
        )
        return (
            f"label_noise_scale={self.label_noise_scale}, "
            f"box_noise_scale={self.box_noise_scale}, {grouping}"
        )
