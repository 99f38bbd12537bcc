"""Region Proposal Network head (Ren et al., 2015, "Faster R-CNN"), as mmdetection 3.x's
``RPNHead`` in ``configs/_base_/models/faster-rcnn_r50_fpn.py``.

One shared 3x3 conv with ReLU (``rpn_conv``), then 1x1 convs for one sigmoid objectness
logit (``rpn_cls``) and four deltas (``rpn_reg``) per anchor; all three N(0, 0.01), bias 0.
Anchors: scale 8, ratios 0.5/1/2, strides 4-64 (``P2..P6``); ``DeltaXYWHCoder`` stds
(1, 1, 1, 1). Training: ``max_iou_assign`` (pos 0.7, neg 0.3, min_pos 0.3, low-quality
matches) on the anchors of the image's padded area, ``random_sample`` of 256 at most half
positive, sigmoid BCE on the sampled anchors and L1 on the positives' deltas, both summed
and divided by the number of samples (each image's ``max(pos, 1) + max(neg, 1)``).
Proposals: the ``nms_pre`` best anchors per level, decoded and clipped to the image,
boxes with a side ``<= min_bbox_size`` dropped, NMS at 0.7 *within each level*, the
``max_per_img`` best over all levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.models.detection._dense_head import flatten_levels, init_head_conv
from kdforge.models.detection.anchors import AnchorGenerator, valid_flags
from kdforge.models.detection.assigners import max_iou_assign
from kdforge.models.detection.coders import DeltaXYWHCoder
from kdforge.models.detection.det_losses import binary_cross_entropy, l1_loss
from kdforge.models.detection.postprocess import PostprocessConfig, select_detections
from kdforge.models.detection.samplers import random_sample

__all__ = ["RPN_TEST_CFG", "RPN_TRAIN_CFG", "RPNHead"]

# mmdetection's rpn_proposal (training) and rpn test settings; score_thr is unused
RPN_TRAIN_CFG = PostprocessConfig(0.0, nms_pre=2000, iou_threshold=0.7, max_per_img=1000)
RPN_TEST_CFG = PostprocessConfig(0.0, nms_pre=1000, iou_threshold=0.7, max_per_img=1000)


class RPNHead(nn.Module):
    """The RPN with mmdetection's parameter names (``rpn_conv``, ``rpn_cls``, ``rpn_reg``).

    Args:
        in_channels: FPN channels.
        feat_channels: channels of ``rpn_conv``.
        strides: FPN strides of the levels it runs on.
        anchor_scale, ratios: anchor size in strides and height/width ratios.
        target_stds: delta normalisation.
        pos_iou_thr, neg_iou_thr, min_pos_iou: ``max_iou_assign`` settings.
        num_samples, pos_fraction: ``random_sample`` settings.
        loss_cls_weight, loss_bbox_weight: loss multipliers.
    """

    def __init__(
        self,
        in_channels: int = 256,
        feat_channels: int = 256,
        strides: Sequence[int] = (4, 8, 16, 32, 64),
        anchor_scale: float = 8,
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        target_stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        pos_iou_thr: float = 0.7,
        neg_iou_thr: float = 0.3,
        min_pos_iou: float = 0.3,
        num_samples: int = 256,
        pos_fraction: float = 0.5,
        loss_cls_weight: float = 1.0,
        loss_bbox_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.anchor_generator = AnchorGenerator(strides, ratios, anchor_scale, 1)
        self.strides = self.anchor_generator.strides
        self.num_anchors = self.anchor_generator.num_base_anchors
        self.rpn_conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(feat_channels, self.num_anchors, 1)
        self.rpn_reg = nn.Conv2d(feat_channels, self.num_anchors * 4, 1)
        for conv in (self.rpn_conv, self.rpn_cls, self.rpn_reg):
            init_head_conv(conv)
        self.coder = DeltaXYWHCoder(stds=target_stds)
        self.assign = partial(
            max_iou_assign,
            pos_iou_thr=pos_iou_thr,
            neg_iou_thr=neg_iou_thr,
            min_pos_iou=min_pos_iou,
            match_low_quality=True,
        )
        self.num_samples, self.pos_fraction = num_samples, pos_fraction
        self.loss_cls_weight, self.loss_bbox_weight = loss_cls_weight, loss_bbox_weight

    def forward(self, feats: Sequence[Tensor]) -> dict[str, list[Tensor]]:
        """Per level ``(N, C, H, W)`` -> ``{"rpn_cls": [(N, A, H, W)], "rpn_reg":
        [(N, 4A, H, W)]}``."""
        if len(feats) != len(self.strides):
            raise ValueError(f"RPNHead expects {len(self.strides)} levels, got {len(feats)}")
        outputs: dict[str, list[Tensor]] = {"rpn_cls": [], "rpn_reg": []}
        for x in feats:
            x = F.relu(self.rpn_conv(x))
            outputs["rpn_cls"].append(self.rpn_cls(x))
            outputs["rpn_reg"].append(self.rpn_reg(x))
        return outputs

    def anchors(self, outputs: dict[str, list[Tensor]]) -> list[Tensor]:
        """``[(H_l * W_l * A, 4)]`` float32 anchors of the levels of ``outputs``."""
        sizes = [tuple(o.shape[-2:]) for o in outputs["rpn_cls"]]
        return self.anchor_generator.grid_anchors(
            sizes, outputs["rpn_cls"][0].device, torch.float32
        )

    def loss(
        self,
        outputs: dict[str, list[Tensor]],
        targets: Sequence[dict[str, Tensor]],
        pad_shapes: Sequence[tuple[int, int]],
    ) -> dict[str, Tensor]:
        """``{"loss_rpn_cls", "loss_rpn_bbox"}`` (every box is foreground for the RPN).

        Args:
            outputs: ``forward``'s outputs.
            targets: per image ``{"boxes": (M, 4) xyxy pixels, ...}``.
            pad_shapes: each image's padded ``(H, W)``; anchors beyond it are not sampled.
        """
        cls_outs = outputs["rpn_cls"]
        sizes = [tuple(o.shape[-2:]) for o in cls_outs]
        anchors = torch.cat(self.anchors(outputs))
        cls = flatten_levels(cls_outs, 1).float()  # (N, P, 1), box math in float32
        reg = flatten_levels(outputs["rpn_reg"], 4).float()  # (N, P, 4)
        device = anchors.device
        logits, objectness, pred_deltas, target_deltas, avg_factor = [], [], [], [], 0
        for i, (target, pad) in enumerate(zip(targets, pad_shapes, strict=True)):
            valid = valid_flags(sizes, self.strides, pad, self.num_anchors, device)
            valid_idx = valid.nonzero().squeeze(1)
            gt_boxes = target["boxes"].to(device, torch.float32).reshape(-1, 4)
            gt_inds = self.assign(anchors[valid_idx], gt_boxes)
            s = random_sample(
                anchors[valid_idx], gt_inds, gt_boxes, self.num_samples, self.pos_fraction, False
            )
            pos, neg = valid_idx[s.pos_inds], valid_idx[s.neg_inds]
            logits.append(torch.cat((cls[i, pos], cls[i, neg])))
            objectness.append(torch.cat((cls.new_ones(len(pos), 1), cls.new_zeros(len(neg), 1))))
            pred_deltas.append(reg[i, pos])
            target_deltas.append(self.coder.encode(anchors[pos], gt_boxes[s.pos_gt_inds]))
            avg_factor += s.avg_factor
        loss_cls = binary_cross_entropy(
            torch.cat(logits), torch.cat(objectness), avg_factor=avg_factor
        )
        loss_bbox = l1_loss(torch.cat(pred_deltas), torch.cat(target_deltas), avg_factor=avg_factor)
        return {
            "loss_rpn_cls": self.loss_cls_weight * loss_cls,
            "loss_rpn_bbox": self.loss_bbox_weight * loss_bbox,
        }

    @torch.no_grad()
    def proposals(
        self,
        outputs: dict[str, list[Tensor]],
        image_sizes: Sequence[tuple[int, int]],
        cfg: PostprocessConfig = RPN_TEST_CFG,
    ) -> list[dict[str, Tensor]]:
        """Proposals per image (no gradient): ``{"boxes": (n, 4), "scores": (n,)}`` by
        decreasing objectness, clipped to the image's ``(H, W)`` before padding.

        Args:
            cfg: ``RPN_TRAIN_CFG`` while training, ``RPN_TEST_CFG`` for inference.
        """
        anchors = self.anchors(outputs)
        results = []
        for i, image_size in enumerate(image_sizes):
            priors, deltas, scores, levels = [], [], [], []
            for level, (cls, reg) in enumerate(
                zip(outputs["rpn_cls"], outputs["rpn_reg"], strict=True)
            ):
                score = cls[i].permute(1, 2, 0).reshape(-1).float().sigmoid()
                delta = reg[i].permute(1, 2, 0).reshape(-1, 4).float()
                prior = anchors[level]
                if 0 < cfg.nms_pre < score.numel():
                    score, order = score.sort(descending=True)
                    score, order = score[: cfg.nms_pre], order[: cfg.nms_pre]
                    delta, prior = delta[order], prior[order]
                priors.append(prior)
                deltas.append(delta)
                scores.append(score)
                levels.append(torch.full_like(score, level, dtype=torch.long))
            boxes = self.coder.decode(torch.cat(priors), torch.cat(deltas), tuple(image_size))
            kept = select_detections(boxes, torch.cat(scores), torch.cat(levels), cfg)
            results.append({"boxes": kept["boxes"], "scores": kept["scores"]})
        return results
