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

    def forward(self, hidden_states: Tensor, references: Tensor) -> tuple[Tensor, Tensor]:
        """``(L, N, Q, D)`` decoder outputs and ``(L + 1, N, Q, 4)`` sigmoid references (the
        input reference of each layer; the last is unused) -> ``(L, N, Q, K)`` logits and
        ``(L, N, Q, 4)`` sigmoid ``(cx, cy, w, h)`` boxes."""
        outs = [self.layer_outputs(i, s, references[i]) for i, s in enumerate(hidden_states)]
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])

    def layer_outputs(self, layer: int, state: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
        """Decoder layer ``layer``'s ``(..., D)`` output and ``(..., 4)`` sigmoid input
        reference -> ``(..., K)`` logits and ``(..., 4)`` sigmoid boxes."""
        offset = self.reg_branches[layer](state)
        return self.cls_branches[layer](state), (offset + inverse_sigmoid(reference)).sigmoid()

    # ---- losses -------------------------------------------------------------------------

    def _layer_loss(
        self, cls: Tensor, boxes: Tensor, targets: Sequence[_Targets], shapes: list[tuple]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """mmdetection ``loss_by_feat_single``: focal, L1 and GIoU losses of ``(N, Q, K)``
        logits and ``(N, Q, 4)`` boxes against per-image targets, weighted."""
        labels = torch.cat([t[0] for t in targets])
        bbox_targets = torch.cat([t[1] for t in targets])
        bbox_weights = torch.cat([t[2] for t in targets])
        num_pos = float(sum(t[3] for t in targets))
        cls_avg = cls.new_tensor(num_pos)
        if self.sync_cls_avg_factor:
            cls_avg = reduce_mean(cls_avg)
        cls_avg = max(cls_avg.item(), 1.0)
        w_cls, w_bbox, w_iou = self.loss_weights
        loss_cls = sigmoid_focal_loss(
            cls.reshape(-1, self.num_classes),
            labels,
            gamma=self.focal_gamma,
            alpha=self.focal_alpha,
            avg_factor=cls_avg,
        )
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

    def _matching_targets(
        self, cls: Tensor, boxes: Tensor, gts: Sequence[Mapping[str, Tensor]], shapes: list
    ) -> list[_Targets]:
        """Hungarian targets per image for ``(N, Q, K)`` logits and ``(N, Q, 4)`` boxes."""
        out = []
        for i, (gt, (h, w)) in enumerate(zip(gts, shapes, strict=True)):
            gt_boxes, gt_labels = gt["boxes"].to(boxes), gt["labels"].to(boxes.device).long()
            gt_inds = self.assigner.assign(cls[i], boxes[i], gt_boxes, gt_labels, (h, w))
            pos = (gt_inds > 0).nonzero().squeeze(1)
            matched = gt_inds[pos] - 1
            labels = gt_inds.new_full((boxes.shape[1],), self.num_classes)
            labels[pos] = gt_labels[matched]
            bbox_targets = boxes.new_zeros(boxes.shape[1], 4)
            bbox_weights = boxes.new_zeros(boxes.shape[1], 4)
            factor = boxes.new_tensor([w, h, w, h])
            bbox_targets[pos] = xyxy_to_cxcywh(gt_boxes[matched] / factor)
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
            gt_boxes, gt_labels = gt["boxes"].to(like), gt["labels"].to(like.device).long()
            n = gt_labels.numel()
            offsets = torch.arange(groups, device=like.device)[:, None] * per_group
            pos = (offsets + torch.arange(n, device=like.device)[None]).flatten()
            labels = gt_labels.new_full((num_dn,), self.num_classes)
            labels[pos] = gt_labels.repeat(groups)
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
        all_cls, all_boxes = all_cls.float(), all_boxes.float()
        num_dn = dn_meta["num_denoising_queries"] if dn_meta is not None else 0
        losses: dict[str, Tensor] = {}
        num_layers = all_cls.shape[0]
        for layer in range(num_layers):
            cls, boxes = all_cls[layer, :, num_dn:], all_boxes[layer, :, num_dn:]
            found = self._layer_loss(
                cls, boxes, self._matching_targets(cls, boxes, targets, shapes), shapes
            )
            prefix = "" if layer == num_layers - 1 else f"d{layer}."
            losses.update(_named(found, f"{prefix}loss"))
        if enc_outputs_class is not None:
            cls, boxes = enc_outputs_class.float(), enc_outputs_coord.float()
            found = self._layer_loss(
                cls, boxes, self._matching_targets(cls, boxes, targets, shapes), shapes
            )
            losses.update(_named(found, "enc_loss"))
        if dn_meta is not None and num_dn > 0:
            dn_targets = self._denoising_targets(
                num_dn, dn_meta["num_denoising_groups"], targets, shapes, all_boxes
            )
            for layer in range(num_layers):
                cls, boxes = all_cls[layer, :, :num_dn], all_boxes[layer, :, :num_dn]
                found = self._layer_loss(cls, boxes, dn_targets, shapes)
                prefix = "" if layer == num_layers - 1 else f"d{layer}."
                losses.update(_named(found, f"{prefix}dn_loss"))
        return losses

    @torch.no_grad()
    def predict(
        self, hidden_states: Tensor, references: Tensor, image_sizes: Sequence[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Per image ``{"boxes" (xyxy pixels, clipped), "scores", "labels"}``: the top
        ``max_per_img`` (query, class) sigmoid scores of the last layer, as mmdetection."""
        last = hidden_states.shape[0] - 1
        cls, boxes = self.layer_outputs(last, hidden_states[last], references[last])
        cls, boxes = cls.float().sigmoid(), boxes.float()
        results = []
        for scores_i, boxes_i, (h, w) in zip(cls, boxes, image_sizes, strict=True):
            k = min(self.max_per_img, scores_i.numel())
            scores, index = scores_i.flatten().topk(k)
            xyxy = cxcywh_to_xyxy(boxes_i[index // self.num_classes])
            xyxy = xyxy * xyxy.new_tensor([w, h, w, h])
            xyxy[:, 0::2] = xyxy[:, 0::2].clamp(min=0, max=w)
            xyxy[:, 1::2] = xyxy[:, 1::2].clamp(min=0, max=h)
            results.append({"boxes": xyxy, "scores": scores, "labels": index % self.num_classes})
        return results


def _named(losses: tuple[Tensor, Tensor, Tensor], prefix: str) -> dict[str, Tensor]:
    return dict(zip((f"{prefix}_cls", f"{prefix}_bbox", f"{prefix}_iou"), losses, strict=True))
