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

from kdforge.models.detection.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh
from kdforge.models.detection.det_losses import weight_reduce
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
        return super().layer_outputs(layer, state, reference, text, text_mask)

    def forward(
        self, hidden_states: Tensor, references: Tensor, text: Tensor, text_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(L, B, Q, D)`` states -> ``(L, B, Q, max_text_len)`` logits, ``(L, B, Q, 4)`` boxes."""
        return super().forward(hidden_states, references, text, text_mask)

    def _cls_loss(
        self, cls: Tensor, targets: Sequence[_Targets], avg_factor: float, text_mask: Tensor
    ) -> Tensor:
        """Binary focal loss of ``(B, Q, L)`` logits on the real tokens (``text_mask``
        ``(B, T)``) against the targets' token maps."""
        labels = torch.stack([t[0] for t in targets])  # (B, Q, L)
        slots = F.pad(text_mask, (0, self.max_text_len - text_mask.shape[1]))  # (B, L)
        keep = slots[:, None, :].expand_as(cls)
        return binary_focal_loss(
            cls[keep], labels[keep], self.focal_gamma, self.focal_alpha, avg_factor
        )

    def _assign(self, cls, boxes, gt, img_shape, text_mask: Tensor) -> Tensor:
        """Hungarian ``gt_inds`` on the real tokens (``text_mask`` ``(T,)``) of one image."""
        real = text_mask.nonzero().squeeze(1)
        maps = gt["token_maps"].to(boxes)[:, real]
        return self.assigner.assign(cls[:, real], boxes, gt["boxes"].to(boxes), maps, img_shape)

    def _class_targets(self, gt, pos, matched, num_queries, like) -> Tensor:
        """``(num_queries, max_text_len)`` 0/1 token targets: query ``pos[j]`` gets the token
        map of box ``matched[j]``, the others none."""
        tokens = like.new_zeros(num_queries, self.max_text_len)
        tokens[pos] = gt["token_maps"].to(like)[matched]
        return tokens

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
        return self._losses(
            all_cls,
            all_boxes,
            enc_outputs_class,
            enc_outputs_coord,
            targets,
            dn_meta,
            shapes,
            text_mask,
        )

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
        scores = token_to_class_scores(cls.float().sigmoid(), positive_map.to(cls.device))
        return self._top_detections(scores, boxes.float(), image_sizes)
