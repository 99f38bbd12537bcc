"""DINO's prediction head and losses, as mmdetection 3.x ``DINOHead`` (``DeformableDETRHead``
with ``as_two_stage``, ``share_pred_layer=False``; losses from ``DETRHead``).

Per decoder layer ``l``: ``cls_branches[l]`` (``Linear(D, K)``) gives class logits and
``reg_branches[l]`` (``Linear-ReLU-Linear-ReLU-Linear(D, 4)``) a box offset added to the
inverse sigmoid of that layer's input reference; ``sigmoid`` gives normalised
``(cx, cy, w, h)``. The seventh pair (``num_pred_layer = 6 + 1``) is used by the encoder's
query selection (part of the detector).

Losses (mmdetection ``configs/dino/dino-4scale_r50_8xb2-12e_coco.py``): sigmoid focal
(alpha 0.25, gamma 2) x 1.0, L1 on normalised ``(cx, cy, w, h)`` x 5.0 and GIoU on pixel
boxes x 2.0, on every decoder layer's matching queries (Hungarian matching per layer), on
the encoder's selected proposals (matched separately, with the real labels), and on the
denoising queries (fixed targets). The classification normaliser is the number of
positives averaged over processes (``sync_cls_avg_factor=True``), the box normaliser too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from kdforge.models.detection._dense_head import reduce_mean
from kdforge.models.detection.boxes import cxcywh_to_xyxy, inverse_sigmoid, xyxy_to_cxcywh
from kdforge.models.detection.det_losses import giou_loss, l1_loss, sigmoid_focal_loss
from kdforge.models.detection.dino_denoising import target_img_shapes
from kdforge.models.detection.hungarian import HungarianAssigner

__all__ = ["DINOHead"]

ImageSize = tuple[int, int] | Sequence[tuple[int, int]]
_Targets = tuple[Tensor, Tensor, Tensor, int]  # labels, bbox targets, bbox weights, positives


class DINOHead(nn.Module):
    """Class and box branches per prediction layer, DETR losses and top-k decoding.

    A subclass changes only the classification (Grounding DINO's text tokens): the class
    branches' extra inputs, ``_cls_loss``, ``_assign`` and ``_class_targets``; the per-layer
    loss loop, the normalisers and the box losses are shared.

    Args:
        num_classes: object classes ``K`` (sigmoid outputs, no background class).
        embed_dims: query width ``D``.
        num_pred_layer: branch pairs (decoder layers + 1 for the encoder proposals).
        num_reg_fcs: hidden ``Linear-ReLU`` pairs of a box branch (2).
        sync_cls_avg_factor: average the classification normaliser over processes.
        focal_alpha, focal_gamma: focal-loss parameters (also of the matching cost).
        loss_cls_weight, loss_bbox_weight, loss_iou_weight: 1.0, 5.0, 2.0.
        match_cls_weight, match_l1_weight, match_iou_weight: Hungarian costs 2.0, 5.0, 2.0.
        max_per_img: detections per image at test time (300).
    """

    def __init__(
        self,
        num_classes: int,
        embed_dims: int = 256,
        num_pred_layer: int = 7,
        num_reg_fcs: int = 2,
        sync_cls_avg_factor: bool = True,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        loss_cls_weight: float = 1.0,
        loss_bbox_weight: float = 5.0,
        loss_iou_weight: float = 2.0,
        match_cls_weight: float = 2.0,
        match_l1_weight: float = 5.0,
        match_iou_weight: float = 2.0,
        max_per_img: int = 300,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embed_dims = embed_dims
        self.sync_cls_avg_factor = sync_cls_avg_factor
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.loss_weights = (loss_cls_weight, loss_bbox_weight, loss_iou_weight)
        self.max_per_img = max_per_img
        self.assigner = HungarianAssigner(
            match_cls_weight, match_l1_weight, match_iou_weight, focal_alpha, focal_gamma
        )
        self.cls_branches = nn.ModuleList(
            nn.Linear(embed_dims, num_classes) for _ in range(num_pred_layer)
        )
        self.reg_branches = nn.ModuleList(
            self._reg_branch(embed_dims, num_reg_fcs) for _ in range(num_pred_layer)
        )
        self.init_weights()

    @staticmethod
    def _reg_branch(dims: int, num_fcs: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for _ in range(num_fcs):
            layers += [nn.Linear(dims, dims), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(dims, 4))

    def init_weights(self) -> None:
        """mmdetection's: class biases at prior 0.01, last box layer all zeros (two-stage)."""
        for branch in self.cls_branches:
            nn.init.constant_(branch.bias, -math.log((1 - 0.01) / 0.01))
        for branch in self.reg_branches:
            nn.init.zeros_(branch[-1].weight)
            nn.init.zeros_(branch[-1].bias)

    def forward(
        self, hidden_states: Tensor, references: Tensor, *cls_extras: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(L, N, Q, D)`` decoder outputs and ``(L + 1, N, Q, 4)`` sigmoid references (the
        input reference of each layer; the last is unused) -> ``(L, N, Q, K)`` logits and
        ``(L, N, Q, 4)`` sigmoid ``(cx, cy, w, h)`` boxes (``cls_extras``: further inputs of
        the class branches, as :meth:`layer_outputs`)."""
        outs = [
            self.layer_outputs(i, s, references[i], *cls_extras)
            for i, s in enumerate(hidden_states)
        ]
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])

    def layer_outputs(
        self, layer: int, state: Tensor, reference: Tensor, *cls_extras: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Decoder layer ``layer``'s ``(..., D)`` output and ``(..., 4)`` sigmoid input
        reference -> ``(..., K)`` logits and ``(..., 4)`` sigmoid boxes; ``cls_extras`` follow
        the state into ``cls_branches[layer]`` (none for DINO, the text for Grounding DINO)."""
        offset = self.reg_branches[layer](state)
        cls = self.cls_branches[layer](state, *cls_extras)
        return cls, (offset + inverse_sigmoid(reference)).sigmoid()

    # ---- losses -------------------------------------------------------------------------

    def _cls_loss(self, cls: Tensor, targets: Sequence[_Targets], avg_factor: float) -> Tensor:
        """Sigmoid focal loss of ``(N, Q, K)`` logits against the targets' class labels."""
        return sigmoid_focal_loss(
            cls.reshape(-1, self.num_classes),
            torch.cat([t[0] for t in targets]),
            gamma=self.focal_gamma,
            alpha=self.focal_alpha,
            avg_factor=avg_factor,
        )

    def _layer_loss(
        self,
        cls: Tensor,
        boxes: Tensor,
        targets: Sequence[_Targets],
        shapes: list[tuple],
        *cls_extras: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """mmdetection ``loss_by_feat_single``: :meth:`_cls_loss` (given ``cls_extras``), L1
        and GIoU losses of ``(N, Q, K)`` logits and ``(N, Q, 4)`` boxes against per-image
        targets, weighted."""
        bbox_targets = torch.cat([t[1] for t in targets])
        bbox_weights = torch.cat([t[2] for t in targets])
        num_pos = float(sum(t[3] for t in targets))
        cls_avg = cls.new_tensor(num_pos)
        if self.sync_cls_avg_factor:
            cls_avg = reduce_mean(cls_avg)
        cls_avg = max(cls_avg.item(), 1.0)
        w_cls, w_bbox, w_iou = self.loss_weights
        loss_cls = self._cls_loss(cls, targets, cls_avg, *cls_extras)
        box_avg = reduce_mean(cls.new_tensor(num_pos)).clamp(min=1).item()
        factors = torch.cat(
            [boxes.new_tensor([w, h, w, h]).expand(boxes.shape[1], 4) for h, w in shapes]
        )
        preds = boxes.reshape(-1, 4)
        loss_iou = giou_loss(
            cxcywh_to_xyxy(preds) * factors,
            cxcywh_to_xyxy(bbox_targets) * factors,
            bbox_weights.mean(-1),
            avg_factor=box_avg,
        )
        loss_bbox = l1_loss(preds, bbox_targets, bbox_weights, avg_factor=box_avg)
        return w_cls * loss_cls, w_bbox * loss_bbox, w_iou * loss_iou

    def _assign(
        self, cls: Tensor, boxes: Tensor, gt: Mapping[str, Tensor], img_shape: tuple[int, int]
    ) -> Tensor:
        """Hungarian ``gt_inds`` of one image's ``(Q, K)`` logits and ``(Q, 4)`` boxes."""
        gt_labels = gt["labels"].to(boxes.device).long()
        return self.assigner.assign(cls, boxes, gt["boxes"].to(boxes), gt_labels, img_shape)

    def _class_targets(
        self, gt: Mapping[str, Tensor], pos: Tensor, matched: Tensor, num_queries: int, like
    ) -> Tensor:
        """``(num_queries,)`` labels: query ``pos[j]`` gets box ``matched[j]``'s class, the
        others the background index ``num_classes``."""
        labels = torch.full((num_queries,), self.num_classes, device=like.device)
        labels[pos] = gt["labels"].to(like.device).long()[matched]
        return labels

    def _matching_targets(
        self,
        cls: Tensor,
        boxes: Tensor,
        gts: Sequence[Mapping[str, Tensor]],
        shapes: list,
        *cls_extras: Tensor,
    ) -> list[_Targets]:
        """Hungarian targets per image for ``(N, Q, K)`` logits and ``(N, Q, 4)`` boxes
        (image ``i`` of each of ``cls_extras`` goes to :meth:`_assign`)."""
        out = []
        for i, (gt, (h, w)) in enumerate(zip(gts, shapes, strict=True)):
            gt_inds = self._assign(cls[i], boxes[i], gt, (h, w), *(e[i] for e in cls_extras))
            pos = (gt_inds > 0).nonzero().squeeze(1)
            matched = gt_inds[pos] - 1
            labels = self._class_targets(gt, pos, matched, boxes.shape[1], boxes)
            bbox_targets = boxes.new_zeros(boxes.shape[1], 4)
            bbox_weights = boxes.new_zeros(boxes.shape[1], 4)
            factor = boxes.new_tensor([w, h, w, h])
            bbox_targets[pos] = xyxy_to_cxcywh(gt["boxes"].to(boxes)[matched] / factor)
            bbox_weights[pos] = 1.0
            out.append((labels, bbox_targets, bbox_weights, pos.numel()))
        return out

    def _denoising_targets(
        self, num_dn: int, groups: int, gts: Sequence[Mapping[str, Tensor]], shapes: list, like
    ) -> list[_Targets]:
        """mmdetection ``_get_dn_targets_single``: box ``j`` of group ``g`` is query
        ``g * Qdn / G + j`` (positive); ``+ Qdn / (2 G)`` is its negative (background)."""
        per_group = num_dn // groups
        out = []
        for gt, (h, w) in zip(gts, shapes, strict=True):
            gt_boxes = gt["boxes"].to(like)
            boxes = torch.arange(gt_boxes.shape[0], device=like.device)
            offsets = torch.arange(groups, device=like.device)[:, None] * per_group
            pos = (offsets + boxes[None]).flatten()  # group-major, ascending
            labels = self._class_targets(gt, pos, boxes.repeat(groups), num_dn, like)
            bbox_targets, bbox_weights = like.new_zeros(num_dn, 4), like.new_zeros(num_dn, 4)
            factor = like.new_tensor([w, h, w, h])
            bbox_targets[pos] = xyxy_to_cxcywh(gt_boxes / factor).repeat(groups, 1)
            bbox_weights[pos] = 1.0
            out.append((labels, bbox_targets, bbox_weights, pos.numel()))
        return out

    def loss(
        self,
        hidden_states: Tensor,
        references: Tensor,
        enc_outputs_class: Tensor | None,
        enc_outputs_coord: Tensor | None,
        targets: Sequence[Mapping[str, Tensor]],
        dn_meta: Mapping[str, int] | None,
        image_size: ImageSize,
    ) -> dict[str, Tensor]:
        """Named, weighted losses with mmdetection's names.

        Args:
            hidden_states: ``(L, N, Qdn + Q, D)`` decoder outputs (denoising queries first).
            references: ``(L + 1, N, Qdn + Q, 4)`` sigmoid ``(cx, cy, w, h)`` references.
            enc_outputs_class: ``(N, Q, K)`` logits of the encoder's selected proposals.
            enc_outputs_coord: ``(N, Q, 4)`` their sigmoid ``(cx, cy, w, h)`` boxes.
            targets: per image ``{"boxes": (M, 4) xyxy pixels, "labels": (M,)}`` and
                ``"img_shape"`` ``(H, W)``, the box normaliser (else ``image_size``).
            dn_meta: ``{"num_denoising_queries", "num_denoising_groups"}``, or None.
            image_size: ``(H, W)`` (or one per image) when targets carry no ``img_shape``.

        Returns:
            ``loss_cls/bbox/iou`` (last layer), ``d{l}.loss_*`` (earlier layers),
            ``enc_loss_*`` and ``dn_loss_*`` / ``d{l}.dn_loss_*``.
        """
        shapes = target_img_shapes(targets, image_size)
        all_cls, all_boxes = self(hidden_states, references)
        return self._losses(
            all_cls, all_boxes, enc_outputs_class, enc_outputs_coord, targets, dn_meta, shapes
        )

    def _losses(
        self,
        all_cls: Tensor,
        all_boxes: Tensor,
        enc_outputs_class: Tensor | None,
        enc_outputs_coord: Tensor | None,
        targets: Sequence[Mapping[str, Tensor]],
        dn_meta: Mapping[str, int] | None,
        shapes: list[tuple[int, int]],
        *cls_extras: Tensor,
    ) -> dict[str, Tensor]:
        """:meth:`loss` from every layer's ``(L, N, Qdn + Q, K)`` logits and boxes;
        ``cls_extras`` go to the matching and the classification loss."""
        all_cls, all_boxes = all_cls.float(), all_boxes.float()
        num_dn = dn_meta["num_denoising_queries"] if dn_meta is not None else 0
        losses: dict[str, Tensor] = {}
        num_layers = all_cls.shape[0]

        def add(cls: Tensor, boxes: Tensor, prefix: str, found=None) -> None:
            if found is None:
                found = self._matching_targets(cls, boxes, targets, shapes, *cls_extras)
            losses.update(_named(self._layer_loss(cls, boxes, found, shapes, *cls_extras), prefix))

        for layer in range(num_layers):
            prefix = "" if layer == num_layers - 1 else f"d{layer}."
            add(all_cls[layer, :, num_dn:], all_boxes[layer, :, num_dn:], f"{prefix}loss")
        if enc_outputs_class is not None:
            add(enc_outputs_class.float(), enc_outputs_coord.float(), "enc_loss")
        if dn_meta is not None and num_dn > 0:
            dn_targets = self._denoising_targets(
                num_dn, dn_meta["num_denoising_groups"], targets, shapes, all_boxes
            )
            for layer in range(num_layers):
                prefix = "" if layer == num_layers - 1 else f"d{layer}."
                cls, boxes = all_cls[layer, :, :num_dn], all_boxes[layer, :, :num_dn]
                add(cls, boxes, f"{prefix}dn_loss", dn_targets)
        return losses

    @torch.no_grad()
    def predict(
        self, hidden_states: Tensor, references: Tensor, image_sizes: Sequence[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Per image ``{"boxes" (xyxy pixels, clipped), "scores", "labels"}``: the top
        ``max_per_img`` (query, class) sigmoid scores of the last layer, as mmdetection."""
        last = hidden_states.shape[0] - 1
        cls, boxes = self.layer_outputs(last, hidden_states[last], references[last])
        return self._top_detections(cls.float().sigmoid(), boxes.float(), image_sizes)

    def _top_detections(
        self, scores: Tensor, boxes: Tensor, image_sizes: Sequence[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """``(N, Q, K)`` class scores and ``(N, Q, 4)`` sigmoid boxes -> per image the top
        ``max_per_img`` (query, class) pairs, boxes in pixels clipped to the image."""
        num_classes = scores.shape[-1]
        results = []
        for scores_i, boxes_i, (h, w) in zip(scores, boxes, image_sizes, strict=True):
            k = min(self.max_per_img, scores_i.numel())
            top, index = scores_i.flatten().topk(k)
            xyxy = cxcywh_to_xyxy(boxes_i[index // num_classes]) * boxes_i.new_tensor([w, h, w, h])
            xyxy[:, 0::2] = xyxy[:, 0::2].clamp(min=0, max=w)
            xyxy[:, 1::2] = xyxy[:, 1::2].clamp(min=0, max=h)
            results.append({"boxes": xyxy, "scores": top, "labels": index % num_classes})
        return results


def _named(losses: tuple[Tensor, Tensor, Tensor], prefix: str) -> dict[str, Tensor]:
    return dict(zip((f"{prefix}_cls", f"{prefix}_bbox", f"{prefix}_iou"), losses, strict=True))
