"""Grounding DINO's head (mmdetection 3.x ``GroundingDINOHead``): DINO's head whose classes
are text tokens.

``cls_branches`` are :class:`ContrastiveEmbed` (query . token / sqrt(C) + a learnt bias), so a
query has one logit per token slot (256). Targets are token maps: a matched query's target
is the binary row of the positive map of its box's class (the tokens of that class name).
The focal loss (alpha 0.25, gamma 2) runs on the real tokens of the caption only, and the
Hungarian matching uses ``BinaryFocalLossCost`` (weight 2.0: the focal cost of calling a
query each of the box's tokens plus that of not calling the others), ``BBoxL1Cost`` 5.0 and
GIoU 2.0, as ``grounding_dino_r50_scratch_8xb2_1x_coco``. At test time a class's score is the
mean sigmoid of its tokens and the best 300 (query, class) pairs are kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.models.detection._dense_head import reduce_mean
from kdforge.models.detection.boxes import cxcywh_to_xyxy, inverse_sigmoid, xyxy_to_cxcywh
from kdforge.models.detection.det_losses import giou_loss, l1_loss, weight_reduce
from kdforge.models.detection.dino_denoising import target_img_shapes
from kdforge.models.detection.dino_head import DINOHead
from kdforge.models.detection.grounding_head import ContrastiveEmbed, token_to_class_scores
from kdforge.models.detection.hungarian import HungarianAssigner, bbox_l1_cost, iou_cost

__all__ = ["GroundingDINOHead", "binary_focal_loss", "binary_focal_loss_cost"]

_Targets = tuple[Tensor, Tensor, Tensor, int]  # token targets, box targets, box weights, pos


def binary_focal_loss(
    pred: Tensor, target: Tensor, gamma: float = 2.0, alpha: float = 0.25, avg_factor=None
) -> Tensor:
    """Sigmoid focal loss on 0/1 targets of ``pred``'s shape (mmdetection's
    ``py_sigmoid_focal_loss``), summed and divided by ``avg_factor``."""
    prob = pred.sigmoid()
    pt = (1 - prob) * target + prob * (1 - target)
    focal_weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none") * focal_weight
    return weight_reduce(loss, None, avg_factor)


def binary_focal_loss_cost(
    logits: Tensor, token_maps: Tensor, alpha: float = 0.25, gamma: float = 2.0, eps=1e-12
) -> Tensor:
    """mmdetection ``BinaryFocalLossCost``: ``(Q, T)`` token logits x ``(G, T)`` 0/1 token maps
    -> ``(Q, G)``: the positive focal cost summed over each box's tokens plus the negative one
    over the other tokens (give only the caption's real tokens)."""
    prob = logits.sigmoid()
    neg = -(1 - prob + eps).log() * (1 - alpha) * prob.pow(gamma)
    pos = -(prob + eps).log() * alpha * (1 - prob).pow(gamma)
    return pos @ token_maps.T + neg @ (1 - token_maps).T


class _TokenHungarianAssigner(HungarianAssigner):
    """:class:`HungarianAssigner` with the class cost on token maps (``gt_labels`` holds the
    ``(G, T)`` maps and ``cls_logits`` the ``(Q, T)`` logits of the real tokens)."""

    def cost(self, cls_logits, pred_boxes, gt_boxes, gt_labels, img_shape) -> Tensor:
        height, width = img_shape
        factor = gt_boxes.new_tensor([width, height, width, height])
        pred_pixels = cxcywh_to_xyxy(pred_boxes) * factor
        cls = binary_focal_loss_cost(cls_logits, gt_labels, self.alpha, self.gamma)
        l1 = bbox_l1_cost(pred_boxes, xyxy_to_cxcywh(gt_boxes) / factor)
        return (
            self.cls_weight * cls
            + self.l1_weight * l1
            + self.iou_weight * iou_cost(pred_pixels, gt_boxes, self.iou_mode)
        )


class GroundingDINOHead(DINOHead):
    """DINO's head with contrastive (text-token) classification.

    Args:
        max_text_len: token slots of the logits (256).
        log_scale, bias: :class:`ContrastiveEmbed`'s (``"auto"``, True).
        **kwargs: :class:`DINOHead` arguments; ``num_classes`` sizes only the denoising
            label embedding of the detector, the logits have ``max_text_len`` columns.
    """

    def __init__(
        self,
        num_classes: int,
        embed_dims: int = 256,
        num_pred_layer: int = 7,
        *,
        max_text_len: int = 256,
        log_scale: str | float | None = "auto",
        bias: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(num_classes, embed_dims, num_pred_layer, **kwargs)
        self.max_text_len = max_text_len
        self.cls_branches = nn.ModuleList(
            ContrastiveEmbed(max_text_len, log_scale, bias) for _ in range(num_pred_layer)
        )
        a = self.assigner
        self.assigner = _TokenHungarianAssigner(
            a.cls_weight, a.l1_weight, a.iou_weight, a.alpha, a.gamma, a.iou_mode
        )

    def layer_outputs(
        self, layer: int, state: Tensor, reference: Tensor, text: Tensor, text_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(B, Q, D)`` states, ``(B, Q, 4)`` references, text ``(B, T, D)`` and ``(B, T)``
        real-token mask -> ``(B, Q, max_text_len)`` logits and ``(B, Q, 4)`` sigmoid boxes."""
        offset = self.reg_branches[layer](state)
        cls = self.cls_branches[layer](state, text, text_mask)
        return cls, (offset + inverse_sigmoid(reference)).sigmoid()

    def forward(
        self, hidden_states: Tensor, references: Tensor, text: Tensor, text_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(L, B, Q, D)`` states -> ``(L, B, Q, max_text_len)`` logits, ``(L, B, Q, 4)`` boxes."""
        outs = [
            self.layer_outputs(i, s, references[i], text, text_mask)
            for i, s in enumerate(hidden_states)
        ]
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])

    def _token_loss(
        self, cls: Tensor, boxes: Tensor, targets: Sequence[_Targets], shapes, text_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Focal loss on the real tokens, L1 and GIoU, weighted (``loss_by_feat_single``)."""
        labels = torch.stack([t[0] for t in targets])  # (B, Q, L)
        bbox_targets = torch.cat([t[1] for t in targets])
        bbox_weights = torch.cat([t[2] for t in targets])
        num_pos = float(sum(t[3] for t in targets))
        cls_avg = cls.new_tensor(num_pos)
        if self.sync_cls_avg_factor:
            cls_avg = reduce_mean(cls_avg)
        cls_avg = max(cls_avg.item(), 1.0)
        slots = F.pad(text_mask, (0, self.max_text_len - text_mask.shape[1]))  # (B, L)
        keep = slots[:, None, :].expand_as(cls)
        loss_cls = binary_focal_loss(
            cls[keep], labels[keep], self.focal_gamma, self.focal_alpha, cls_avg
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
        w_cls, w_bbox, w_iou = self.loss_weights
        return w_cls * loss_cls, w_bbox * loss_bbox, w_iou * loss_iou

    def _matching_targets(self, cls, boxes, gts, shapes, text_mask: Tensor) -> list[_Targets]:
        """Hungarian token-map targets per image (``gts`` carry ``"token_maps"``)."""
        out = []
        for i, (gt, (h, w)) in enumerate(zip(gts, shapes, strict=True)):
            gt_boxes, maps = gt["boxes"].to(boxes), gt["token_maps"].to(boxes)
            real = text_mask[i].nonzero().squeeze(1)
            gt_inds = self.assigner.assign(
                cls[i][:, real], boxes[i], gt_boxes, maps[:, real], (h, w)
            )
            pos = (gt_inds > 0).nonzero().squeeze(1)
            matched = gt_inds[pos] - 1
            labels = boxes.new_zeros(boxes.shape[1], self.max_text_len)
            labels[pos] = maps[matched]
            bbox_targets = boxes.new_zeros(boxes.shape[1], 4)
            bbox_weights = boxes.new_zeros(boxes.shape[1], 4)
            bbox_targets[pos] = xyxy_to_cxcywh(gt_boxes[matched] / boxes.new_tensor([w, h, w, h]))
            bbox_weights[pos] = 1.0
            out.append((labels, bbox_targets, bbox_weights, pos.numel()))
        return out

    def _denoising_token_targets(self, num_dn, groups, gts, shapes, like) -> list[_Targets]:
        """DINO's denoising layout (``_get_dn_targets_single``) with token-map targets: the
        positive query of box ``j`` in group ``g`` targets that box's token map."""
        out = []
        for gt, found in zip(
            gts, self._denoising_targets(num_dn, groups, gts, shapes, like), strict=True
        ):
            tokens = like.new_zeros(num_dn, self.max_text_len)
            pos = (found[0] != self.num_classes).nonzero().squeeze(1)  # group-major, ascending
            tokens[pos] = gt["token_maps"].to(like).repeat(groups, 1)
            out.append((tokens, *found[1:]))
        return out

    def loss(
        self,
        hidden_states: Tensor,
        references: Tensor,
        text: Tensor,
        text_mask: Tensor,
        enc_outputs_class: Tensor | None,
        enc_outputs_coord: Tensor | None,
        targets: Sequence[Mapping[str, Tensor]],
        dn_meta: Mapping[str, int] | None,
        image_size,
    ) -> dict[str, Tensor]:
        """Named, weighted losses as :meth:`DINOHead.loss`; ``targets`` also carry
        ``"token_maps"`` ``(M, max_text_len)`` 0/1 (each box's class tokens), ``text`` is
        ``(B, T, D)`` and ``text_mask`` ``(B, T)`` True on real tokens."""
        shapes = target_img_shapes(targets, image_size)
        all_cls, all_boxes = self(hidden_states, references, text, text_mask)
        all_cls, all_boxes = all_cls.float(), all_boxes.float()
        num_dn = dn_meta["num_denoising_queries"] if dn_meta is not None else 0
        losses: dict[str, Tensor] = {}
        num_layers = all_cls.shape[0]

        def run(cls: Tensor, boxes: Tensor, prefix: str, found=None) -> None:
            if found is None:
                found = self._matching_targets(cls, boxes, targets, shapes, text_mask)
            values = self._token_loss(cls, boxes, found, shapes, text_mask)
            names = (f"{prefix}_cls", f"{prefix}_bbox", f"{prefix}_iou")
            losses.update(zip(names, values, strict=True))

        for layer in range(num_layers):
            prefix = "" if layer == num_layers - 1 else f"d{layer}."
            run(all_cls[layer, :, num_dn:], all_boxes[layer, :, num_dn:], f"{prefix}loss")
        if enc_outputs_class is not None:
            run(enc_outputs_class.float(), enc_outputs_coord.float(), "enc_loss")
        if dn_meta is not None and num_dn > 0:
            groups = dn_meta["num_denoising_groups"]
            dn = self._denoising_token_targets(num_dn, groups, targets, shapes, all_boxes)
            for layer in range(num_layers):
                prefix = "" if layer == num_layers - 1 else f"d{layer}."
                cls, boxes = all_cls[layer, :, :num_dn], all_boxes[layer, :, :num_dn]
                run(cls, boxes, f"{prefix}dn_loss", dn)
        return losses

    @torch.no_grad()
    def predict(
        self,
        hidden_states: Tensor,
        references: Tensor,
        text: Tensor,
        text_mask: Tensor,
        positive_map: Tensor,
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Per image ``{"boxes", "scores", "labels"}``: the last layer's token scores turned
        into class scores (mean over each class's tokens, ``positive_map`` ``(K, L)``), the
        top ``max_per_img`` (query, class) pairs, boxes in pixels clipped to the image."""
        last = hidden_states.shape[0] - 1
        cls, boxes = self.layer_outputs(
            last, hidden_states[last], references[last], text, text_mask
        )
        scores_all = token_to_class_scores(cls.float().sigmoid(), positive_map.to(cls.device))
        num_classes = positive_map.shape[0]
        results = []
        for scores_i, boxes_i, (h, w) in zip(scores_all, boxes.float(), image_sizes, strict=True):
            k = min(self.max_per_img, scores_i.numel())
            scores, index = scores_i.flatten().topk(k)
            xyxy = cxcywh_to_xyxy(boxes_i[index // num_classes]) * boxes_i.new_tensor([w, h, w, h])
            xyxy[:, 0::2] = xyxy[:, 0::2].clamp(min=0, max=w)
            xyxy[:, 1::2] = xyxy[:, 1::2].clamp(min=0, max=h)
            results.append({"boxes": xyxy, "scores": scores, "labels": index % num_classes})
        return results
